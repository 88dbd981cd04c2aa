//! A program on a real terminal: a tmux pane 80 columns wide, read and typed at like a person
//! would. And a QR code read off such a screen by an independent decoder, zbar's `zbarimg`:
//! the screen's text is drawn as a picture (each cell 6 × 12 pixels, half blocks as halves),
//! in the colours of a dark or of a light terminal.

use super::*;

/// Columns of the terminal, as the users have.
pub const COLUMNS: u32 = 80;

/// A tmux server of its own (socket in a temp dir), stopped by its pid when dropped.
pub struct Terminal {
    dir: tempfile::TempDir,
    server_pid: Option<i32>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Terminal(tmux pid {:?})", self.server_pid)
    }
}

impl Terminal {
    /// Runs `command` (a shell command line) in a new 80-column pane with a UTF-8 locale.
    pub fn start(command: &str) -> Terminal {
        let dir = open_tempdir();
        let mut t = Terminal {
            dir,
            server_pid: None,
        };
        let out = t
            .tmux()
            .args(["new-session", "-d", "-s", "t", "-x", &COLUMNS.to_string()])
            .args(["-y", "60", "--", "sh", "-c"])
            .arg(format!("{command}; echo tf-terminal-exited-$?; sleep 600"))
            .env("LANG", "C.UTF-8")
            .output()
            .expect("tmux is needed (Debian package tmux; scripts/deps.sh installs it)");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.server_pid = t
            .tmux_out(&["display-message", "-p", "#{pid}"])
            .trim()
            .parse()
            .ok();
        t
    }

    fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-u")
            .arg("-S")
            .arg(self.dir.path().join("tmux.sock"))
            .stdin(Stdio::null());
        cmd
    }

    fn tmux_out(&self, args: &[&str]) -> String {
        let out = self.tmux().args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything the pane showed, its history included, lines the terminal wrapped joined.
    pub fn screen(&self) -> String {
        self.tmux_out(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"])
    }

    /// The screen once it shows `needle`; panics with the screen after `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {needle:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` and Enter. The text goes through a private file and a tmux buffer, not
    /// through any command line: it may be a code.
    pub fn type_line(&self, text: &str) {
        let file = self.dir.path().join("typed");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&file, text).unwrap();
        let file = file.to_str().unwrap();
        let mut steps = vec![
            vec!["load-buffer", "-b", "typed", file],
            vec!["paste-buffer", "-d", "-b", "typed", "-t", "t"],
        ];
        if text.is_empty() {
            steps.clear();
        }
        steps.push(vec!["send-keys", "-t", "t", "Enter"]);
        for args in steps {
            let out = self.tmux().args(&args).output().unwrap();
            assert!(out.status.success(), "tmux {args:?} failed");
        }
        let _ = std::fs::remove_file(self.dir.path().join("typed"));
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").output();
        if let Some(pid) = self.server_pid {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn is_qr_line(line: &str) -> bool {
    let line = line.trim_end();
    !line.is_empty()
        && line.chars().all(|c| matches!(c, ' ' | '█' | '▀' | '▄'))
        && line.chars().any(|c| c != ' ')
}

/// The runs of lines drawn in half blocks on `screen`, each a QR code as shown.
pub fn qr_blocks(screen: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    for line in screen.lines() {
        if is_qr_line(line) {
            current.push(line.to_string());
        } else if !current.is_empty() {
            blocks.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    blocks.retain(|b| b.len() >= 10);
    blocks
}

/// What zbarimg reads off `lines` drawn on a terminal with light text on a dark background
/// (`dark_terminal`) or dark text on a light one; `None` if it reads nothing.
pub fn zbar_decode(lines: &[String], dark_terminal: bool) -> Option<String> {
    const W: usize = 6;
    const H: usize = 12;
    const MARGIN: usize = 48;
    let (glyph, background) = if dark_terminal {
        (255u8, 0u8)
    } else {
        (0, 255)
    };
    let columns = lines.iter().map(|l| l.chars().count()).max()?;
    let (width, height) = (columns * W + 2 * MARGIN, lines.len() * H + 2 * MARGIN);
    let mut pixels = vec![background; width * height];
    for (row, line) in lines.iter().enumerate() {
        for (col, c) in line.chars().enumerate() {
            let (top, bottom) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                _ => (false, false),
            };
            for dy in 0..H {
                if (dy < H / 2 && top) || (dy >= H / 2 && bottom) {
                    let y = MARGIN + row * H + dy;
                    let x = MARGIN + col * W;
                    pixels[y * width + x..y * width + x + W].fill(glyph);
                }
            }
        }
    }
    let dir = open_tempdir();
    let image = dir.path().join("screen.pgm");
    let mut file = format!("P5 {width} {height} 255\n").into_bytes();
    file.extend_from_slice(&pixels);
    std::fs::write(&image, file).unwrap();
    let out = Command::new("zbarimg")
        .args(["-q", "--raw"])
        .arg(&image)
        .stdin(Stdio::null())
        .output()
        .expect("zbarimg is needed (Debian package zbar-tools; scripts/deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The `secret=` of an otpauth URI.
pub fn uri_secret(uri: &str) -> String {
    uri.split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap_or_else(|| panic!("no secret in {uri}"))
        .to_string()
}
