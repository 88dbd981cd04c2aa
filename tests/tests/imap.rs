//! A real service that asks one question (issue 16): Debian's dovecot-imapd on 127.0.0.1,
//! authenticating through its own /etc/pam.d service (pam_twofold.so forward_pass, then
//! pam_unix.so use_first_pass), logged into by Python's imaplib with password and code in
//! the one password field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twofold_tests::*;

const PASSWORD: &str = "Tf imap pw 3";

/// dovecot in the foreground with a configuration of its own in a temp dir: IMAP on a free
/// loopback port, PAM for passwords (no authentication cache: each login is checked anew),
/// the system's accounts for mailboxes. Stopped by its pid when dropped.
struct Dovecot {
    dir: tempfile::TempDir,
    port: u16,
    _process: KillOnDrop,
}

impl Dovecot {
    fn start(pam_service: &str) -> Dovecot {
        let dir = open_tempdir();
        let port = free_port();
        let base = dir.path();
        for sub in ["run", "state"] {
            std::fs::create_dir(base.join(sub)).unwrap();
        }
        let config = format!(
            "# Written by twofold's tests/tests/imap.rs.\n\
             base_dir = {base}/run\n\
             state_dir = {base}/state\n\
             log_path = {base}/dovecot.log\n\
             protocols = imap\n\
             listen = 127.0.0.1\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = plain login\n\
             auth_cache_size = 0\n\
             auth_failure_delay = 0\n\
             passdb {{\n  driver = pam\n  args = {pam_service}\n}}\n\
             userdb {{\n  driver = passwd\n}}\n\
             mail_location = maildir:~/Maildir\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\n\
             service imap-login {{\n  chroot =\n}}\n",
            base = base.display()
        );
        let conf = base.join("dovecot.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dovecot (Debian package dovecot-imapd; scripts/deps.sh installs it)");
        let mut process = KillOnDrop(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!(
                    "dovecot exited ({status}): {}",
                    std::fs::read_to_string(base.join("dovecot.log")).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "dovecot did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Dovecot {
            dir,
            port,
            _process: process,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// An IMAP LOGIN by Python's imaplib with `answer` as the password (handed over on
    /// standard input, never in argv); whether the server said OK.
    fn login(&self, user: &str, answer: &str) -> bool {
        let script = "import imaplib, sys\n\
                      port, user = int(sys.argv[1]), sys.argv[2]\n\
                      answer = sys.stdin.readline().rstrip('\\n')\n\
                      m = imaplib.IMAP4('127.0.0.1', port)\n\
                      try:\n    m.login(user, answer)\nexcept imaplib.IMAP4.error as e:\n    print('refused:', e)\n    sys.exit(1)\n\
                      print(m.select('INBOX'))\n\
                      m.logout()\n";
        let mut child = Command::new("python3")
            .args(["-c", script, &self.port.to_string(), user])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{answer}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || text.contains("refused:"),
            "imaplib failed: {text}{err}\n{}",
            self.log()
        );
        out.status.success()
    }
}

#[test]
fn an_imap_login_with_password_and_code_in_one_answer() {
    if skip_unless_root("imap", "dovecot, /etc/pam.d and a local account") {
        return;
    }
    assert!(
        Path::new("/usr/sbin/dovecot").is_file(),
        "/usr/sbin/dovecot is missing (Debian package dovecot-imapd; scripts/deps.sh installs it)"
    );
    let d = Daemon::start("deny", "");
    let user = TestUser::create_unique("tf-imap");
    user.set_password(PASSWORD);
    let service = unique("tf-imap");
    let _pam = SystemFile::install(
        &Path::new("/etc/pam.d").join(&service),
        &format!(
            "# Written by twofold's tests/tests/imap.rs; removed when the test ends.\n\
             auth     required  {} {} forward_pass\n\
             auth     required  pam_unix.so use_first_pass nodelay\n\
             account  required  pam_unix.so\n",
            pam_module().display(),
            module_args(&d.socket)
        ),
        0o644,
    );
    let enrollment = d.enroll(&user.name);
    let imap = Dovecot::start(&service);
    let code = oathtool(&enrollment.secret, 1);
    let answer = format!("{PASSWORD}{code}");
    assert!(
        imap.login(&user.name, &answer),
        "password+code refused:\n{}\n{}",
        imap.log(),
        d.log()
    );
    assert!(
        !imap.login(&user.name, &answer),
        "the same answer was accepted twice"
    );
    assert!(!imap.login(&user.name, PASSWORD), "the password alone");
    let backup = &enrollment.backup_codes[0];
    assert!(
        !imap.login(&user.name, &format!("Tf imap pw 4 {backup}")),
        "a wrong password with a right backup code"
    );
    let log = d.log();
    assert!(
        log.contains("service=") && log.contains(&service),
        "twofoldd saw the PAM service: {log}"
    );
    assert!(
        !log.contains(PASSWORD),
        "the password reached twofoldd's log"
    );
}
