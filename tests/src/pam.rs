//! pamtester under pam_wrapper, with a private service directory.

use super::*;

/// A PAM service for pamtester under pam_wrapper, in a private service directory.
#[derive(Debug)]
pub struct PamService {
    pub dir: tempfile::TempDir,
    pub name: String,
}

/// What pamtester did.
#[derive(Debug)]
pub struct PamRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl PamRun {
    /// Everything pamtester and the module printed.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// `auth` arguments pointing pam_twofold.so at `socket`. A daemon run by a non-root test user
/// must be trusted explicitly: the module trusts only root by default.
pub fn module_args(socket: &Path) -> String {
    let mut args = format!("socket={} timeout=3", socket.display());
    if !is_root() {
        args.push_str(&format!(" daemon_uid={}", my_uid()));
    }
    args
}

impl PamService {
    /// `stack` is the service file's text; `MODULE` in it is replaced by the module's path.
    pub fn new(stack: &str) -> PamService {
        let dir = open_tempdir();
        // A name of its own: pam_wrapper 1.1.4 picks its runtime directory (/tmp/pam.A, …)
        // racily, and two pamtester starting together may share one, each copying its
        // service files into it; with one name for all, one would run the other's stack.
        let name = unique("twofold-test");
        let text = stack.replace("MODULE", pam_module().to_str().unwrap());
        std::fs::write(dir.path().join(&name), text).unwrap();
        assert!(
            Path::new(PAM_WRAPPER).is_file(),
            "{PAM_WRAPPER} is missing (Debian package libpam-wrapper; scripts/deps.sh installs it)"
        );
        PamService { dir, name }
    }

    /// The common stack: `auth required pam_twofold.so ARGS`.
    pub fn required(socket: &Path, extra_args: &str) -> PamService {
        PamService::new(&format!(
            "auth required MODULE {} {extra_args}\n",
            module_args(socket)
        ))
    }

    /// `pamtester -v SERVICE USER authenticate` with `stdin` as the user's typing (`None`:
    /// standard input is /dev/null, so the conversation gets no answer).
    pub fn authenticate(&self, user: &str, stdin: Option<&str>) -> PamRun {
        self.authenticate_with(user, &[], stdin)
    }

    /// `authenticate` with PAM items set first, e.g. `["rhost=192.0.2.7", "tty=pts/3"]`.
    pub fn authenticate_with(&self, user: &str, items: &[&str], stdin: Option<&str>) -> PamRun {
        self.run_pamtester(user, items, stdin, false)
    }

    /// `authenticate`, with every line the module sends to syslog printed on pamtester's
    /// standard error (pam_wrapper catches `pam_syslog` at PAM_WRAPPER_DEBUGLEVEL 2).
    pub fn authenticate_logged(&self, user: &str, stdin: Option<&str>) -> PamRun {
        self.run_pamtester(user, &[], stdin, true)
    }

    fn run_pamtester(&self, user: &str, items: &[&str], stdin: Option<&str>, log: bool) -> PamRun {
        let mut cmd = Command::new("pamtester");
        if log {
            cmd.env("PAM_WRAPPER_DEBUGLEVEL", "2");
        }
        cmd.arg("-v");
        for item in items {
            cmd.arg(format!("-I{item}"));
        }
        cmd.args([&self.name, user, "authenticate"])
            .env("LD_PRELOAD", PAM_WRAPPER)
            .env("PAM_WRAPPER", "1")
            .env("PAM_WRAPPER_SERVICE_DIR", self.dir.path())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .expect("pamtester is needed (Debian package pamtester; scripts/deps.sh installs it)");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        PamRun {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }
}

impl PamService {
    /// `pamtester -v SERVICE USER authenticate` under pam_wrapper as a shell command line, for
    /// a [`Terminal`]: answered as a person would, after reading what it shows.
    pub fn command_line(&self, user: &str) -> String {
        format!(
            "LD_PRELOAD={PAM_WRAPPER} PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR='{}' pamtester -v '{}' '{user}' authenticate",
            self.dir.path().display(),
            self.name
        )
    }

    /// `pamtester -v SERVICE USER authenticate`, answering the first prompt with `first` and the
    /// second with whatever `then` returns once the first answer is in (it may wait for a mail).
    pub fn authenticate_then(
        &self,
        user: &str,
        first: &str,
        then: impl FnOnce() -> Option<String>,
    ) -> PamRun {
        let mut cmd = Command::new("pamtester");
        cmd.args(["-v", &self.name, user, "authenticate"])
            .env("LD_PRELOAD", PAM_WRAPPER)
            .env("PAM_WRAPPER", "1")
            .env("PAM_WRAPPER_SERVICE_DIR", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("pamtester");
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(first.as_bytes()).unwrap();
        pipe.flush().unwrap();
        if let Some(second) = then() {
            // The module may have finished already (refused): a closed pipe is fine.
            let _ = pipe.write_all(second.as_bytes());
        }
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        PamRun {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }
}
