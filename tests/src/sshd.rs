//! A private sshd on 127.0.0.1 (its own config, host key and pid file in a temp directory)
//! started under a renamed binary so that its PAM service is a new /etc/pam.d/tf-sshd-PID-N
//! (the host's /etc/pam.d/sshd is never touched), and a real `ssh` client: answering prompts
//! through SSH_ASKPASS, or on a terminal (tmux) that the test reads like a person would.

use super::*;
use std::os::unix::fs::PermissionsExt;

/// How long one ssh run may take.
pub const SSH_DEADLINE: Duration = Duration::from_secs(30);

pub fn sshd_binary() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("sshd is needed (Debian package openssh-server; scripts/deps.sh installs it)")
}

pub fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen is needed (Debian package openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port on 127.0.0.1 that was free a moment ago (sshd start-up retries when it is not).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// A private sshd on 127.0.0.1, stopped (by its pid) when dropped.
#[derive(Debug)]
pub struct Sshd {
    /// The PAM service: sshd names it after the program, a symlink of this name.
    pub service: String,
    pub port: u16,
    child: Option<Child>,
    pidfile: PathBuf,
    log: PathBuf,
    pub dir: tempfile::TempDir,
    _pam: SystemFile,
}

impl Sshd {
    /// `methods` is the `AuthenticationMethods` line; `user` the only account let in.
    pub fn start(socket: &Path, user: &str, methods: &str) -> Sshd {
        Sshd::start_with(socket, user, methods, "")
    }

    /// `start`, with extra pam_twofold arguments (`grace=600`).
    pub fn start_with(socket: &Path, user: &str, methods: &str, module_args: &str) -> Sshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = open_tempdir();
        let service = unique("tf-sshd");
        keygen(&dir.path().join("host_key"), "tf-sshd-host");
        let pam = SystemFile::install(
            &Path::new("/etc/pam.d").join(&service),
            &format!(
                "# Written by twofold's tests/tests/sshd.rs; removed when the test ends.\n\
                 auth     required  {} socket={} {module_args}\n\
                 account  include   common-account\n\
                 session  required  pam_permit.so\n",
                pam_module().display(),
                socket.display()
            ),
            0o644,
        );
        let link = dir.path().join(&service);
        std::os::unix::fs::symlink(sshd_binary(), &link).unwrap();
        let pidfile = dir.path().join("sshd.pid");
        let log = dir.path().join("sshd.log");
        let pubkey = if methods.contains("publickey") {
            "yes"
        } else {
            "no"
        };
        let mut failures = Vec::new();
        // The port was free when chosen; another process may take it before sshd binds it.
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host_key}\n\
                     PidFile {pidfile}\n\
                     UsePAM yes\n\
                     PubkeyAuthentication {pubkey}\n\
                     KbdInteractiveAuthentication yes\n\
                     PasswordAuthentication no\n\
                     AuthenticationMethods {methods}\n\
                     PermitRootLogin no\n\
                     AllowUsers {user}\n\
                     UseDNS no\n\
                     PrintMotd no\n\
                     PrintLastLog no\n",
                    host_key = dir.path().join("host_key").display(),
                    pidfile = pidfile.display(),
                ),
            )
            .unwrap();
            let _ = std::fs::remove_file(&pidfile);
            let mut child = Command::new(&link)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start sshd");
            // sshd writes its pid file once it listens.
            let deadline = Instant::now() + Duration::from_secs(20);
            let ready = loop {
                let written = std::fs::read_to_string(&pidfile).unwrap_or_default();
                if written.trim() == child.id().to_string() {
                    break true;
                }
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                assert!(
                    Instant::now() < deadline,
                    "sshd did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            if ready {
                return Sshd {
                    service,
                    port,
                    child: Some(child),
                    pidfile,
                    log,
                    dir,
                    _pam: pam,
                };
            }
            failures.push(std::fs::read_to_string(&log).unwrap_or_default());
        }
        panic!("sshd never started: {failures:#?}");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops sshd (SIGTERM to its pid, SIGKILL if it lingers) and checks the process named by
    /// its pid file is gone.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let recorded = std::fs::read_to_string(&self.pidfile).unwrap_or_default();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(recorded) = recorded.trim().parse::<i32>() {
            assert_eq!(recorded, pid.as_raw(), "the pid file names another process");
            assert!(!pid_alive(recorded), "sshd {recorded} is still running");
        }
    }

    /// `ssh USER@127.0.0.1 COMMAND` with `code` as the answer to every keyboard-interactive
    /// prompt (SSH_ASKPASS reading a 0600 file), `key` as the only identity (`None`: no
    /// public-key authentication), one prompt only, in a session of its own without a terminal.
    pub fn ssh(&self, user: &TestUser, key: Option<&Path>, code: &str, command: &str) -> Login {
        let code_file = self.dir.path().join("code");
        std::fs::write(&code_file, "").unwrap();
        std::fs::set_permissions(&code_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&code_file, format!("{code}\n")).unwrap();
        let answer = format!("cat '{}'", code_file.display());
        let login = self.ssh_answering(user, key, &answer, command);
        let _ = std::fs::remove_file(&code_file);
        login
    }

    /// `ssh` with `answer` (shell script text; `$1` is the prompt) run by SSH_ASKPASS for each
    /// keyboard-interactive prompt.
    pub fn ssh_answering(
        &self,
        user: &TestUser,
        key: Option<&Path>,
        answer: &str,
        command: &str,
    ) -> Login {
        let prompts = self.dir.path().join("prompts");
        let askpass = self.dir.path().join("askpass");
        let _ = std::fs::remove_file(&prompts);
        // The prompt (argv[1]) is recorded so the test can see what sshd asked.
        std::fs::write(
            &askpass,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\n{answer}\n",
                prompts.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut cmd = in_new_session("ssh");
        cmd.args(["-F", "/dev/null", "-p", &self.port.to_string()])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=no"])
            .args(["-o", "NumberOfPasswordPrompts=1"])
            .args(["-o", "ConnectTimeout=10"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "IdentityAgent=none"]);
        match key {
            Some(key) => {
                cmd.arg("-i").arg(key).args([
                    "-o",
                    "PreferredAuthentications=publickey,keyboard-interactive",
                ]);
            }
            None => {
                cmd.args(["-o", "PubkeyAuthentication=no"])
                    .args(["-o", "PreferredAuthentications=keyboard-interactive"]);
            }
        }
        cmd.arg(format!("{}@127.0.0.1", user.name))
            .arg(command)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", "none")
            .env_remove("SSH_AUTH_SOCK");
        let run = run_with_deadline(&mut cmd, None, SSH_DEADLINE);
        let prompts = std::fs::read_to_string(&prompts).unwrap_or_default();
        Login { run, prompts }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Still stop it, but without asserting (a panic while panicking aborts).
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            return;
        }
        self.stop();
    }
}

/// One ssh run and the prompts askpass was shown.
#[derive(Debug)]
pub struct Login {
    pub run: Finished,
    pub prompts: String,
}

impl Login {
    pub fn text(&self) -> String {
        format!("{}--- askpass prompts\n{}", self.run.text(), self.prompts)
    }
}
