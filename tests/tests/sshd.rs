//! pam_twofold.so behind a real sshd: a private sshd on 127.0.0.1 (its own config, host key and
//! pid file in a temp directory) started under a renamed binary so that its PAM service is a
//! new /etc/pam.d/tf-sshd-PID-N (the host's /etc/pam.d/sshd is never touched), a throwaway
//! account with an ed25519 key, and a real `ssh` client answering the code prompt through
//! SSH_ASKPASS from a private file. Codes come from oathtool.
//!
//! Needs root (it starts sshd, creates accounts and writes to /etc/pam.d); otherwise each test
//! says SKIP and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use twofold_tests::*;

const PROMPT: &str = "Verification code:";
/// What the remote command prints; a refused login never prints it.
const MARKER: &str = "tf-remote-command-ran";

fn skip(test: &str) -> bool {
    skip_unless_root(
        test,
        "start sshd, create a user account and write /etc/pam.d/tf-sshd-*",
    )
}

/// Everything one test needs; dropped in field order: sshd, then the account, then the daemon.
#[derive(Debug)]
struct Setup {
    sshd: Sshd,
    user: TestUser,
    daemon: Daemon,
    key: PathBuf,
    _keys: tempfile::TempDir,
    enrollment: Enrollment,
}

impl Setup {
    fn new(methods: &str) -> Setup {
        Setup::with_args(methods, "")
    }

    fn with_args(methods: &str, module_args: &str) -> Setup {
        let daemon = Daemon::start("deny", "");
        let user = TestUser::create(&unique("tf-ssh"));
        let keys = open_tempdir();
        let key = keys.path().join("id_ed25519");
        keygen(&key, &format!("{}@tf-sshd-test", user.name));
        user.authorize_ssh_key(&key.with_extension("pub"));
        let enrollment = daemon.enroll(&user.name);
        let sshd = Sshd::start_with(&daemon.socket, &user.name, methods, module_args);
        Setup {
            sshd,
            user,
            daemon,
            key,
            _keys: keys,
            enrollment,
        }
    }

    fn context(&self, login: &Login) -> String {
        format!(
            "{}\n--- sshd log\n{}--- twofoldd log\n{}",
            login.text(),
            self.sshd.log(),
            self.daemon.log()
        )
    }

    /// A login that must succeed and run the command.
    fn assert_logged_in(&self, login: &Login) {
        assert!(
            login.run.success(),
            "expected a login: {}",
            self.context(login)
        );
        assert_eq!(
            login.run.stdout,
            format!("{MARKER} {}\n", self.user.name),
            "{}",
            self.context(login)
        );
        assert!(login.prompts.contains(PROMPT), "{}", self.context(login));
    }

    /// A login that must be refused at the code prompt: ssh fails (255), the command never
    /// runs, and the module's message reached the client (as keyboard-interactive text).
    fn assert_refused(&self, login: &Login) {
        assert!(
            !login.run.timed_out,
            "ssh hung instead of failing: {}",
            self.context(login)
        );
        assert_eq!(login.run.code, Some(255), "{}", self.context(login));
        assert!(
            !login.run.stdout.contains(MARKER),
            "{}",
            self.context(login)
        );
        assert!(
            login.run.stderr.contains("Permission denied"),
            "{}",
            self.context(login)
        );
        assert!(
            login.run.stderr.contains("Invalid verification code."),
            "{}",
            self.context(login)
        );
        assert!(login.prompts.contains(PROMPT), "{}", self.context(login));
    }

    fn ssh(&self, key: bool, code: &str) -> Login {
        let key = key.then_some(self.key.as_path());
        self.sshd.ssh(
            &self.user,
            key,
            code,
            &format!("echo {MARKER} \"$(id -un)\""),
        )
    }

    /// The daemon logged an accepted `method` for this user through this sshd's PAM service.
    fn assert_daemon_accepted(&self, method: &str) {
        let log = self.daemon.log();
        let wanted = format!(
            "verify user={} service={} ",
            self.user.name, self.sshd.service
        );
        assert!(
            log.lines().any(|l| l.contains(&wanted)
                && l.contains("outcome=accepted")
                && l.contains(&format!("method={method}"))),
            "no accepted {method} login via {} in the daemon's log:\n{log}",
            self.sshd.service
        );
    }

    /// The code for the step after the one the enrollment's confirmation consumed (or, if a
    /// step boundary has passed since, the one after that: still inside the ±1 window).
    fn next_code(&self) -> String {
        ensure_step_time(10);
        oathtool(&self.enrollment.secret, 1)
    }
}

const KEY_AND_CODE: &str = "publickey,keyboard-interactive";

#[test]
fn key_and_right_code_log_in_and_run_the_command() {
    if skip("key_and_right_code_log_in_and_run_the_command") {
        return;
    }
    let mut s = Setup::new(KEY_AND_CODE);
    let login = s.ssh(true, &s.next_code());
    s.assert_logged_in(&login);
    s.assert_daemon_accepted("totp");
    // The login really went through the renamed service, from 127.0.0.1.
    assert!(
        s.daemon
            .log()
            .contains(&format!("service={} rhost=127.0.0.1", s.sshd.service)),
        "{}",
        s.daemon.log()
    );
    s.sshd.stop();
}

#[test]
fn key_and_wrong_code_are_refused() {
    if skip("key_and_wrong_code_are_refused") {
        return;
    }
    let mut s = Setup::new(KEY_AND_CODE);
    let login = s.ssh(true, &wrong_code(&s.enrollment.secret));
    s.assert_refused(&login);
    // The code prompt was reached (the key was accepted) and the code was the reason.
    assert!(login.prompts.contains(PROMPT), "{}", s.context(&login));
    assert!(
        s.daemon.log().contains("reason=wrong-code"),
        "{}",
        s.context(&login)
    );
    // The key alone is not enough either.
    let mut cmd = in_new_session("ssh");
    cmd.args(["-F", "/dev/null", "-p", &s.sshd.port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes"])
        .args(["-o", "IdentityAgent=none"])
        .args(["-o", "PreferredAuthentications=publickey"])
        .arg("-i")
        .arg(&s.key)
        .arg(format!("{}@127.0.0.1", s.user.name))
        .arg(format!("echo {MARKER}"))
        .env_remove("SSH_AUTH_SOCK");
    let key_only = run_with_deadline(&mut cmd, None, SSH_DEADLINE);
    assert_eq!(key_only.code, Some(255), "{}", key_only.text());
    assert!(!key_only.stdout.contains(MARKER), "{}", key_only.text());
    assert!(
        key_only.stderr.contains("Permission denied"),
        "{}",
        key_only.text()
    );
    s.sshd.stop();
}

#[test]
fn replayed_code_is_refused() {
    if skip("replayed_code_is_refused") {
        return;
    }
    let mut s = Setup::new(KEY_AND_CODE);
    let code = s.next_code();
    s.assert_logged_in(&s.ssh(true, &code));
    // The very same code again, at once (same step): refused as replayed.
    let again = s.ssh(true, &code);
    s.assert_refused(&again);
    assert!(again.prompts.contains(PROMPT), "{}", s.context(&again));
    assert!(
        s.daemon.log().contains("reason=replayed"),
        "{}",
        s.context(&again)
    );
    s.sshd.stop();
}

#[test]
fn backup_code_logs_in_once() {
    if skip("backup_code_logs_in_once") {
        return;
    }
    let mut s = Setup::new(KEY_AND_CODE);
    let backup = s.enrollment.backup_codes[0].clone();
    s.assert_logged_in(&s.ssh(true, &backup));
    s.assert_daemon_accepted("backup");
    let status = s.daemon.cli(&["status", "--user", &s.user.name, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["backup_codes_left"], 11, "{status}");
    // Single use: the second login with it is refused.
    let again = s.ssh(true, &backup);
    s.assert_refused(&again);
    // Another backup code still works.
    s.assert_logged_in(&s.ssh(true, &s.enrollment.backup_codes[1]));
    s.sshd.stop();
}

#[test]
fn keyboard_interactive_alone_logs_in_with_the_code_only() {
    if skip("keyboard_interactive_alone_logs_in_with_the_code_only") {
        return;
    }
    // Here the whole PAM stack is pam_twofold (a real one would ask for a password first).
    let mut s = Setup::new("keyboard-interactive");
    let wrong = s.ssh(false, &wrong_code(&s.enrollment.secret));
    s.assert_refused(&wrong);
    assert!(wrong.prompts.contains(PROMPT), "{}", s.context(&wrong));
    let login = s.ssh(false, &s.next_code());
    s.assert_logged_in(&login);
    s.assert_daemon_accepted("totp");
    s.sshd.stop();
}

#[test]
fn email_at_the_keyboard_interactive_prompt_logs_in_with_the_mailed_code() {
    if skip("email_at_the_keyboard_interactive_prompt_logs_in_with_the_mailed_code") {
        return;
    }
    let sink = SmtpSink::start();
    let daemon = Daemon::start("deny", &format!("email_codes = true\n{}", sink.config()));
    let user = TestUser::create(&unique("tf-ssh"));
    let keys = open_tempdir();
    let key = keys.path().join("id_ed25519");
    keygen(&key, &format!("{}@tf-sshd-test", user.name));
    user.authorize_ssh_key(&key.with_extension("pub"));
    daemon.enroll(&user.name);
    let address = format!("{}@example.org", user.name);
    let set = daemon.cli(&["email", "set", &address, "--user", &user.name]);
    assert!(set.status.success(), "{set:?}");
    let verify = mailed_code(&sink.wait_for(1));
    let ok = daemon.cli(&["email", "confirm", &verify, "--user", &user.name]);
    assert!(ok.status.success(), "{ok:?}");
    let mut sshd = Sshd::start(&daemon.socket, &user.name, KEY_AND_CODE);
    // askpass answers "email" at the code prompt, then waits for the file the test writes
    // once it has read the mail.
    let mailed = sshd.dir.path().join("mailed");
    let answer = format!(
        "case \"$1\" in\n\
         *'Code sent to'*) i=0; while [ ! -s '{0}' ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; cat '{0}' ;;\n\
         *) echo email ;;\n\
         esac",
        mailed.display()
    );
    let login = std::thread::scope(|scope| {
        let ssh = scope.spawn(|| {
            sshd.ssh_answering(
                &user,
                Some(&key),
                &answer,
                &format!("echo {MARKER} \"$(id -un)\""),
            )
        });
        let code = mailed_code(&sink.wait_for(2));
        let tmp = sshd.dir.path().join("mailed.tmp");
        std::fs::write(&tmp, "").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&tmp, format!("{code}\n")).unwrap();
        std::fs::rename(&tmp, &mailed).unwrap();
        ssh.join().unwrap()
    });
    let context = format!(
        "{}\n--- sshd log\n{}--- twofoldd log\n{}",
        login.text(),
        sshd.log(),
        daemon.log()
    );
    assert!(login.run.success(), "expected a login: {context}");
    assert_eq!(
        login.run.stdout,
        format!("{MARKER} {}\n", user.name),
        "{context}"
    );
    assert!(login.prompts.contains(PROMPT), "{context}");
    assert!(
        login
            .prompts
            .contains(&format!("Code sent to {}***@example.org:", &user.name[..1])),
        "{context}"
    );
    assert!(
        daemon.log().contains("outcome=accepted method=email"),
        "{context}"
    );
    sshd.stop();
}

#[test]
fn a_remembered_host_logs_in_again_without_a_code() {
    if skip("a_remembered_host_logs_in_again_without_a_code") {
        return;
    }
    let mut s = Setup::with_args(KEY_AND_CODE, "grace=600");
    let code = s.next_code();
    s.assert_logged_in(&s.ssh(true, &code));
    // From the same host, within the grace period: no code is asked. The answer on offer is
    // a wrong one, so only a login that never asks can succeed.
    let again = s.ssh(true, &wrong_code(&s.enrollment.secret));
    assert!(again.run.success(), "{}", s.context(&again));
    assert_eq!(
        again.run.stdout,
        format!("{MARKER} {}\n", s.user.name),
        "{}",
        s.context(&again)
    );
    assert!(!again.prompts.contains(PROMPT), "{}", s.context(&again));
    s.assert_daemon_accepted("remembered");
    // Disabling the enrollment forgets the host: after enrolling again, the code is asked.
    let off = s.daemon.cli(&["disable", "--user", &s.user.name]);
    assert!(off.status.success());
    s.enrollment = s.daemon.enroll(&s.user.name);
    let after = s.ssh(true, &wrong_code(&s.enrollment.secret));
    s.assert_refused(&after);
    s.sshd.stop();
}
