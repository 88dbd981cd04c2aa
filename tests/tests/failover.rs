//! A fleet through a database failover (issue 18): a real primary and its synchronous streaming
//! standby on 127.0.0.1, two twofoldd reaching them by one multi-host `postgres_url`
//! (`target_session_attrs=read-write`, TLS verified), logins running on both hosts while
//! replication stalls, the primary's host dies (frozen, then killed) and the standby is
//! promoted. No code is accepted twice, nothing accepted is lost, and both hosts log in again
//! within 5 s, without a restart. (With asynchronous replication the same run fails: codes
//! accepted during the stall are accepted again after the promotion.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use twofold_shared::client::Client;
use twofold_shared::otp::{self, Algorithm};
use twofold_shared::secret::Secret;
use twofold_shared::wire::{RequestBody, ResponseBody, SecretText};
use twofold_tests::*;

const USERS: usize = 6;

/// User `i`'s counter-based (HOTP) key: a code per counter, each accepted once, so a login
/// stream needs no waiting for the next time step.
fn key(i: usize) -> Vec<u8> {
    (0..20u8)
        .map(|b| b.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

fn code(i: usize, counter: u64) -> String {
    otp::format_code(
        otp::hotp(&Secret::from_bytes(key(i)), counter, 6, Algorithm::Sha1),
        6,
    )
}

fn verify(client: &Client, i: usize, counter: u64) -> Result<ResponseBody, String> {
    client
        .call(RequestBody::Verify {
            user: format!("fo-user{i}"),
            code: SecretText::new(code(i, counter)),
            pam: Default::default(),
            grace_secs: 0,
        })
        .map_err(|e| e.to_string())
}

/// One login: user, counter, host, answer, when.
type Login = (usize, u64, usize, Answer, Instant);

/// What happened to one login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    Rejected,
    Failed,
}

#[test]
fn a_promoted_synchronous_standby_takes_over_with_no_replay_and_no_loss() {
    let Some(mut primary) = Postgres::start_tls("failover::primary") else {
        return;
    };
    let standby = Postgres::standby_of(&primary, "twofold_standby");
    primary.require_sync_standby("twofold_standby");
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=twofold dbname=postgres \
         target_session_attrs=read-write sslmode=verify-full sslrootcert={}",
        primary.port,
        standby.port,
        primary.dir.path().join("ca.pem").display()
    );
    let config = format!(
        "store = \"postgres\"\npostgres_url = {url:?}\nhotp_window = 20\n\
         [throttle]\nfree_failures = 100000\nlockout_after = 0"
    );
    let dir = open_tempdir();
    let init = dir.path().join("init.toml");
    std::fs::write(&init, &config).unwrap();
    twofold_ok(&["fleet", "init", "--config"], &init);
    let hosts = [
        Daemon::start("allow", &config),
        Daemon::start("allow", &config),
    ];
    // The doctor sees the synchronous standby.
    let config_path = hosts[0].config.to_str().unwrap().to_string();
    let doctor = hosts[0].cli(&["--json", "doctor", "--config", &config_path]);
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout()).unwrap();
    let replication: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "replication")
        .collect();
    assert!(
        replication.len() == 1 && replication[0]["level"] == "ok",
        "{replication:?}"
    );
    assert!(
        replication[0]["message"]
            .as_str()
            .unwrap()
            .contains("1 streaming"),
        "{replication:?}"
    );
    for i in 0..USERS {
        let b32 = base32_of(&key(i));
        let uri = format!("otpauth://hotp/fleet:fo-user{i}?secret={b32}&counter=0\n");
        let run = hosts[0].cli_as(
            None,
            &["import", "otpauth", "--user", &format!("fo-user{i}")],
            Some(&uri),
        );
        assert_eq!(run.code(), 0, "{}", run.stderr());
    }
    // The in-process codes are oathtool's.
    let oath = std::process::Command::new("oathtool")
        .args(["--hotp", "-b", "-c", "7", &base32_of(&key(3))])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&oath.stdout).trim(), code(3, 7));

    let stop = AtomicBool::new(false);
    // Every login: (user, counter, host, answer, when).
    let log: Mutex<Vec<Login>> = Mutex::default();
    let (stalled_at, stopped_at, promoted_at) = std::thread::scope(|s| {
        for i in 0..USERS {
            let (hosts, stop, log) = (&hosts, &stop, &log);
            s.spawn(move || {
                let clients: Vec<Client> = hosts
                    .iter()
                    .map(|h| Client::new(&h.socket, Duration::from_secs(10), vec![0]))
                    .collect();
                let (mut counter, mut n) = (1u64, 0usize);
                while !stop.load(Ordering::Relaxed) {
                    let host = n % 2;
                    n += 1;
                    let answer = match verify(&clients[host], i, counter) {
                        Ok(ResponseBody::Accepted { .. }) => Answer::Accepted,
                        Ok(ResponseBody::Rejected) => Answer::Rejected,
                        _ => Answer::Failed,
                    };
                    log.lock()
                        .unwrap()
                        .push((i, counter, host, answer, Instant::now()));
                    match answer {
                        // Rejected: spent by a commit whose answer was lost; go on.
                        Answer::Accepted | Answer::Rejected => counter += 1,
                        Answer::Failed => {}
                    }
                    // About 25 logins a second per user: every one is replayed below.
                    std::thread::sleep(Duration::from_millis(40));
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        // The standby stops hearing from the primary; 1.5 s later the primary's host dies (no
        // clean shutdown that would stream the last commits). What was committed on the
        // primary alone in between is lost with it: with synchronous replication, no login
        // was told "accepted" for any of it.
        primary.stall_replication();
        let stalled_at = Instant::now();
        std::thread::sleep(Duration::from_millis(1500));
        primary.crash();
        let stopped_at = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        standby.promote();
        let promoted_at = Instant::now();
        std::thread::sleep(Duration::from_secs(8));
        stop.store(true, Ordering::Relaxed);
        (stalled_at, stopped_at, promoted_at)
    });
    let log = log.into_inner().unwrap();
    let accepted: Vec<_> = log.iter().filter(|l| l.3 == Answer::Accepted).collect();
    let before = accepted.iter().filter(|l| l.4 < stalled_at).count();
    let stalled = accepted
        .iter()
        .filter(|l| l.4 >= stalled_at && l.4 < stopped_at)
        .count();
    let after = accepted.iter().filter(|l| l.4 > promoted_at).count();
    let failed = log.iter().filter(|l| l.3 == Answer::Failed).count();
    let rejected = log.iter().filter(|l| l.3 == Answer::Rejected).count();
    // No counter accepted twice.
    let mut seen: HashMap<(usize, u64), usize> = HashMap::new();
    for l in &accepted {
        *seen.entry((l.0, l.1)).or_default() += 1;
    }
    let twice = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "codes accepted twice");
    // Nothing accepted was lost: every accepted code is refused now, on both hosts, and the
    // new primary's marks are at least the highest counters accepted.
    let clients: Vec<Client> = hosts
        .iter()
        .map(|h| Client::new(&h.socket, Duration::from_secs(10), vec![0]))
        .collect();
    let mut replayed = 0;
    for &&(i, counter, _, _, _) in &accepted {
        for client in &clients {
            if matches!(
                verify(client, i, counter),
                Ok(ResponseBody::Accepted { .. })
            ) {
                replayed += 1;
            }
        }
    }
    assert_eq!(
        replayed, 0,
        "accepted codes accepted again after the failover"
    );
    for i in 0..USERS {
        let highest = accepted
            .iter()
            .filter(|l| l.0 == i)
            .map(|l| l.1)
            .max()
            .unwrap();
        let mark: u64 = standby
            .psql(
                "postgres",
                &format!("SELECT last_step FROM authenticators WHERE name = 'fo-user{i}'"),
            )
            .trim()
            .parse()
            .unwrap();
        assert!(
            mark >= highest,
            "fo-user{i}: mark {mark} below the accepted {highest}"
        );
    }
    // Back within 5 s on each host.
    for host in 0..2 {
        let first = accepted
            .iter()
            .filter(|l| l.2 == host && l.4 > promoted_at)
            .map(|l| l.4 - promoted_at)
            .min()
            .unwrap_or_else(|| panic!("host {host} never logged in after the promotion"));
        assert!(
            first < Duration::from_secs(5),
            "host {host} back after {first:?}"
        );
        eprintln!("failover: host {host} logged in again {first:?} after the promotion");
    }
    eprintln!(
        "failover: {} logins accepted ({before} before the stall, {stalled} during it, {after} \
         after the promotion), \
         {rejected} rejected (a retry of a code whose acceptance committed as the primary \
         stopped), {failed} failed during the switch; 0 accepted twice, {} replays refused",
        accepted.len(),
        accepted.len() * 2
    );
    assert!(before > 0 && after > 0);
}

fn base32_of(bytes: &[u8]) -> String {
    Secret::from_bytes(bytes.to_vec()).to_base32()
}
