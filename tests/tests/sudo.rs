//! pam_twofold.so behind the real sudo: a throwaway account with a password, a sudoers drop-in
//! `/etc/sudoers.d/tf-sudo-PID-N` (validated with `visudo -cf` before it is installed) whose
//! `pam_service=` points sudo at a PAM service of its own, `/etc/pam.d/tf-sudo-PID-N`
//! (pam_unix, then pam_twofold), and `sudo -S` run as that user answering both prompts (the
//! password, then the code) from standard input. Codes come from oathtool.
//!
//! Needs root (it creates accounts and writes to /etc/sudoers.d and /etc/pam.d); otherwise each
//! test says SKIP and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use twofold_tests::*;

const CODE_PROMPT: &str = "Verification code: ";
const ENROLL: &str = "Two-factor enrollment required: run 'twofold enroll'";
const INVALID: &str = "Invalid verification code.";
const SUDO_DEADLINE: Duration = Duration::from_secs(30);

fn skip(test: &str) -> bool {
    skip_unless_root(
        test,
        "create a user account and write /etc/sudoers.d/tf-sudo-* and /etc/pam.d/tf-sudo-*",
    )
}

/// `visudo -cf FILE`: Ok, or visudo's complaint.
fn visudo_check(path: &Path) -> Result<(), String> {
    let out = Command::new("visudo")
        .arg("-cf")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("visudo is needed (Debian package sudo)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A user who may run anything as root through sudo, authenticated by its own PAM service:
/// password (pam_unix) and then a code (pam_twofold). Dropped in field order: the sudoers
/// drop-in first, then the PAM service, the account and the daemon.
#[derive(Debug)]
struct Sudo {
    _sudoers: SystemFile,
    _pam: SystemFile,
    service: String,
    user: TestUser,
    password: String,
    daemon: Daemon,
}

impl Sudo {
    fn new() -> Sudo {
        let daemon = Daemon::start("deny", "");
        let service = unique("tf-sudo");
        let user = TestUser::create(&service);
        let password = format!("Tf-{}-pw!", service);
        user.set_password(&password);
        let pam = SystemFile::install(
            &Path::new("/etc/pam.d").join(&service),
            &format!(
                "# Written by twofold's tests/tests/sudo.rs; removed when the test ends.\n\
                 auth     required  pam_unix.so\n\
                 auth     required  {} socket={}\n\
                 account  include   common-account\n\
                 session  required  pam_permit.so\n",
                pam_module().display(),
                daemon.socket.display()
            ),
            0o644,
        );
        // A sudoers file that does not parse would break sudo for everybody on the machine:
        // it is checked in a temp directory first and only then installed.
        let scratch = open_tempdir();
        let draft = scratch.path().join("sudoers");
        let name = &user.name;
        let base = format!(
            "# Written by twofold's tests/tests/sudo.rs; removed when the test ends.\n\
             Defaults:{name} pam_service={service}\n\
             Defaults:{name} passwd_tries=1, timestamp_timeout=0, !lecture, !mail_badpass\n\
             {name} ALL=(root) ALL\n"
        );
        // sudo before 1.9.16 calls pam_authenticate with PAM_SILENT; pam_twofold still says
        // why it refuses, so no `!pam_silent` is needed (and older visudo would reject it).
        let text = base;
        std::fs::write(&draft, &text).unwrap();
        if let Err(complaint) = visudo_check(&draft) {
            panic!("the sudoers drop-in does not parse (pam_service needs sudo >= 1.8.8):\n{complaint}\n{text}");
        }
        let sudoers =
            SystemFile::install(&Path::new("/etc/sudoers.d").join(&service), &text, 0o440);
        Sudo {
            _sudoers: sudoers,
            _pam: pam,
            service,
            user,
            password,
            daemon,
        }
    }

    /// `sudo -S id -u` as the user, in a session of its own without a terminal, typing `input`.
    fn sudo(&self, input: &str) -> Finished {
        let mut cmd = in_new_session("setpriv");
        cmd.args([
            "--reuid",
            &self.user.uid.to_string(),
            "--regid",
            &self.user.gid.to_string(),
            "--init-groups",
            "--",
            "sudo",
            "-S",
            "--",
            "id",
            "-u",
        ])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", &self.user.home)
        .env("USER", &self.user.name)
        .env("LOGNAME", &self.user.name)
        .env("LC_ALL", "C");
        run_with_deadline(&mut cmd, Some(input), SUDO_DEADLINE)
    }

    /// `sudo -K` as the user: forget any cached credential (timestamp_timeout=0 keeps none).
    fn forget(&self) {
        let mut cmd = in_new_session("setpriv");
        cmd.args([
            "--reuid",
            &self.user.uid.to_string(),
            "--regid",
            &self.user.gid.to_string(),
            "--init-groups",
            "--",
            "sudo",
            "-K",
        ])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let run = run_with_deadline(&mut cmd, None, SUDO_DEADLINE);
        assert!(run.success(), "sudo -K: {}", run.text());
    }

    fn context(&self, run: &Finished) -> String {
        format!("{}--- twofoldd log\n{}", run.text(), self.daemon.log())
    }

    /// The command ran as root: exactly `0` on stdout.
    fn assert_ran_as_root(&self, run: &Finished) {
        assert!(
            run.success(),
            "expected sudo to run it: {}",
            self.context(run)
        );
        assert_eq!(run.stdout, "0\n", "{}", self.context(run));
        // Both factors were asked for, in order.
        let password_prompt = format!("[sudo] password for {}: ", self.user.name);
        let asked_password = run.stderr.find(&password_prompt);
        let asked_code = run.stderr.find(CODE_PROMPT);
        assert!(
            matches!((asked_password, asked_code), (Some(p), Some(c)) if p < c),
            "{}",
            self.context(run)
        );
    }

    /// sudo refused: non-zero exit and the command's output absent.
    fn assert_refused(&self, run: &Finished) {
        assert!(
            !run.timed_out,
            "sudo hung instead of failing: {}",
            self.context(run)
        );
        assert_eq!(run.code, Some(1), "{}", self.context(run));
        assert_eq!(run.stdout, "", "the command ran: {}", self.context(run));
        assert!(
            run.stderr.contains("incorrect password attempt"),
            "{}",
            self.context(run)
        );
    }

    /// The daemon's log line for this user's last decision through this sudo service.
    fn daemon_said(&self, what: &str) -> bool {
        let wanted = format!("user={} service={} ", self.user.name, self.service);
        self.daemon
            .log()
            .lines()
            .any(|l| l.contains(&wanted) && l.contains(what))
    }

    fn next_code(&self, e: &Enrollment) -> String {
        ensure_step_time(10);
        oathtool(&e.secret, 1)
    }
}

#[test]
fn password_and_right_code_run_the_command_as_root() {
    if skip("password_and_right_code_run_the_command_as_root") {
        return;
    }
    let s = Sudo::new();
    let e = s.daemon.enroll(&s.user.name);
    let run = s.sudo(&format!("{}\n{}\n", s.password, s.next_code(&e)));
    s.assert_ran_as_root(&run);
    assert!(
        s.daemon_said("outcome=accepted method=totp"),
        "{}",
        s.context(&run)
    );
    // Nothing was cached: the next sudo asks again, and a wrong code now fails.
    s.forget();
    let again = s.sudo(&format!("{}\n{}\n", s.password, wrong_code(&e.secret)));
    s.assert_refused(&again);
    assert!(again.stderr.contains(CODE_PROMPT), "{}", s.context(&again));
}

#[test]
fn wrong_code_does_not_run_the_command() {
    if skip("wrong_code_does_not_run_the_command") {
        return;
    }
    let s = Sudo::new();
    let e = s.daemon.enroll(&s.user.name);
    let run = s.sudo(&format!("{}\n{}\n", s.password, wrong_code(&e.secret)));
    s.assert_refused(&run);
    assert!(run.stderr.contains(CODE_PROMPT), "{}", s.context(&run));
    assert!(s.daemon_said("reason=wrong-code"), "{}", s.context(&run));
    // sudo passes PAM_SILENT; the reason for the refusal is shown all the same.
    assert!(run.stderr.contains(INVALID), "{}", s.context(&run));
}

#[test]
fn wrong_password_with_right_code_does_not_run_the_command() {
    if skip("wrong_password_with_right_code_does_not_run_the_command") {
        return;
    }
    let s = Sudo::new();
    let e = s.daemon.enroll(&s.user.name);
    let code = s.next_code(&e);
    let run = s.sudo(&format!("not-{}\n{code}\n", s.password));
    s.assert_refused(&run);
    // `required` runs the rest of the stack after a failure, so the code was still asked for
    // (and, being right, consumed): the password alone decided.
    assert!(run.stderr.contains(CODE_PROMPT), "{}", s.context(&run));
}

#[test]
fn unenrolled_user_under_deny_is_refused() {
    if skip("unenrolled_user_under_deny_is_refused") {
        return;
    }
    let s = Sudo::new();
    let run = s.sudo(&format!("{}\n123456\n", s.password));
    s.assert_refused(&run);
    // No code prompt: the module refuses before asking.
    assert!(!run.stderr.contains(CODE_PROMPT), "{}", s.context(&run));
    assert!(
        s.daemon_said("outcome=refused-not-enrolled"),
        "{}",
        s.context(&run)
    );
    // The user learns why: sudo passes PAM_SILENT, but a refusal still says what to do.
    assert!(run.stderr.contains(ENROLL), "{}", s.context(&run));
}

/// sudo before 1.9.16 (Debian 12 has 1.9.13) passes PAM_SILENT: no QR code can be shown, so an
/// invited account is refused with the reason, and nothing about its enrollment changes.
#[test]
fn an_invited_account_is_told_to_enroll_where_a_qr_code_can_be_shown() {
    if skip("an_invited_account_is_told_to_enroll_where_a_qr_code_can_be_shown") {
        return;
    }
    let s = Sudo::new();
    let invited = s.daemon.cli(&["invite", &s.user.name]);
    assert_eq!(invited.code(), 0, "{}", invited.stderr());
    let run = s.sudo(&format!("{}\n123456\n", s.password));
    s.assert_refused(&run);
    assert!(
        run.stderr.contains("this login cannot show the QR code"),
        "{}",
        s.context(&run)
    );
    let status = s
        .daemon
        .cli(&["status", "--user", &s.user.name, "--json"])
        .json();
    assert!(
        status["pending"] == false && status["invited_until"].is_u64(),
        "{status}"
    );
}

/// A helpdesk code stands in for the code once, through the real sudo.
#[test]
fn a_helpdesk_code_runs_the_command_once() {
    if skip("a_helpdesk_code_runs_the_command_once") {
        return;
    }
    let s = Sudo::new();
    s.daemon.enroll(&s.user.name);
    let issued = s.daemon.cli(&["bypass", &s.user.name, "--json"]);
    assert_eq!(issued.code(), 0, "{}", issued.stderr());
    let code = issued.json()["code"].as_str().unwrap().to_string();
    let run = s.sudo(&format!("{}\n{code}\n", s.password));
    s.assert_ran_as_root(&run);
    assert!(s.daemon_said("method=bypass"), "{}", s.context(&run));
    s.forget();
    let again = s.sudo(&format!("{}\n{code}\n", s.password));
    s.assert_refused(&again);
}
