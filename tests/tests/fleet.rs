//! Fleets (issue 8): two twofoldd ("host A" and "host B", separate sockets) on one real
//! PostgreSQL (over its Unix socket, or over TCP with verified TLS), driven through the CLI and
//! through libpam (pamtester under pam_wrapper), with codes from oathtool. The schema is made
//! by `twofold fleet init`, never by a daemon; plain TCP and cleartext passwords are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
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

/// `twofold fleet init` with a configuration of `postgres_url = url` and `extra`.
fn fleet_init(url: &str, extra: &str) -> std::process::Output {
    let dir = open_tempdir();
    let config = dir.path().join("init.toml");
    std::fs::write(
        &config,
        format!("store = \"postgres\"\npostgres_url = {url:?}\n{extra}\n"),
    )
    .unwrap();
    std::process::Command::new(twofold_cli())
        .args(["fleet", "init", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

/// `fleet_init`, which must succeed.
fn init_fleet(url: &str, extra: &str) {
    let out = fleet_init(url, extra);
    assert_eq!(
        code_of(&out),
        0,
        "fleet init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The schema made by `twofold fleet init`, then two daemons started at the same moment
/// (schema upgrades and sealing happen once, under a lock).
fn two_hosts(url: &str, extra: &str) -> (Daemon, Daemon) {
    init_fleet(url, extra);
    let config = format!("store = \"postgres\"\npostgres_url = {url:?}\n{extra}");
    std::thread::scope(|s| {
        let a = s.spawn(|| Daemon::start("allow", &config));
        let b = s.spawn(|| Daemon::start("allow", &config));
        (a.join().unwrap(), b.join().unwrap())
    })
}

#[test]
fn enrolled_on_one_host_accepted_on_another_and_each_code_once_fleet_wide() {
    let Some(pg) = Postgres::start_tls("enrolled_on_one_host_accepted_on_another") else {
        return;
    };
    let (a, b) = two_hosts(&pg.tls_url(), "");
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
    let (a, b) = two_hosts(
        &pg.socket_url(),
        "[throttle]\nfree_failures = 4\nlockout_after = 6",
    );
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
    let (a, b) = two_hosts(&pg.socket_url(), "");
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
    let (a, b) = two_hosts(
        &pg.socket_url(),
        "[throttle]\nfree_failures = 1000\nlockout_after = 0",
    );
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
    // Mail through a stand-in sendmail, so that the store holds an address too (one waiting
    // for its code: its new-address column is NULL, which must copy as text).
    let spool = open_tempdir();
    let sendmail = spool.path().join("sendmail");
    std::fs::write(&sendmail, "#!/bin/sh\ncat > /dev/null\n").unwrap();
    std::fs::set_permissions(&sendmail, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut old = Daemon::start(
        "allow",
        &format!(
            "email_codes = true\nemail = {{ transport = \"sendmail\", sendmail = {sendmail:?} }}"
        ),
    );
    let e = old.enroll("mover");
    let set = old.cli(&["email", "set", "root@example.org", "--user", "root"]);
    assert_eq!(code_of(&set), 0, "{}", String::from_utf8_lossy(&set.stderr));
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
    std::fs::write(
        &config,
        format!("{text}postgres_url = {:?}\n", pg.socket_url()),
    )
    .unwrap();
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
    assert_eq!(copied["copied"]["emails"], 1, "{copied}");
    assert_eq!(copied["copied"]["backup_codes"], 11, "{copied}");
    let again = old.cli(&["migrate", "--to", "postgres", "--config", &config]);
    assert_eq!(code_of(&again), 2, "migrated twice into one store");

    // A host on PostgreSQL now finds everything as it was.
    let new = Daemon::start(
        "allow",
        &format!(
            "store = \"postgres\"\npostgres_url = {:?}\n",
            pg.socket_url()
        ),
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
    let url = format!("{} sslmode=require sslrootcert={}", pg.url(), ca.display());
    init_fleet(&url, "");
    let a = Daemon::start(
        "allow",
        &format!("store = \"postgres\"\npostgres_url = {url:?}\n"),
    );
    let e = a.enroll("tlsuser");
    ensure_step_time(8);
    assert_eq!(
        code_of(&a.cli(&["verify", "tlsuser", &oathtool(&e.secret, 1)])),
        0
    );
    // The server takes no plain connection (pg_hba.conf), so that traffic was TLS; and a
    // certificate nobody vouches for (the public roots), or one that names another host
    // (require means verify-full to twofold), is refused: twofoldd does not start.
    for (why, url, says) in [
        (
            "unverified",
            format!("{} sslmode=require", pg.url()),
            "certificate",
        ),
        (
            "another name",
            format!(
                "host=db.invalid hostaddr=127.0.0.1 port={} user=twofold dbname=postgres \
                 sslmode=require sslrootcert={}",
                pg.port,
                ca.display()
            ),
            "certificate",
        ),
    ] {
        let err = refused_start(&url);
        assert!(
            err.contains("cannot open the PostgreSQL store") && err.contains(says),
            "{why}: {err}"
        );
    }
}

#[test]
fn secrets_sealed_with_one_key_every_host_shares() {
    let Some(pg) = Postgres::start("secrets_sealed_with_one_key_every_host_shares") else {
        return;
    };
    let keydir = private_dir();
    let key = keydir.path().join("seal.key");
    let extra = format!("seal_key_file = {key:?}\n");
    let init_config = keydir.path().join("init.toml");
    std::fs::write(&init_config, &extra).unwrap();
    twofold_ok(&["seal", "init", "--config"], &init_config);
    let (a, b) = two_hosts(&pg.socket_url(), &extra);
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
        .arg("SELECT encode(secret, 'hex') FROM authenticators WHERE name = 'sealed'")
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&stored.stdout).trim().to_string();
    assert!(hex.starts_with("54465331"), "not sealed: {hex}");
    // A host without the key refuses to start.
    let err = refused_start(&pg.socket_url());
    assert!(err.contains("sealed"), "{err}");
}

#[test]
fn a_database_that_stops_answering_fails_logins_closed_in_time_and_recovers() {
    let Some(pg) = Postgres::start("a_database_that_stops_answering") else {
        return;
    };
    let (a, _b) = two_hosts(&pg.socket_url(), "");
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

/// A root-owned 0600 file holding `password`, in a directory of its own.
fn password_file(password: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = open_tempdir();
    let file = dir.path().join("pg-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (dir, file)
}

#[test]
fn plain_tcp_to_postgres_is_refused_whatever_sslmode_says() {
    // A server that answers plain TCP (trust), as a man in the middle who strips TLS would:
    // with the schema in place, so that only the transport is at stake.
    let Some(pg) = Postgres::start("plain_tcp_to_postgres_is_refused") else {
        return;
    };
    init_fleet(&pg.socket_url(), "");
    for url in [
        pg.url(),
        format!("{} sslmode=prefer", pg.url()),
        format!("{} sslmode=disable", pg.url()),
        format!("postgresql://twofold@127.0.0.1:{}/postgres", pg.port),
    ] {
        let err = refused_start(&url);
        assert!(
            err.contains("over TCP") && err.contains("sslmode=verify-full"),
            "{url}: {err}"
        );
        let init = fleet_init(&url, "");
        assert_eq!(code_of(&init), 2, "fleet init over {url}");
    }
}

#[test]
fn a_unix_socket_host_works_without_tls_end_to_end() {
    let Some(pg) = Postgres::start("a_unix_socket_host_works_without_tls_end_to_end") else {
        return;
    };
    // sslmode does not apply to a socket (as with libpq): even verify-full connects.
    let url = format!("{} sslmode=verify-full", pg.socket_url());
    init_fleet(&url, "");
    let a = Daemon::start(
        "allow",
        &format!("store = \"postgres\"\npostgres_url = {url:?}\n"),
    );
    let e = a.enroll("socketuser");
    ensure_step_time(10);
    let code = oathtool(&e.secret, 1);
    let pam = PamService::required(&a.socket, "");
    let run = pam.authenticate("socketuser", Some(&format!("{code}\n")));
    assert!(run.success, "{}", run.text());
    assert_eq!(
        code_of(&a.cli(&["verify", "socketuser", &code])),
        1,
        "replay"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM users WHERE name = 'socketuser'"
        )
        .trim(),
        "1"
    );
}

#[test]
fn an_empty_database_is_refused_until_fleet_init_which_runs_once() {
    let Some(pg) = Postgres::start("an_empty_database_is_refused_until_fleet_init") else {
        return;
    };
    let url = pg.socket_url();
    let err = refused_start(&url);
    assert!(
        err.contains("no twofold schema") && err.contains("twofold fleet init"),
        "{err}"
    );
    // The daemon created nothing.
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .trim(),
        "0"
    );
    init_fleet(&url, "");
    let again = fleet_init(&url, "");
    assert_eq!(code_of(&again), 2, "fleet init ran twice");
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(why.contains("already holds twofold tables"), "{why}");
    // A database with some of twofold's tables (a half-made or foreign schema) is refused too.
    pg.psql("postgres", "CREATE DATABASE partial");
    pg.psql("partial", "CREATE TABLE users (name TEXT)");
    let partial = url.replace("dbname=postgres", "dbname=partial");
    assert_eq!(code_of(&fleet_init(&partial, "")), 2);
    let err = refused_start(&partial);
    assert!(err.contains("twofold fleet init"), "{err}");
    // After fleet init, a daemon starts and works.
    let a = Daemon::start(
        "allow",
        &format!("store = \"postgres\"\npostgres_url = {url:?}\n"),
    );
    let e = a.enroll("initialised");
    ensure_step_time(8);
    assert_eq!(
        code_of(&a.cli(&["verify", "initialised", &oathtool(&e.secret, 1)])),
        0
    );
    // Not as root: refused before anything is read.
    let nobody = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            "--",
        ])
        .arg(twofold_cli())
        .args(["fleet", "init", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(code_of(&nobody), 2);
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("must run as root"));
}

#[test]
fn a_password_goes_only_to_scram_with_channel_binding_never_in_cleartext() {
    let Some(pg) = Postgres::start_tls("a_password_goes_only_to_scram_with_channel_binding") else {
        return;
    };
    pg.psql(
        "postgres",
        "SET password_encryption = 'scram-sha-256'; ALTER ROLE twofold PASSWORD 'fleet-pw'",
    );
    let url = pg.tls_url();
    let (_keep, file) = password_file("fleet-pw");
    let extra = format!("postgres_password_file = {file:?}\n");
    let config = format!("store = \"postgres\"\npostgres_url = {url:?}\n{extra}");
    // SCRAM over verified TLS (SCRAM-SHA-256-PLUS, bound to the TLS session): it works.
    pg.set_hba(
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n\
         host all all 127.0.0.1/32 reject\n",
    );
    init_fleet(&url, &extra);
    let a = Daemon::start("allow", &config);
    let e = a.enroll("scramuser");
    ensure_step_time(8);
    assert_eq!(
        code_of(&a.cli(&["verify", "scramuser", &oathtool(&e.secret, 1)])),
        0
    );
    // A server that asks for the password in cleartext (pg_hba "password", as a forged
    // server would) gets nothing: twofoldd refuses before sending it.
    pg.set_hba(
        "local all all trust\nhostssl all all 127.0.0.1/32 password\n\
         host all all 127.0.0.1/32 reject\n",
    );
    let err = start_refused_with(&config);
    assert!(
        err.contains("channel binding") && err.contains("scram-sha-256"),
        "{err}"
    );
    assert!(!err.contains("fleet-pw"), "the password in an error: {err}");
    let log = std::fs::read_to_string(pg.dir.path().join("postgres.log")).unwrap();
    assert!(
        !log.contains("password authentication failed"),
        "a password reached the server: {log}"
    );
    // Finding 9: the password file through a symlink, or owned by another user, is refused.
    pg.set_hba(
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n\
         host all all 127.0.0.1/32 reject\n",
    );
    let link = file.with_file_name("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let linked = format!(
        "{}\npostgres_password_file = {link:?}\n",
        config.replace(&extra, "")
    );
    let err = start_refused_with(&linked);
    assert!(err.contains("not a regular file"), "{err}");
    nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let err = start_refused_with(&config);
    assert!(err.contains("must be owned by root"), "{err}");
}

/// Starts a twofoldd on `config` (a whole configuration but the socket), which must refuse to
/// start (exit 1); returns what it said.
fn start_refused_with(config: &str) -> String {
    let dir = open_tempdir();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!("socket = {:?}\n{config}", dir.path().join("s")),
    )
    .unwrap();
    let out = std::process::Command::new(twofoldd())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code_of(&out), 1, "twofoldd started: {err}");
    err
}

/// `twofold doctor --json` on a configuration; its findings of one check.
fn doctor_findings(config: &str, check: &str) -> Vec<serde_json::Value> {
    let dir = open_tempdir();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!("socket = {:?}\n{config}", dir.path().join("s")),
    )
    .unwrap();
    let out = std::process::Command::new(twofold_cli())
        .args(["--json", "doctor", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .cloned()
        .collect()
}

#[test]
fn doctor_reports_how_the_postgres_store_is_reached() {
    let (_keep, file) = password_file("pw");
    let pg = |url: &str| {
        format!("store = \"postgres\"\npostgres_url = {url:?}\npostgres_password_file = {file:?}\n")
    };
    let tls = doctor_findings(
        &pg("host=db.example.org sslmode=verify-full sslrootcert=/etc/twofold/pg-ca.pem"),
        "postgres",
    );
    assert_eq!(tls.len(), 2, "{tls:?}");
    assert!(tls.iter().all(|f| f["level"] == "ok"), "{tls:?}");
    let said = tls[0]["message"].as_str().unwrap();
    assert!(
        said.contains("TLS required (sslmode=verify-full)") && said.contains("pg-ca.pem"),
        "{said}"
    );
    let socket = doctor_findings(&pg("host=/var/run/postgresql"), "postgres");
    assert_eq!(socket[0]["level"], "ok");
    assert!(socket[0]["message"]
        .as_str()
        .unwrap()
        .contains("Unix socket"));
    for plain in ["host=db.example.org", "host=db.example.org sslmode=prefer"] {
        let f = doctor_findings(&pg(plain), "postgres");
        assert_eq!(f[0]["level"], "fail", "{plain}: {f:?}");
        assert!(f[0]["fix"]
            .as_str()
            .unwrap()
            .contains("sslmode=verify-full"));
    }
    // No local database file to warn about with the PostgreSQL store.
    assert!(doctor_findings(&pg("host=/var/run/postgresql"), "database").is_empty());
    // The password file as twofoldd judges it.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let open = doctor_findings(&pg("host=/var/run/postgresql"), "postgres");
    assert_eq!(open[1]["level"], "fail", "{open:?}");
}

/// One person may have another uid on every host (accounts made per host, winbind's idmap):
/// on the shared store an enrollment is keyed by the account's name alone, so a uid recorded
/// (by an older version, or a row made by hand) refuses nobody, and another account enrolled
/// with the same uid elsewhere cannot lock this one out.
#[test]
fn uids_are_not_bound_on_the_shared_store() {
    let Some(pg) = Postgres::start("uids_are_not_bound_on_the_shared_store") else {
        return;
    };
    let url = pg.socket_url();
    init_fleet(&url, "");
    let a = Daemon::start(
        "allow",
        &format!("store = \"postgres\"\npostgres_url = {url:?}\n"),
    );
    let e = a.enroll("root");
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM users WHERE uid IS NULL")
            .trim(),
        "1",
        "no uid recorded on the shared store"
    );
    pg.psql(
        "postgres",
        "UPDATE users SET uid = 4242 WHERE name = 'root';
         INSERT INTO users SELECT 'mallory', enrolled_at, last_success, backup_salt, 0
           FROM users WHERE name = 'root';
         INSERT INTO authenticators SELECT 'mallory', label, secret, algorithm, digits, period,
           added_at, last_step, last_used, \"window\" FROM authenticators WHERE name = 'root';",
    );
    ensure_step_time(10);
    let code = oathtool(&e.secret, 1);
    let pam = PamService::required(&a.socket, "");
    let run = pam.authenticate("root", Some(&format!("{code}\n")));
    assert!(run.success, "{}", run.text());
}

/// Enrollment at the login prompt across a fleet: invited on host A, enrolled in a login on
/// host B, known to both; a helpdesk code issued on A is spent once, on B.
#[test]
fn an_invitation_on_one_host_enrolls_at_a_login_on_another() {
    let Some(pg) = Postgres::start("an_invitation_on_one_host_enrolls_at_a_login_on_another")
    else {
        return;
    };
    let (a, b) = two_hosts(&pg.socket_url(), "");
    let user = TestUser::create(&unique("tf-flinv"));
    assert_eq!(code_of(&a.cli(&["invite", &user.name])), 0);
    let on_b = PamService::required(&b.socket, "");
    let term = Terminal::start(&on_b.command_line(&user.name));
    let screen = term.wait_for("-digit code from the app", Duration::from_secs(20));
    let uri = zbar_decode(&qr_blocks(&screen)[0], true).expect("a QR code on B's prompt");
    ensure_step_time(10);
    term.type_line(&oathtool(&uri_secret(&uri), 0));
    term.wait_for("Press Enter once", Duration::from_secs(20));
    term.type_line("");
    let screen = term.wait_for("tf-terminal-exited-", Duration::from_secs(20));
    assert!(
        screen.contains("successfully authenticated"),
        "{screen}\n{}",
        b.log()
    );
    let s: serde_json::Value =
        serde_json::from_slice(&a.cli(&["status", "--user", &user.name, "--json"]).stdout).unwrap();
    assert!(
        s["enrolled"] == true && s.get("invited_until").is_none(),
        "{s}"
    );
    // A helpdesk code from A, used on B, is gone on A.
    let issued = a.cli(&["bypass", &user.name, "--json"]);
    assert_eq!(code_of(&issued), 0);
    let code = issued.json()["code"].as_str().unwrap().to_string();
    assert_eq!(code_of(&b.cli(&["verify", &user.name, &code])), 0);
    assert_eq!(code_of(&a.cli(&["verify", &user.name, &code])), 1);
}

/// Several authenticators on the shared store: one added on host B is known to host A, and a
/// code of either is accepted once across both.
#[test]
fn authenticators_and_their_marks_are_shared_by_the_fleet() {
    let Some(pg) = Postgres::start("authenticators_and_their_marks_are_shared_by_the_fleet") else {
        return;
    };
    let (a, b) = two_hosts(&pg.socket_url(), "");
    let phone = a.enroll("tf-fleet");
    let started = b.cli(&["enroll", "--user", "tf-fleet", "--name", "tablet", "--json"]);
    assert_eq!(code_of(&started), 0);
    let tablet = started.json()["secret"].as_str().unwrap().to_string();
    ensure_step_time(8);
    assert_eq!(
        code_of(&b.cli(&["confirm", &oathtool(&tablet, 0), "--user", "tf-fleet"])),
        0
    );
    let listed = a
        .cli(&["authenticators", "--user", "tf-fleet", "--json"])
        .json();
    assert_eq!(listed["authenticators"][1]["name"], "tablet", "{listed}");
    std::thread::sleep(Duration::from_secs(30 - unix_now() % 30) + Duration::from_millis(300));
    for secret in [&phone.secret, &tablet] {
        let code = oathtool(secret, 0);
        assert_eq!(code_of(&a.cli(&["verify", "tf-fleet", &code])), 0);
        assert_eq!(
            code_of(&b.cli(&["verify", "tf-fleet", &code])),
            1,
            "replay on B"
        );
    }
}

/// A counter-based (HOTP) token on the shared store: imported on one host, its code accepted
/// once over both (100 submissions split between them), resynchronised on the other.
#[test]
fn a_counter_based_token_is_spent_once_fleet_wide() {
    let Some(pg) = Postgres::start("a_counter_based_token_is_spent_once_fleet_wide") else {
        return;
    };
    let (a, b) = two_hosts(&pg.socket_url(), "");
    // RFC 4226's test key in base32; codes from oathtool --hotp.
    let key = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    let hotp = |counter: u64| {
        let out = std::process::Command::new("oathtool")
            .args(["--hotp", "-b", "-c", &counter.to_string(), key])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let uri = format!("otpauth://hotp/fleet:tf-fob?secret={key}&counter=4\n");
    let imported = a.cli_as(None, &["import", "otpauth", "--user", "tf-fob"], Some(&uri));
    assert_eq!(code_of(&imported), 0, "{}", imported.stderr());
    let code = hotp(4);
    let accepted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let host = if i % 2 == 0 { &a } else { &b };
                let code = code.clone();
                s.spawn(move || code_of(&host.cli(&["verify", "tf-fob", &code])))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .inspect(|c| assert!(matches!(c, 0 | 1 | 3), "exit {c}"))
            .filter(|c| *c == 0)
            .count()
    });
    assert_eq!(accepted, 1, "one HOTP code accepted {accepted} times");
    assert_eq!(code_of(&a.cli(&["unlock", "tf-fob"])), 0);
    let resync = b.cli(&["resync", "tf-fob", &hotp(60), &hotp(61)]);
    assert_eq!(code_of(&resync), 0, "{}", resync.stderr());
    assert_eq!(code_of(&a.cli(&["verify", "tf-fob", &hotp(61)])), 1);
    assert_eq!(code_of(&a.cli(&["verify", "tf-fob", &hotp(62)])), 0);
    assert_eq!(code_of(&b.cli(&["verify", "tf-fob", &hotp(62)])), 1);
}
