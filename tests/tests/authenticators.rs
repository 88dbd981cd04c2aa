//! Several named authenticators per account (issue 15), end to end: the real twofoldd and CLI,
//! pam_twofold.so under pamtester, codes from oathtool (on PostgreSQL with two daemons: in
//! fleet.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use twofold_tests::*;

/// `twofold enroll --name LABEL` for `user` on `d`, confirmed with oathtool's code; the key.
fn add(d: &Daemon, user: &str, label: &str) -> String {
    let started = d.cli(&["enroll", "--user", user, "--name", label, "--json"]);
    assert_eq!(
        started.code(),
        0,
        "{} {}",
        started.stdout(),
        started.stderr()
    );
    let secret = started.json()["secret"].as_str().unwrap().to_string();
    ensure_step_time(8);
    let confirmed = d.cli(&["confirm", &oathtool(&secret, 0), "--user", user]);
    assert_eq!(confirmed.code(), 0, "{}", confirmed.stderr());
    assert!(
        confirmed
            .stdout()
            .contains(&format!("authenticator {label}")),
        "{}",
        confirmed.stdout()
    );
    secret
}

fn authenticators(d: &Daemon, user: &str) -> Vec<String> {
    let run = d.cli(&["authenticators", "--user", user, "--json"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    run.json()["authenticators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

/// Sleeps into the next step: the codes of this one are spent.
fn next_step() {
    std::thread::sleep(
        std::time::Duration::from_secs(30 - unix_now() % 30)
            + std::time::Duration::from_millis(300),
    );
}

#[test]
fn codes_of_two_authenticators_each_log_in_once() {
    let d = Daemon::start("allow", "");
    let phone = d.enroll("tf-two");
    let tablet = add(&d, "tf-two", "tablet");
    assert_eq!(authenticators(&d, "tf-two"), ["default", "tablet"]);
    let listed = d.cli(&["authenticators", "--user", "tf-two", "--json"]);
    assert!(!listed.stdout().contains(&tablet) && !listed.stdout().contains(&phone.secret));
    next_step();
    let pam = PamService::required(&d.socket, "");
    for secret in [&phone.secret, &tablet] {
        let code = oathtool(secret, 0);
        let run = pam.authenticate("tf-two", Some(&format!("{code}\n")));
        assert!(run.success, "{}\n{}", run.text(), d.log());
        let replay = pam.authenticate("tf-two", Some(&format!("{code}\n")));
        assert!(!replay.success, "a replayed code: {}", replay.text());
    }
    assert!(
        d.log().contains("method=totp authenticator=tablet"),
        "{}",
        d.log()
    );
    let status = d.cli(&["status", "--user", "tf-two", "--json"]).json();
    assert_eq!(status["authenticators"], 2, "{status}");
    assert_eq!(status["backup_codes_left"], 12, "{status}");
}

#[test]
fn one_code_of_one_authenticator_wins_once_and_the_other_still_works() {
    let d = Daemon::start(
        "allow",
        "[throttle]\nfree_failures = 1000\nlockout_after = 0",
    );
    let phone = d.enroll("tf-race");
    let tablet = add(&d, "tf-race", "tablet");
    next_step();
    ensure_step_time(15);
    let code = oathtool(&tablet, 0);
    let accepted = std::thread::scope(|s| {
        let runs: Vec<_> = (0..100)
            .map(|_| s.spawn(|| d.cli(&["verify", "tf-race", &code]).code()))
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap())
            .inspect(|c| assert!(matches!(c, 0 | 1), "exit {c}"))
            .filter(|c| *c == 0)
            .count()
    });
    assert_eq!(accepted, 1, "one code accepted {accepted} times");
    assert_eq!(
        d.cli(&["verify", "tf-race", &oathtool(&phone.secret, 0)])
            .code(),
        0
    );
}

#[test]
fn a_removed_authenticator_is_refused_and_a_sixth_is_not_added() {
    let d = Daemon::start("allow", "");
    let phone = d.enroll("tf-rm");
    let tablet = add(&d, "tf-rm", "tablet");
    for label in ["c", "d", "e"] {
        add(&d, "tf-rm", label);
    }
    let sixth = d.cli(&["enroll", "--user", "tf-rm", "--name", "f", "--json"]);
    assert_eq!(sixth.code(), 2, "{}", sixth.stdout());
    assert!(
        sixth.stdout().contains("max_authenticators"),
        "{}",
        sixth.stdout()
    );
    let removed = d.cli(&["remove-authenticator", "tablet", "--user", "tf-rm"]);
    assert_eq!(removed.code(), 0, "{}", removed.stderr());
    let mut left = authenticators(&d, "tf-rm");
    left.sort();
    assert_eq!(left, ["c", "d", "default", "e"]);
    next_step();
    assert_eq!(d.cli(&["verify", "tf-rm", &oathtool(&tablet, 0)]).code(), 1);
    assert_eq!(
        d.cli(&["verify", "tf-rm", &oathtool(&phone.secret, 0)])
            .code(),
        0
    );
    // The last one goes only with `disable`.
    for label in ["c", "d", "e"] {
        assert_eq!(
            d.cli(&["remove-authenticator", label, "--user", "tf-rm"])
                .code(),
            0
        );
    }
    let last = d.cli(&["remove-authenticator", "default", "--user", "tf-rm"]);
    assert_eq!(last.code(), 2);
    assert!(
        last.stderr().contains("twofold disable"),
        "{}",
        last.stderr()
    );
}

/// A database as the previous schema left it (tests/testdata/schema-9.sql, written by twofold
/// before authenticators had names): the new twofoldd migrates it at start, and the enrollment
/// is its authenticator `default`, logging in through pamtester with oathtool's code, with its
/// window, its backup codes (the imported scratch codes) and its failure count.
#[test]
fn a_database_of_the_previous_schema_is_migrated_and_logs_in() {
    const KEY: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    let mut d = Daemon::start("deny", "");
    d.stop();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", d.database.display()));
    }
    let dump = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/schema-9.sql");
    let load = std::process::Command::new("sqlite3")
        .arg(&d.database)
        .stdin(std::fs::File::open(&dump).unwrap())
        .output()
        .expect("sqlite3 (Debian package sqlite3; scripts/deps.sh installs it)");
    assert!(load.status.success(), "{load:?}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d.database, std::fs::Permissions::from_mode(0o600)).unwrap();
    d.restart();
    let status = d.cli(&["status", "--user", "tf-legacy", "--json"]).json();
    assert_eq!(status["authenticators"], 1, "{status}");
    assert_eq!(status["backup_codes_left"], 2, "{status}");
    assert_eq!(status["failures"], 2, "{status}");
    let listed = d
        .cli(&["authenticators", "--user", "tf-legacy", "--json"])
        .json();
    assert_eq!(listed["authenticators"][0]["name"], "default", "{listed}");
    let version = std::process::Command::new("sqlite3")
        .arg(&d.database)
        .arg("PRAGMA user_version")
        .output()
        .unwrap();
    let version: u32 = String::from_utf8_lossy(&version.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(version >= 10, "schema {version}");
    let pam = PamService::required(&d.socket, "");
    // The imported window (±2 steps) came along: two steps back is still good.
    ensure_step_time(8);
    let old = oathtool(KEY, -2);
    let run = pam.authenticate("tf-legacy", Some(&format!("{old}\n")));
    assert!(run.success, "{}\n{}", run.text(), d.log());
    let replay = pam.authenticate("tf-legacy", Some(&format!("{old}\n")));
    assert!(!replay.success, "a replayed code: {}", replay.text());
    let now = oathtool(KEY, 0);
    assert!(
        pam.authenticate("tf-legacy", Some(&format!("{now}\n")))
            .success
    );
    let scratch = pam.authenticate("tf-legacy", Some("11112222\n"));
    assert!(scratch.success, "{}", scratch.text());
    assert!(!pam.authenticate("tf-legacy", Some("11112222\n")).success);
    let status = d.cli(&["status", "--user", "tf-legacy", "--json"]).json();
    assert_eq!(status["backup_codes_left"], 1, "{status}");
}
