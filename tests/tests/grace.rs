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

/// Runs `f` on a thread in a login session of its own, as a new login would be: writing the
/// login uid (root) makes the kernel number a new audit session, which the processes the
/// thread starts inherit (twofoldd reads it from the PAM application it talks to).
fn in_new_login_session<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            std::fs::write("/proc/thread-self/loginuid", "0")
                .expect("a new audit session (root, a kernel with audit)");
            f()
        })
        .join()
        .unwrap()
    })
}

/// Finding 8 of the 2026-11 review: with no remote host (su, sudo) the device was the tty name,
/// which the next login gets within minutes. Now it is the login session, and who asked.
#[test]
fn a_local_login_is_remembered_in_its_own_session_only() {
    if skip_unless_root(
        "a_local_login_is_remembered_in_its_own_session_only",
        "start audit sessions",
    ) {
        return;
    }
    let (_daemon, pam, user, e) = setup("grace=600");
    ensure_step_time(5);
    let code = oathtool_at(&e.secret, unix_now() + 30);
    let pts = ["tty=/dev/pts/7", "ruser=alice"];
    in_new_login_session(|| {
        let first = pam.authenticate_with(&user, &pts, Some(&format!("{code}\n")));
        assert!(first.success, "{}", first.text());
        // The same session, tty and asking user: remembered.
        let again = pam.authenticate_with(&user, &pts, None);
        assert!(again.success, "{}", again.text());
        // Someone else asking from the same session: asked.
        let other = pam.authenticate_with(&user, &["tty=/dev/pts/7", "ruser=mallory"], None);
        assert!(
            !other.success && other.text().contains(PROMPT),
            "{}",
            other.text()
        );
    });
    // The same tty name in another login: asked.
    in_new_login_session(|| {
        let next = pam.authenticate_with(&user, &pts, None);
        assert!(
            !next.success && next.text().contains(PROMPT),
            "{}",
            next.text()
        );
    });
}
