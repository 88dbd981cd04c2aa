//! An enrollment belongs to an account, not to a spelling (finding 6 of the 2026-11 review):
//! a second name for uid 0 met no enrollment and passed with PAM_IGNORE; a deleted and
//! recreated account, or an account renamed, inherited or split a factor. Real accounts
//! (useradd, usermod), a real twofoldd, pamtester under pam_wrapper on the SSH stack that lets
//! PAM_IGNORE through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use twofold_tests::*;

const PROMPT: &str = "Verification code: ";

/// The recommended SSH stack: twofold, then pam_permit (PAM_IGNORE passes).
fn ssh_stack(daemon: &Daemon) -> PamService {
    PamService::new(&format!(
        "auth [success=ok ignore=ignore default=die] MODULE {}\nauth required {PAM_PERMIT}\n",
        module_args(&daemon.socket)
    ))
}

/// A second name for uid 0 (`toor` on BSD), removed when dropped. Not a [`TestUser`]: its
/// clean-up kills the account's processes, which here would be every root process.
struct RootAlias(String);

impl RootAlias {
    fn create(name: &str) -> RootAlias {
        let out = run_account_tool(
            "useradd",
            &[
                "-o", "-u", "0", "-g", "0", "-M", "-d", "/root", "-s", "/bin/sh", name,
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        RootAlias(name.to_string())
    }
}

impl Drop for RootAlias {
    fn drop(&mut self) {
        // -f: uid 0 always has processes; no -r: its home is /root.
        let _ = run_account_tool("userdel", &["-f", &self.0], None);
    }
}

fn short_id() -> u32 {
    std::process::id() % 10_000
}

#[test]
fn a_second_name_for_uid_0_meets_roots_enrollment() {
    if skip_unless_root(
        "a_second_name_for_uid_0_meets_roots_enrollment",
        "add accounts",
    ) {
        return;
    }
    let daemon = Daemon::start("allow", "");
    let e = daemon.enroll("root");
    let alias = RootAlias::create(&format!("tfoor{}", short_id()));
    let pam = ssh_stack(&daemon);
    let wrong = pam.authenticate(&alias.0, Some("000000\n"));
    assert!(!wrong.success, "{}", wrong.text());
    assert!(wrong.text().contains(PROMPT), "{}", wrong.text());
    ensure_step_time(5);
    let code = oathtool_at(&e.secret, unix_now() + 30);
    let right = pam.authenticate(&alias.0, Some(&format!("{code}\n")));
    assert!(right.success, "{}", right.text());
    // The same code again, under root's own name: spent.
    let replay = pam.authenticate("root", Some(&format!("{code}\n")));
    assert!(!replay.success, "{}", replay.text());
    let status = daemon.cli(&["status", "--user", &alias.0, "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["user"], "root");
    // doctor says so.
    let config = daemon.dir.path().join("twofold.toml");
    let doctor = daemon.cli(&["doctor", "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains(&format!("uid 0 has several names (root, {})", alias.0)),
        "{text}"
    );
}

#[test]
fn an_enrollment_does_not_pass_to_a_new_account_of_the_same_name() {
    if skip_unless_root(
        "an_enrollment_does_not_pass_to_a_new_account_of_the_same_name",
        "add accounts",
    ) {
        return;
    }
    let daemon = Daemon::start("allow", "");
    let name = format!("tf-re{}", short_id());
    let old = TestUser::create(&name);
    let e = daemon.enroll(&name);
    let old_uid = old.uid;
    drop(old);
    let new_uid = (old_uid + 7).to_string();
    let _new = TestUser::create_with(&name, &["-u", &new_uid]);
    ensure_step_time(5);
    let code = oathtool_at(&e.secret, unix_now() + 30);
    let pam = ssh_stack(&daemon);
    let run = pam.authenticate(&name, Some(&format!("{code}\n")));
    assert!(
        !run.success,
        "the old account's factor opened the new one: {}",
        run.text()
    );
    let verify = daemon.cli(&["verify", &name, &code]);
    assert_eq!(verify.status.code(), Some(2), "{verify:?}");
    let log = std::fs::read_to_string(daemon.dir.path().join("twofoldd.log")).unwrap();
    assert!(
        log.contains(&format!("was made for uid {old_uid}")),
        "{log}"
    );
    // Root cleans up and the new account enrolls afresh.
    let disable = daemon.cli(&["disable", "--user", &name]);
    assert!(disable.status.success(), "{disable:?}");
    let fresh = daemon.enroll(&name);
    ensure_step_time(5);
    let code = oathtool_at(&fresh.secret, unix_now() + 30);
    assert!(pam.authenticate(&name, Some(&format!("{code}\n"))).success);
}

#[test]
fn a_renamed_account_is_refused_until_it_is_enrolled_again() {
    if skip_unless_root(
        "a_renamed_account_is_refused_until_it_is_enrolled_again",
        "add accounts",
    ) {
        return;
    }
    let daemon = Daemon::start("allow", "");
    let name = format!("tf-mv{}", short_id());
    let renamed = format!("tf-nw{}", short_id());
    let user = TestUser::create(&name);
    daemon.enroll(&name);
    let mv = |from: &str, to: &str| {
        let out = run_account_tool("usermod", &["-l", to, from], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    mv(&name, &renamed);
    // The renamed account has no enrollment under its new name, but its uid has one: under
    // "allow" it must not pass untouched (fully qualified names switched on do the same).
    let run = ssh_stack(&daemon).authenticate(&renamed, Some("000000\n"));
    mv(&renamed, &name);
    assert!(!run.success, "{}", run.text());
    let log = std::fs::read_to_string(daemon.dir.path().join("twofoldd.log")).unwrap();
    assert!(log.contains("is stored under the name"), "{log}");
    drop(user);
}
