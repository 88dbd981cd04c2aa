//! A throwaway twofoldd per test, and the CLI against it.

use super::*;

/// A twofoldd of its own: temp socket, database and config; killed when dropped. One kit for
/// the daemon's own tests (`start_with`, issuer `test-host`) and the end-to-end tests
/// (`start`, issuer `pam-test` and an `unenrolled` policy).
#[derive(Debug)]
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub database: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

/// What `twofold enroll` + `twofold confirm` handed out.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub secret: String,
    pub backup_codes: Vec<String>,
}

/// What a CLI run printed and how it ended; it is also the `Output` it wraps.
#[derive(Debug)]
pub struct Run(pub Output);

impl std::ops::Deref for Run {
    type Target = Output;
    fn deref(&self) -> &Output {
        &self.0
    }
}

impl Run {
    /// The exit status (-1 when killed by a signal).
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

impl Daemon {
    /// For the end-to-end tests: `unenrolled` is "allow" or "deny"; `extra` is appended to the
    /// config file.
    pub fn start(unenrolled: &str, extra: &str) -> Daemon {
        Daemon::launch(&format!(
            "issuer = \"pam-test\"\nunenrolled = {unenrolled:?}\n{extra}\n"
        ))
    }

    /// For the daemon's own tests: `extra` is all the config file says besides the paths.
    pub fn start_with(extra: &str) -> Daemon {
        Daemon::launch(&format!("issuer = \"test-host\"\n{extra}\n"))
    }

    fn launch(policy: &str) -> Daemon {
        let dir = open_tempdir();
        let socket = dir.path().join("twofold.sock");
        // twofoldd refuses a database in a directory others can read.
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let database = state.join("twofold.db");
        let config = dir.path().join("twofold.toml");
        std::fs::write(
            &config,
            format!("socket = {socket:?}\ndatabase = {database:?}\n{policy}"),
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
        let mut child = Command::new(twofoldd())
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn twofoldd");
        let log_path = self.dir.path().join("twofoldd.log");
        wait_for_socket(&self.socket, &mut child, "twofoldd", || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        });
        self.child = Some(child);
    }

    /// Rewrites the configuration (socket and database kept, `unenrolled` and `extra` new) and
    /// sends SIGHUP; waits until the daemon's log says it reloaded.
    pub fn reconfigure(&self, unenrolled: &str, extra: &str) {
        let log_path = self.dir.path().join("twofoldd.log");
        let before = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches("policy reloaded")
            .count();
        std::fs::write(
            &self.config,
            format!(
                "socket = {:?}\ndatabase = {:?}\nissuer = \"pam-test\"\nunenrolled = {unenrolled:?}\n{extra}\n",
                self.socket, self.database,
            ),
        )
        .unwrap();
        let pid = self.pid().expect("daemon running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches("policy reloaded")
            .count()
            <= before
        {
            assert!(Instant::now() < deadline, "twofoldd did not reload");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon (SIGKILL, by its pid: nothing may depend on a clean shutdown) and waits
    /// for it; the socket file stays behind.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon as systemd does (SIGTERM, by its pid) and waits for it: its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        child.wait().unwrap()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The daemon's log (its stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("twofoldd.log")).unwrap_or_default()
    }

    /// Runs `twofold --socket S ARGS...`, never through `$TWOFOLD_SOCKET`.
    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_as(None, args, None)
    }

    /// Runs the CLI, optionally as another user (via setpriv) and with standard input.
    pub fn cli_as(&self, user: Option<&str>, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", u, "--regid", u, "--init-groups", "--"])
                    .arg(twofold_cli());
                c
            }
            None => Command::new(twofold_cli()),
        };
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("TWOFOLD_SOCKET");
        Run(run_with_stdin(&mut cmd, stdin))
    }

    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "twofold {args:?} failed ({}): {} {}",
            out.status,
            out.stdout(),
            out.stderr()
        );
        out.json()
    }

    /// Enrolls `user` and confirms with oathtool's current code (which consumes this step),
    /// first waiting for a step with time to spare.
    pub fn enroll(&self, user: &str) -> Enrollment {
        let started = self.cli_json(&["enroll", "--user", user, "--json"]);
        let secret = started["secret"].as_str().unwrap().to_string();
        ensure_step_time(8);
        self.confirm(user, secret)
    }

    /// `enroll` without waiting for a fresh step (the daemon's own tests time their steps).
    pub fn enroll_now(&self, user: &str) -> (String, Vec<String>) {
        let started = self.cli_json(&["enroll", "--user", user, "--json"]);
        let secret = started["secret"].as_str().unwrap().to_string();
        let e = self.confirm(user, secret);
        (e.secret, e.backup_codes)
    }

    fn confirm(&self, user: &str, secret: String) -> Enrollment {
        let confirmed =
            self.cli_json(&["confirm", &oathtool(&secret, 0), "--user", user, "--json"]);
        let backup_codes = confirmed["backup_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        Enrollment {
            secret,
            backup_codes,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// twofoldd's exit status and standard error when started on `config` (expected to refuse).
pub fn refused_start(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(twofoldd())
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
