//! "Remember this device" (module argument grace=SECONDS) through libpam: pamtester under
//! pam_wrapper against a real twofoldd, with the remote host set as a PAM item.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use twofold_tests::*;

const PROMPT: &str = "Verification code: ";

fn setup(grace: &str) -> (Daemon, PamService, String, Enrollment) {
    let daemon = Daemon::start("deny", "");
    let user = my_name();
    let e = daemon.enroll(&user);
    let pam = PamService::required(&daemon.socket, grace);
    (daemon, pam, user, e)
}

#[test]
fn a_remembered_host_is_not_asked_again_and_others_are() {
    let (daemon, pam, user, e) = setup("grace=600");
    ensure_step_time(5);
    let code = oathtool_at(&e.secret, unix_now() + 30);
    let first = pam.authenticate_with(&user, &["rhost=198.51.100.7"], Some(&format!("{code}\n")));
    assert!(first.success, "{}", first.text());
    assert!(first.text().contains(PROMPT));
    // Same user, service and host: in without a prompt (stdin closed: a prompt would fail).
    let again = pam.authenticate_with(&user, &["rhost=198.51.100.7"], None);
    assert!(again.success, "{}", again.text());
    assert!(!again.text().contains(PROMPT), "{}", again.text());
    // Another host is asked.
    let other = pam.authenticate_with(&user, &["rhost=203.0.113.9"], None);
    assert!(!other.success, "{}", other.text());
    assert!(other.text().contains(PROMPT), "{}", other.text());
    // The trail says how each got in.
    let trail = daemon.cli(&["audit", "--user", &user, "--json"]);
    let text = String::from_utf8_lossy(&trail.stdout).into_owned();
    assert!(text.contains("\"method\":\"remembered\""), "{text}");
    // Disabling the enrollment forgets the device.
    let e2 = {
        assert!(daemon.cli(&["disable", "--user", &user]).status.success());
        daemon.enroll(&user)
    };
    let after = pam.authenticate_with(&user, &["rhost=198.51.100.7"], None);
    assert!(
        !after.success && after.text().contains(PROMPT),
        "{}",
        after.text()
    );
    let _ = e2;
}

#[test]
fn without_grace_or_without_an_origin_every_login_is_asked() {
    let (_daemon, pam, user, e) = setup("");
    ensure_step_time(5);
    let code = oathtool_at(&e.secret, unix_now() + 30);
    let first = pam.authenticate_with(&user, &["rhost=198.51.100.7"], Some(&format!("{code}\n")));
    assert!(first.success, "{}", first.text());
    let again = pam.authenticate_with(&user, &["rhost=198.51.100.7"], None);
    assert!(
        !again.success && again.text().contains(PROMPT),
        "{}",
        again.text()
    );

    // grace= set, but no remote host and no tty: nothing to remember by.
    let (_daemon, pam, user, e) = setup("grace=600");
    ensure_step_time(5);
    let code = oathtool_at(&e.secret, unix_now() + 30);
    assert!(pam.authenticate(&user, Some(&format!("{code}\n"))).success);
    let again = pam.authenticate(&user, None);
    assert!(
        !again.success && again.text().contains(PROMPT),
        "{}",
        again.text()
    );
}

#[test]
fn the_same_tty_is_remembered_when_there_is_no_remote_host() {
    let (_daemon, pam, user, e) = setup("grace=600");
    ensure_step_time(5);
    let code = oathtool_at(&e.secret, unix_now() + 30);
    let first = pam.authenticate_with(&user, &["tty=/dev/pts/7"], Some(&format!("{code}\n")));
    assert!(first.success, "{}", first.text());
    assert!(
        pam.authenticate_with(&user, &["tty=/dev/pts/7"], None)
            .success
    );
    let other = pam.authenticate_with(&user, &["tty=/dev/pts/8"], None);
    assert!(!other.success, "{}", other.text());
}
