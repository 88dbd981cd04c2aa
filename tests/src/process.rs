//! Processes and files a test starts or installs, and removes after it.

use super::*;

/// A child process killed (by its pid) and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A file outside the temp directories (`/etc/pam.d/NAME`, `/etc/sudoers.d/NAME`) that is
/// removed when dropped. It is written under a temporary name and renamed into place, so
/// nothing ever reads it half-written.
#[derive(Debug)]
pub struct SystemFile {
    pub path: PathBuf,
}

impl SystemFile {
    pub fn install(path: &Path, text: &str, mode: u32) -> SystemFile {
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
        SystemFile {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SystemFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a command run by [`run_with_deadline`] did.
#[derive(Debug)]
pub struct Finished {
    /// `None` when it was killed at the deadline or by a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Everything it printed, for failure messages.
    pub fn text(&self) -> String {
        format!(
            "exit {:?}{}\n--- stdout\n{}--- stderr\n{}",
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// `setsid -w PROGRAM`: for [`run_with_deadline`]. The program runs in a session of its own
/// (no controlling terminal, so ssh and sudo take their answers from askpass and standard
/// input) whose process group is the child's pid, so everything it starts can be killed at once.
/// Runs `cmd` to the end with `stdin` (or nothing) on its standard input, capturing its output.
pub fn run_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn in_new_session(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setsid");
    cmd.arg("-w").arg(program);
    cmd
}

/// Runs `cmd` (made by [`in_new_session`]) with `stdin` as its input (`None`: /dev/null); its
/// whole process group is killed with SIGKILL at `deadline`, and whatever of it is left when it
/// exits.
pub fn run_with_deadline(cmd: &mut Command, stdin: Option<&str>, deadline: Duration) -> Finished {
    use std::io::Read;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // It may exit before reading everything; that is its business.
        let _ = pipe.write_all(text.as_bytes());
    }
    let limit = started + deadline;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= limit {
            timed_out = true;
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Anything it left behind in its group holds the pipes open: end it too.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    Finished {
        code: status.code(),
        timed_out,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}
