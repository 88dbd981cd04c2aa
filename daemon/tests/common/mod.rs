//! Test harness: a real twofoldd on a temp socket and SQLite file, driven through the real
//! `twofold` binary, with codes from oathtool (an independent TOTP implementation).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TWOFOLDD: &str = env!("CARGO_BIN_EXE_twofoldd");
pub const TWOFOLD: &str = env!("CARGO_BIN_EXE_twofold");

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub database: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts twofoldd with `extra` appended to a config that sets the socket and database.
    pub fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        // Other local users (the non-root test) must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("twofold.sock");
        // twofoldd refuses a database in a directory others can read.
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let database = state.join("twofold.db");
        let config = dir.path().join("twofold.toml");
        std::fs::write(
            &config,
            format!(
                "socket = {:?}\ndatabase = {:?}\nissuer = \"test-host\"\n{extra}\n",
                socket, database
            ),
        )
        .unwrap();
        let mut d = Daemon {
            dir,
            socket,
            database,
            config,
            child: None,
        };
        d.restart();
        d
    }

    /// (Re)starts the process on the same socket, database and config.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("twofoldd.log")).unwrap();
        let child = Command::new(TWOFOLDD)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn twofoldd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("twofoldd exited during start-up ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "twofoldd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process (SIGKILL: nothing may depend on a clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("twofoldd.log")).unwrap_or_default()
    }

    /// Runs `twofold --socket S ARGS…`.
    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_as(None, args, None)
    }

    /// Runs the CLI, optionally as another user (via setpriv) and with standard input.
    pub fn cli_as(&self, user: Option<&str>, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", u, "--regid", u, "--init-groups", "--"])
                    .arg(TWOFOLD);
                c
            }
            None => Command::new(TWOFOLD),
        };
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("TWOFOLD_SOCKET");
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn twofold");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        Run(child.wait_with_output().expect("wait twofold"))
    }

    /// Enrolls and confirms `user` through the CLI; returns (base32 secret, backup codes).
    pub fn enroll(&self, user: &str) -> (String, Vec<String>) {
        let e = self.cli(&["enroll", "--user", user, "--json"]);
        assert_eq!(e.code(), 0, "enroll: {}", e.stderr());
        let secret = e.json()["secret"].as_str().unwrap().to_string();
        let c = self.cli(&["confirm", &oathtool(&secret, 0), "--user", user, "--json"]);
        assert_eq!(c.code(), 0, "confirm: {} {}", c.stdout(), c.stderr());
        let codes = c.json()["backup_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        (secret, codes)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
}

/// The TOTP code `steps` periods from now, computed by oathtool.
pub fn oathtool(secret: &str, steps: i64) -> String {
    let when = format!(
        "now {} {} seconds",
        if steps < 0 { "-" } else { "+" },
        steps.abs() * 30
    );
    let out = Command::new("oathtool")
        .args(["--totp", "-b", "-N", &when, secret])
        .output()
        .expect("oathtool is required for these tests (Debian package oathtool; scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "oathtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Seconds left in the current 30-second step.
pub fn seconds_left_in_step() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    30 - now % 30
}

/// Waits, if needed, so that at least `need` seconds remain in the current step: tests that
/// compute a code and then use it must not straddle a step change they did not plan for.
pub fn ensure_step_time(need: u64) {
    let left = seconds_left_in_step();
    if left < need {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

/// A local account created for the test and removed afterwards (root only).
pub struct TempUser {
    pub name: String,
}

impl TempUser {
    pub fn create(prefix: &str) -> TempUser {
        let name = format!("{prefix}{}", std::process::id() % 100_000);
        let _ = Command::new("userdel").args(["-r", &name]).output();
        let out = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", &name])
            .output()
            .expect("useradd");
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TempUser { name }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .output();
        let _ = Command::new("userdel").args(["-r", &self.name]).output();
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
