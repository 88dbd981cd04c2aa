//! The administrator's policy and an imported google-authenticator enrollment, through libpam:
//! pamtester under pam_wrapper against a real twofoldd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use twofold_tests::*;

const PROMPT: &str = "Verification code: ";
const ENROLL: &str = "Two-factor enrollment required: run 'twofold enroll'";

/// The stack that lets "no opinion" (PAM_IGNORE) through and fails closed on everything else.
fn ignore_stack(socket: &std::path::Path) -> PamService {
    PamService::new(&format!(
        "auth [success=ok ignore=ignore default=bad] MODULE {}\nauth required pam_permit.so\n",
        module_args(socket)
    ))
}

#[test]
fn switched_off_lets_logins_through_untouched_and_a_reload_switches_it_on() {
    let daemon = Daemon::start("deny", "enabled = false");
    let user = my_name();
    let e = daemon.enroll(&user);
    let stack = ignore_stack(&daemon.socket);
    // Off: no prompt, PAM_IGNORE, the stack decides.
    let off = stack.authenticate(&user, None);
    assert!(off.success, "{}", off.text());
    assert!(!off.text().contains(PROMPT), "{}", off.text());
    // `required` alone does not let anyone in on "ignore".
    let alone = PamService::required(&daemon.socket, "").authenticate(&user, None);
    assert!(!alone.success, "{}", alone.text());
    // Switched on by SIGHUP: the code is asked again.
    daemon.reconfigure("deny", "enabled = true");
    let on = stack.authenticate(&user, None);
    assert!(!on.success && on.text().contains(PROMPT), "{}", on.text());
    ensure_step_time(5);
    let code = oathtool_at(&e.secret, unix_now() + 30);
    let ok = stack.authenticate(&user, Some(&format!("{code}\n")));
    assert!(ok.success, "{}", ok.text());
}

#[test]
fn unenrolled_policy_follows_a_reload() {
    let daemon = Daemon::start("allow", "");
    let user = my_name(); // an account, not enrolled
    let stack = ignore_stack(&daemon.socket);
    let allowed = stack.authenticate(&user, None);
    assert!(allowed.success, "{}", allowed.text());
    daemon.reconfigure("deny", "");
    let refused = stack.authenticate(&user, None);
    assert!(!refused.success, "{}", refused.text());
    assert!(refused.text().contains(ENROLL), "{}", refused.text());
}

#[test]
fn require_groups_refuse_members_until_enrolled() {
    if skip_unless_root(
        "require_groups_refuse_members_until_enrolled",
        "create a group and users",
    ) {
        return;
    }
    let group = format!("tf-pg{}", std::process::id() % 100_000);
    let _group = TestGroup::create(&group);
    let member = TestUser::create(&format!("tf-pm{}", std::process::id() % 100_000));
    let outsider = TestUser::create(&format!("tf-po{}", std::process::id() % 100_000));
    assert!(Command::new("usermod")
        .args(["-aG", &group, &member.name])
        .status()
        .unwrap()
        .success());
    let daemon = Daemon::start("allow", &format!("require_groups = [{group:?}]"));
    let stack = ignore_stack(&daemon.socket);
    let refused = stack.authenticate(&member.name, None);
    assert!(
        !refused.success && refused.text().contains(ENROLL),
        "{}",
        refused.text()
    );
    let through = stack.authenticate(&outsider.name, None);
    assert!(through.success, "{}", through.text());
}

#[test]
fn an_imported_google_authenticator_user_logs_in_with_the_phone_and_a_scratch_code() {
    let daemon = Daemon::start("deny", "");
    let user = my_name();
    let file = daemon.dir.path().join("ga");
    let status = Command::new("google-authenticator")
        .args([
            "-t", "-d", "-f", "-C", "-q", "-Q", "NONE", "-w", "3", "-r", "3", "-R", "30", "-s",
        ])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("google-authenticator is required (Debian package libpam-google-authenticator)");
    assert!(status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    let secret = text.lines().next().unwrap().to_string();
    let scratch = text
        .lines()
        .find(|l| l.len() == 8 && l.bytes().all(|b| b.is_ascii_digit()))
        .unwrap()
        .to_string();
    let out = daemon.cli(&[
        "import",
        "google-authenticator",
        "--user",
        &user,
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pam = PamService::required(&daemon.socket, "");
    ensure_step_time(5);
    let code = oathtool_at(&secret, unix_now());
    let phone = pam.authenticate(&user, Some(&format!("{code}\n")));
    assert!(phone.success, "{}", phone.text());
    let backup = pam.authenticate(&user, Some(&format!("{scratch}\n")));
    assert!(backup.success, "{}", backup.text());
    assert!(
        backup.text().contains("Backup code used; 4 left."),
        "{}",
        backup.text()
    );
    let again = pam.authenticate(&user, Some(&format!("{scratch}\n")));
    assert!(!again.success, "{}", again.text());
}
