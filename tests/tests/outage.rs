//! Logins through a database outage (issue 18, `offline = "cached"`): two twofoldd on one real
//! PostgreSQL, each with its sealed copy of the fleet. The database stopped: both hosts decide
//! alone, a replay on the same host is refused, the stricter offline lockout applies. The
//! database back: each host merges what it decided before deciding online again (the code used
//! offline on A is refused on B, failures add up, the backup code is spent everywhere). A host
//! cut off alone (a relay in front of the database, cut) while its user is removed on the other
//! refuses that user once it reconnects. Codes from oathtool.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};
use twofold_shared::client::Client;
use twofold_shared::wire::{RequestBody, ResponseBody, SecretText};
use twofold_tests::*;

/// RFC 4226's test key in base32: every counter-based user here has it (marks are per user).
const KEY: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

fn hotp(counter: u64) -> String {
    let out = std::process::Command::new("oathtool")
        .args(["--hotp", "-b", "-c", &counter.to_string(), KEY])
        .output()
        .unwrap();
    assert!(out.status.success(), "oathtool failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn verify(host: &Daemon, user: &str, code: &str) -> ResponseBody {
    Client::new(&host.socket, Duration::from_secs(10), vec![0])
        .call(RequestBody::Verify {
            user: user.into(),
            code: SecretText::new(code.to_string()),
            pam: Default::default(),
            grace_secs: 0,
        })
        .unwrap()
}

fn accepted(r: &ResponseBody) -> bool {
    matches!(r, ResponseBody::Accepted { .. })
}

/// One metric's value in the host's metrics text.
fn metric(host: &Daemon, name: &str) -> Option<u64> {
    let out = host.cli(&["metrics"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    out.stdout()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (at most 20 s) until `what` holds for the host.
fn wait_until(host: &Daemon, what: &str, holds: impl Fn(&Daemon) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !holds(host) {
        assert!(
            Instant::now() < deadline,
            "{what}: not after 20 s\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn copied(host: &Daemon, users: u64) {
    wait_until(host, "the copy refreshed", |h| {
        metric(h, "twofold_offline_copy_users") == Some(users)
    });
}

fn online(host: &Daemon) {
    wait_until(host, "back online", |h| {
        metric(h, "twofold_offline") == Some(0)
    });
}

fn import_hotp(host: &Daemon, user: &str) {
    let uri = format!("otpauth://hotp/fleet:{user}?secret={KEY}&counter=0\n");
    let run = host.cli_as(None, &["import", "otpauth", "--user", user], Some(&uri));
    assert_eq!(run.code(), 0, "{}", run.stderr());
}

/// A host's configuration: outage mode on `url`, sealed with `key`, the copy refreshed every
/// `refresh` seconds.
fn host_config(url: &str, key: &Path, refresh: u64) -> String {
    format!(
        "store = \"postgres\"\npostgres_url = {url:?}\nseal_key_file = {key:?}\n\
         offline = \"cached\"\noffline_refresh = {refresh}\noffline_backup_codes = true\n\
         [throttle]\nfree_failures = 100\nlockout_after = 50\n"
    )
}

/// A fleet schema sealed with one key (`.0/seal.key`), and two hosts in outage mode, each on
/// its own `urls` entry, their copies refreshed every second.
fn two_hosts(urls: [&str; 2]) -> (tempfile::TempDir, Daemon, Daemon) {
    let keydir = private_dir();
    let key = keydir.path().join("seal.key");
    let init = keydir.path().join("init.toml");
    std::fs::write(&init, host_config(urls[0], &key, 1)).unwrap();
    twofold_ok(&["seal", "init", "--config"], &init);
    twofold_ok(&["fleet", "init", "--config"], &init);
    let a = Daemon::start("allow", &host_config(urls[0], &key, 1));
    let b = Daemon::start("allow", &host_config(urls[1], &key, 1));
    (keydir, a, b)
}

#[test]
fn logins_go_on_through_an_outage_and_are_merged_when_the_database_is_back() {
    let Some(mut pg) = Postgres::start("outage::merged") else {
        return;
    };
    let url = pg.socket_url();
    let (keydir, mut a, b) = two_hosts([&url, &url]);
    for user in ["ou-ann", "ou-bob", "ou-guess"] {
        import_hotp(&a, user);
    }
    let carl = a.enroll("ou-carl");
    for host in [&a, &b] {
        copied(host, 4);
    }
    // From now on A's copy is not refreshed: what it knows of A's own logins, it was told.
    a.reconfigure(
        "allow",
        &host_config(&url, &keydir.path().join("seal.key"), 86_400),
    );
    // Accepted online on A just before the outage: the copy has it before deciding anything.
    assert!(accepted(&verify(&a, "ou-ann", &hotp(1))));
    pg.stop();

    let started = Instant::now();
    assert!(
        matches!(verify(&a, "ou-ann", &hotp(1)), ResponseBody::Rejected),
        "a code accepted online accepted again offline on the same host"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(metric(&a, "twofold_offline"), Some(1));
    assert!(accepted(&verify(&a, "ou-ann", &hotp(2))), "A offline");
    assert!(
        matches!(verify(&a, "ou-ann", &hotp(2)), ResponseBody::Rejected),
        "counter 2 accepted twice on A"
    );
    assert!(accepted(&verify(&b, "ou-bob", &hotp(1))), "B offline");
    // A real login through libpam, offline: the module cannot tell.
    let pam = PamService::required(&b.socket, "");
    let run = pam.authenticate("ou-bob", Some(&format!("{}\n", hotp(2))));
    assert!(run.success, "{}", run.text());
    let run = pam.authenticate("ou-bob", Some(&format!("{}\n", hotp(2))));
    assert!(!run.success, "a replay through PAM: {}", run.text());
    // The offline lockout (10) comes before the configured one (50).
    for i in 1..=10 {
        let r = verify(&a, "ou-guess", "000000");
        assert!(matches!(r, ResponseBody::Rejected), "failure {i}: {r:?}");
    }
    assert!(matches!(
        verify(&a, "ou-guess", &hotp(1)),
        ResponseBody::Locked
    ));
    for _ in 0..3 {
        assert!(matches!(
            verify(&b, "ou-guess", "000000"),
            ResponseBody::Rejected
        ));
    }
    let backup = &carl.backup_codes[0];
    assert!(
        accepted(&verify(&a, "ou-carl", backup)),
        "backup code offline"
    );
    assert!(
        matches!(verify(&a, "ou-carl", backup), ResponseBody::Rejected),
        "a backup code spent twice offline"
    );
    let text = a.cli(&["metrics"]).stdout();
    assert!(text.contains("twofold_offline_logins_total 16"), "{text}");
    let check = run_with_stdin(
        std::process::Command::new("promtool").args(["check", "metrics"]),
        Some(&text),
    );
    assert!(check.status.success(), "promtool: {check:?}");
    let doctor = a.cli(&["--json", "doctor", "--config", a.config.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout()).unwrap();
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "offline")
        .cloned()
        .unwrap();
    assert_eq!(finding["level"], "warn", "{finding}");
    assert!(
        finding["message"]
            .as_str()
            .unwrap()
            .contains("decides logins alone"),
        "{finding}"
    );

    // A reboot while the database is down: twofoldd starts offline, from the copy, which
    // still holds what it decided before (not merged yet).
    a.restart();
    assert!(a.log().contains("does not answer at start"), "{}", a.log());
    assert!(matches!(
        verify(&a, "ou-ann", &hotp(2)),
        ResponseBody::Rejected
    ));
    assert!(
        accepted(&verify(&a, "ou-ann", &hotp(3))),
        "A offline after a restart"
    );

    pg.restart();
    for host in [&a, &b] {
        online(host);
    }
    assert!(
        a.log().contains("offline decision(s) merged"),
        "{}",
        a.log()
    );
    // What each host decided alone, the fleet now knows.
    assert!(matches!(
        verify(&b, "ou-ann", &hotp(2)),
        ResponseBody::Rejected
    ));
    assert!(matches!(
        verify(&a, "ou-bob", &hotp(1)),
        ResponseBody::Rejected
    ));
    assert!(accepted(&verify(&b, "ou-ann", &hotp(4))));
    let status = b.cli(&["status", "--user", "ou-guess", "--json"]).json();
    assert_eq!(status["failures"], 13, "10 on A, 3 on B: {status}");
    assert!(
        matches!(verify(&b, "ou-carl", backup), ResponseBody::Rejected),
        "the backup code spent on A offline accepted on B"
    );
    let status = b.cli(&["status", "--user", "ou-carl", "--json"]).json();
    assert_eq!(
        status["backup_codes_left"].as_u64(),
        Some(carl.backup_codes.len() as u64 - 1),
        "{status}"
    );
    // Audited as offline, in the fleet's trail.
    let audit = b.cli(&["audit", "--user", "ou-ann"]);
    assert!(
        audit.stdout().contains("offline-login"),
        "{}",
        audit.stdout()
    );
    assert!(
        audit.stdout().contains("decided offline on"),
        "{}",
        audit.stdout()
    );
}

#[test]
fn a_user_removed_while_a_host_was_cut_off_is_refused_there_once_it_reconnects() {
    let Some(pg) = Postgres::start_tls("outage::revoked") else {
        return;
    };
    let relay = Relay::to(pg.port);
    let through_relay = pg.tls_url().replace(
        &format!("port={}", pg.port),
        &format!("port={}", relay.port),
    );
    let (_key, a, b) = two_hosts([&through_relay, &pg.tls_url()]);
    import_hotp(&a, "ou-dan");
    import_hotp(&a, "ou-eve");
    for host in [&a, &b] {
        copied(host, 2);
    }
    relay.cut();
    // A alone is cut off: it decides alone (the bound: what B does meanwhile, it cannot know).
    assert!(accepted(&verify(&a, "ou-dan", &hotp(1))), "A cut off");
    assert_eq!(
        metric(&a, "twofold_offline"),
        Some(1),
        "A decided it online"
    );
    assert!(accepted(&verify(&b, "ou-eve", &hotp(1))), "B online");
    assert_eq!(metric(&b, "twofold_offline"), Some(0));
    let removed = b.cli(&["disable", "--user", "ou-dan"]);
    assert_eq!(removed.code(), 0, "{}", removed.stderr());

    relay.mend();
    online(&a);
    let r = verify(&a, "ou-dan", &hotp(2));
    assert!(
        !accepted(&r),
        "a removed user accepted after the reconnect: {r:?}"
    );
    copied(&a, 1);
    // The merge did not bring the enrollment back.
    let list = b.cli(&["list", "--json"]).stdout();
    assert!(!list.contains("ou-dan"), "{list}");
    let audit = b.cli(&["audit", "--user", "ou-dan"]);
    assert!(
        audit.stdout().contains("decided offline on"),
        "{}",
        audit.stdout()
    );
}

#[test]
fn a_merge_whose_commit_answer_is_lost_is_not_merged_twice() {
    let Some(mut pg) = Postgres::start("outage::answer_lost") else {
        return;
    };
    let relay = CommitRelay::to(&pg.dir.path().join("sock"), pg.port);
    let through_relay = format!(
        "host={} port={} user=twofold dbname=postgres",
        relay.dir.path().display(),
        pg.port
    );
    let (_key, a, b) = two_hosts([&through_relay, &pg.socket_url()]);
    import_hotp(&a, "ou-fay");
    for host in [&a, &b] {
        copied(host, 1);
    }
    pg.stop();
    assert!(accepted(&verify(&a, "ou-fay", &hotp(1))), "A offline");
    for _ in 0..3 {
        assert!(matches!(
            verify(&a, "ou-fay", "000000"),
            ResponseBody::Rejected
        ));
    }
    // The database comes back, and A's first merge commits there but its answer is lost: A
    // cannot tell, stays offline, and sends the same merge again.
    relay.lose_next_commit_answer();
    pg.restart();
    online(&a);
    assert_eq!(relay.lost(), 1, "no commit answer was lost");
    assert!(a.log().contains("stays offline"), "{}", a.log());
    assert!(
        a.log().contains("offline decision(s) merged"),
        "{}",
        a.log()
    );
    let status = b.cli(&["status", "--user", "ou-fay", "--json"]).json();
    assert_eq!(status["failures"], 3, "failures merged twice: {status}");
    let audit = b.cli(&["audit", "--user", "ou-fay"]).stdout();
    assert_eq!(
        audit.matches("decided offline on").count(),
        4,
        "offline decisions audited twice:\n{audit}"
    );
    assert!(matches!(
        verify(&b, "ou-fay", &hotp(1)),
        ResponseBody::Rejected
    ));
    assert!(accepted(&verify(&b, "ou-fay", &hotp(2))));
}

#[test]
fn what_this_host_changes_is_in_its_copy_before_the_next_refresh() {
    let Some(pg) = Postgres::start_tls("outage::followed") else {
        return;
    };
    let relay = Relay::to(pg.port);
    let through_relay = pg.tls_url().replace(
        &format!("port={}", pg.port),
        &format!("port={}", relay.port),
    );
    let (keydir, a, _b) = two_hosts([&through_relay, &pg.tls_url()]);
    import_hotp(&a, "ou-gil");
    import_hotp(&a, "ou-hal");
    let ivy = a.enroll("ou-ivy");
    copied(&a, 3);
    // From now on A's copy is refreshed once a day: only what follows a change keeps it current.
    a.reconfigure(
        "allow",
        &host_config(&through_relay, &keydir.path().join("seal.key"), 86_400),
    );
    // Online on A: gil's token resynchronised (counters 3 and 4 spent), hal's enrollment
    // removed, ivy's backup codes replaced.
    let resync = a.cli(&["resync", "ou-gil", &hotp(3), &hotp(4)]);
    assert_eq!(resync.code(), 0, "{}", resync.stderr());
    let removed = a.cli(&["disable", "--user", "ou-hal"]);
    assert_eq!(removed.code(), 0, "{}", removed.stderr());
    let codes = a
        .cli(&["backup-codes", "--user", "ou-ivy", "--json"])
        .json();
    let fresh = codes["backup_codes"][0].as_str().unwrap().to_string();
    relay.cut();
    assert!(
        matches!(verify(&a, "ou-gil", &hotp(4)), ResponseBody::Rejected),
        "a code spent by the resync accepted offline"
    );
    assert_eq!(metric(&a, "twofold_offline"), Some(1), "A decided online");
    assert!(accepted(&verify(&a, "ou-gil", &hotp(5))));
    let r = verify(&a, "ou-hal", &hotp(1));
    assert!(
        !accepted(&r),
        "a removed enrollment accepted offline: {r:?}"
    );
    assert!(
        !accepted(&verify(&a, "ou-ivy", &ivy.backup_codes[0])),
        "a replaced backup code accepted offline"
    );
    assert!(
        accepted(&verify(&a, "ou-ivy", &fresh)),
        "the new backup code"
    );
}
