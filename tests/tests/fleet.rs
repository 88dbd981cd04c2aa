//! Fleets (issue 8): two twofoldd ("host A" and "host B", separate sockets) on one real
//! PostgreSQL on 127.0.0.1, driven through the CLI and through libpam (pamtester under
//! pam_wrapper), with codes from oathtool.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};
use twofold_shared::client::Client;
use twofold_shared::wire::{RequestBody, ResponseBody, SecretText};
use twofold_tests::*;

fn code_of(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Starts a twofoldd on the PostgreSQL store at `url`, which must refuse to start (exit 1);
/// returns what it said.
fn refused_start(url: &str) -> String {
    let dir = open_tempdir();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nstore = \"postgres\"\npostgres_url = {url:?}\n",
            dir.path().join("s")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(twofoldd())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "twofoldd started on {url}: {err}"
    );
    err
}

/// Two daemons started at the same moment (the schema is created once, under a lock).
fn two_hosts(pg: &Postgres, extra: &str) -> (Daemon, Daemon) {
    let config = format!(
        "store = \"postgres\"\npostgres_url = {:?}\n{extra}",
        pg.url()
    );
    std::thread::scope(|s| {
        let a = s.spawn(|| Daemon::start("allow", &config));
        let b = s.spawn(|| Daemon::start("allow", &config));
        (a.join().unwrap(), b.join().unwrap())
    })
}

#[test]
fn enrolled_on_one_host_accepted_on_another_and_each_code_once_fleet_wide() {
    let Some(pg) = Postgres::start("enrolled_on_one_host_accepted_on_another") else {
        return;
    };
    let (a, b) = two_hosts(&pg, "");
    let e = a.enroll("fleetuser");
    // B knows the enrollment made on A.
    let status = b.cli(&["status", "--user", "fleetuser", "--json"]);
    assert_eq!(code_of(&status), 0);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["enrolled"], true, "{s}");
    assert_eq!(s["backup_codes_left"], 12);

    // A login through libpam on B with the next code; the same code on A is a replay.
    ensure_step_time(10);
    let next = oathtool(&e.secret, 1);
    let pam = PamService::required(&b.socket, "");
    let run = pam.authenticate("fleetuser", Some(&format!("{next}\n")));
    assert!(run.success, "{}", run.text());
    assert_eq!(
        code_of(&a.cli(&["verify", "fleetuser", &next])),
        1,
        "replay on A"
    );

    // A backup code spent on A is gone on B.
    assert_eq!(
        code_of(&a.cli(&["verify", "fleetuser", &e.backup_codes[0]])),
        0
    );
    assert_eq!(
        code_of(&b.cli(&["verify", "fleetuser", &e.backup_codes[0]])),
        1
    );

    // One code, 100 submissions split over both hosts at once: exactly one accepted.
    let e2 = a.enroll("racer");
    ensure_step_time(15);
    let code = oathtool(&e2.secret, 1);
    let accepted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let host = if i % 2 == 0 { &a } else { &b };
                let code = code.clone();
                s.spawn(move || code_of(&host.cli(&["verify", "racer", &code])))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            // Replays count as failures: after the free ones, the throttle answers (3).
            .inspect(|c| assert!(matches!(c, 0 | 1 | 3), "exit {c}"))
            .filter(|c| *c == 0)
            .count()
    });
    assert_eq!(
        accepted, 1,
        "one code accepted {accepted} times across two hosts"
    );
}

#[test]
fn failures_on_two_hosts_add_up_and_an_unlock_on_one_frees_both() {
    let Some(pg) = Postgres::start("failures_on_two_hosts_add_up") else {
        return;
    };
    let (a, b) = two_hosts(&pg, "[throttle]\nfree_failures = 4\nlockout_after = 6");
    let e = a.enroll("guessed");
    let wrong = wrong_code(&e.secret);
    // Four free failures, two on each host; then both hosts make the user wait.
    for host in [&a, &b, &a, &b] {
        assert_eq!(code_of(&host.cli(&["verify", "guessed", &wrong])), 1);
    }
    assert_eq!(
        code_of(&b.cli(&["verify", "guessed", &wrong])),
        3,
        "throttled on B"
    );
    assert_eq!(
        code_of(&a.cli(&["verify", "guessed", &wrong])),
        3,
        "throttled on A"
    );
    let status = b.cli(&["status", "--user", "guessed", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["failures"], 4, "failures on A and B are one count: {s}");
    // Unlock on A frees B at once.
    assert_eq!(code_of(&a.cli(&["unlock", "guessed"])), 0);
    ensure_step_time(8);
    assert_eq!(
        code_of(&b.cli(&["verify", "guessed", &oathtool(&e.secret, 1)])),
        0,
        "B still throttled after an unlock on A"
    );
}

#[test]
fn database_down_fails_closed_on_both_hosts_and_they_recover_on_their_own() {
    let Some(mut pg) = Postgres::start("database_down_fails_closed_on_both_hosts") else {
        return;
    };
    let (a, b) = two_hosts(&pg, "");
    let e = a.enroll("downtime");
    pg.stop();
    ensure_step_time(12);
    let code = oathtool(&e.secret, 1);
    for (name, host) in [("A", &a), ("B", &b)] {
        let t = Instant::now();
        let out = host.cli(&["verify", "downtime", &code]);
        assert_eq!(
            code_of(&out),
            6,
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name} answered after {:?}",
            t.elapsed()
        );
        let pam = PamService::required(&host.socket, "");
        let run = pam.authenticate("downtime", Some(&format!("{code}\n")));
        assert!(
            !run.success,
            "{name}: a login passed with the database down"
        );
        assert!(
            host.log().contains("PostgreSQL"),
            "{name}: no reason in the log: {}",
            host.log()
        );
    }
    pg.restart();
    // The same code (nothing was spent) works, on either host, without restarting them.
    assert_eq!(code_of(&b.cli(&["verify", "downtime", &code])), 0);
    assert_eq!(code_of(&a.cli(&["verify", "downtime", &code])), 1, "replay");
}

#[test]
fn parallel_failures_on_two_hosts_are_all_counted() {
    let Some(pg) = Postgres::start("parallel_failures_on_two_hosts_are_all_counted") else {
        return;
    };
    let (a, b) = two_hosts(&pg, "[throttle]\nfree_failures = 1000\nlockout_after = 0");
    let e = a.enroll("counted");
    let wrong = wrong_code(&e.secret);
    // 320 wrong codes from 32 clients at once, half to each host: each failure is read,
    // counted and written under the user's lock, so none is lost to another host's update.
    let barrier = std::sync::Barrier::new(32);
    std::thread::scope(|s| {
        for i in 0..32 {
            let socket = if i % 2 == 0 { &a.socket } else { &b.socket };
            let (wrong, barrier) = (wrong.clone(), &barrier);
            s.spawn(move || {
                let client = Client::new(socket, Duration::from_secs(10), vec![0, my_uid()]);
                barrier.wait();
                for _ in 0..10 {
                    let reply = client.call(RequestBody::Verify {
                        user: "counted".into(),
                        code: SecretText::new(wrong.clone()),
                        pam: Default::default(),
                        grace_secs: 0,
                    });
                    assert!(matches!(reply, Ok(ResponseBody::Rejected)), "{reply:?}");
                }
            });
        }
    });
    let status = a.cli(&["status", "--user", "counted", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["failures"], 320, "{s}");
}

#[test]
fn migrating_an_sqlite_store_to_postgres_keeps_every_enrollment_code_and_mark() {
    let Some(pg) = Postgres::start("migrating_an_sqlite_store_to_postgres") else {
        return;
    };
    let mut old = Daemon::start("allow", "");
    let e = old.enroll("mover");
    ensure_step_time(12);
    let used = oathtool(&e.secret, 1);
    assert_eq!(code_of(&old.cli(&["verify", "mover", &used])), 0);
    assert_eq!(
        code_of(&old.cli(&["verify", "mover", &e.backup_codes[0]])),
        0
    );
    let wrong = wrong_code(&e.secret);
    for _ in 0..2 {
        assert_eq!(code_of(&old.cli(&["verify", "mover", &wrong])), 1);
    }
    assert_eq!(
        code_of(&old.cli(&["enroll", "--user", "halfway", "--json"])),
        0
    );

    // The configuration gains postgres_url; the store is still this host's SQLite file.
    let config = old.dir.path().join("twofold.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}postgres_url = {:?}\n", pg.url())).unwrap();
    let config = config.to_str().unwrap().to_string();
    let running = old.cli(&["migrate", "--to", "postgres", "--config", &config]);
    assert_eq!(code_of(&running), 2, "migrated under a running daemon");
    assert!(String::from_utf8_lossy(&running.stderr).contains("stop it first"));
    old.stop();
    let out = old.cli(&["migrate", "--to", "postgres", "--config", &config, "--json"]);
    assert_eq!(code_of(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let copied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(copied["copied"]["users"], 1, "{copied}");
    assert_eq!(copied["copied"]["pending"], 1, "{copied}");
    assert_eq!(copied["copied"]["backup_codes"], 11, "{copied}");
    let again = old.cli(&["migrate", "--to", "postgres", "--config", &config]);
    assert_eq!(code_of(&again), 2, "migrated twice into one store");

    // A host on PostgreSQL now finds everything as it was.
    let new = Daemon::start(
        "allow",
        &format!("store = \"postgres\"\npostgres_url = {:?}\n", pg.url()),
    );
    let status = new.cli(&["status", "--user", "mover", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["enrolled"], true, "{s}");
    assert_eq!(s["backup_codes_left"], 11, "{s}");
    assert_eq!(s["failures"], 2, "{s}");
    let h: serde_json::Value =
        serde_json::from_slice(&new.cli(&["status", "--user", "halfway", "--json"]).stdout)
            .unwrap();
    assert_eq!(h["pending"], true, "{h}");
    assert_eq!(
        code_of(&new.cli(&["verify", "mover", &used])),
        1,
        "replay mark lost"
    );
    assert_eq!(
        code_of(&new.cli(&["verify", "mover", &e.backup_codes[0]])),
        1,
        "a spent backup code came back"
    );
    assert_eq!(
        code_of(&new.cli(&["verify", "mover", &e.backup_codes[1]])),
        0
    );
    let audit = new.cli(&["audit", "--user", "mover", "--json"]);
    let a: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert!(
        a["entries"].as_array().unwrap().len() >= 5,
        "the audit trail did not move: {a}"
    );
}

#[test]
fn tls_to_postgres_is_verified_and_required_when_asked() {
    let Some(pg) = Postgres::start_tls("tls_to_postgres_is_verified_and_required_when_asked")
    else {
        return;
    };
    let ca = pg.dir.path().join("ca.pem");
    // sslmode=require with the server's certificate as the root: logins work.
    let tls = format!(
        "store = \"postgres\"\npostgres_url = \"{} sslmode=require sslrootcert={}\"\n",
        pg.url(),
        ca.display()
    );
    let a = Daemon::start("allow", &tls);
    let e = a.enroll("tlsuser");
    ensure_step_time(8);
    assert_eq!(
        code_of(&a.cli(&["verify", "tlsuser", &oathtool(&e.secret, 1)])),
        0
    );
    // The server takes no plain connection (pg_hba.conf), so that traffic was TLS; and a
    // certificate nobody vouches for (the public roots) is refused: twofoldd does not start.
    for (why, url) in [
        ("plain", format!("{} sslmode=disable", pg.url())),
        ("unverified", format!("{} sslmode=require", pg.url())),
    ] {
        let err = refused_start(&url);
        assert!(
            err.contains("cannot open the PostgreSQL store"),
            "{why}: {err}"
        );
    }
}

#[test]
fn secrets_sealed_with_one_key_every_host_shares() {
    let Some(pg) = Postgres::start("secrets_sealed_with_one_key_every_host_shares") else {
        return;
    };
    let keydir = open_tempdir();
    std::fs::set_permissions(
        keydir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let key = keydir.path().join("seal.key");
    let extra = format!("seal_key_file = {key:?}\n");
    let init_config = keydir.path().join("init.toml");
    std::fs::write(&init_config, &extra).unwrap();
    let init = std::process::Command::new(twofold_cli())
        .args(["seal", "init", "--config"])
        .arg(&init_config)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (a, b) = two_hosts(&pg, &extra);
    let e = a.enroll("sealed");
    ensure_step_time(8);
    assert_eq!(
        code_of(&b.cli(&["verify", "sealed", &oathtool(&e.secret, 1)])),
        0
    );
    // What PostgreSQL holds is sealed (magic "TFS1"), not the secret.
    let stored = std::process::Command::new(pg.bin().join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "twofold",
        ])
        .args(["-d", "postgres", "-Atc"])
        .arg("SELECT encode(secret, 'hex') FROM users WHERE name = 'sealed'")
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&stored.stdout).trim().to_string();
    assert!(hex.starts_with("54465331"), "not sealed: {hex}");
    // A host without the key refuses to start.
    let err = refused_start(&pg.url());
    assert!(err.contains("sealed"), "{err}");
}

#[test]
fn a_database_that_stops_answering_fails_logins_closed_in_time_and_recovers() {
    let Some(pg) = Postgres::start("a_database_that_stops_answering") else {
        return;
    };
    let (a, _b) = two_hosts(&pg, "");
    let e = a.enroll("slowpoke");
    let pam = PamService::required(&a.socket, ""); // timeout=3
    ensure_step_time(12);
    let code = oathtool(&e.secret, 1);
    pg.freeze(true);
    for attempt in 0..3 {
        let t = Instant::now();
        let run = pam.authenticate("slowpoke", Some(&format!("{code}\n")));
        let took = t.elapsed();
        assert!(
            !run.success,
            "attempt {attempt}: a login passed with the database frozen"
        );
        assert!(
            took < Duration::from_secs(8),
            "attempt {attempt} took {took:?}"
        );
    }
    pg.freeze(false);
    // Once it answers again, logins work without a restart (a backup code: the frozen
    // attempts may have spent the TOTP code when their queries finally ran).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = pam.authenticate("slowpoke", Some(&format!("{}\n", e.backup_codes[0])));
        if run.success {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", run.text());
        std::thread::sleep(Duration::from_millis(500));
    }
}
