//! What one unprivileged local user can make twofoldd write (finding 4 of the 2026-11 review:
//! 6,600 audit rows and 11 MB in 3 s, unbounded) and how often they can make it hash or mail
//! (findings 5 and 7). A real daemon, a real account, requests from a real process of that
//! account over the real socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use twofold_tests::*;

/// Speaks the wire protocol (u32 length + JSON) from 8 threads, `total` requests in all,
/// cycling through every request an unprivileged user may send about their own account,
/// PAM items at their longest, and broken frames.
const FLOOD: &str = r#"
import json, socket, struct, sys, threading
path, user, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
pam = {"service": "s" * 256, "rhost": "r" * 256, "tty": "t" * 256}
bodies = [
    {"op": "preflight", "user": user, "pam": pam},
    {"op": "verify", "user": user, "code": "000000", "pam": pam},
    {"op": "verify", "user": user, "code": "x", "pam": pam},
    {"op": "enroll", "user": None},
    {"op": "confirm", "user": None, "code": "000000"},
    {"op": "status", "user": None},
    {"op": "backup_codes", "user": None},
    {"op": "disable", "user": None},
    {"op": "email_set", "user": None, "address": "flood@example.org"},
    {"op": "email_confirm", "user": None, "code": "000000"},
    {"op": "send_email_code", "user": user, "pam": pam},
    {"op": "enroll", "user": "root"},
    {"op": "list"},
    "garbage",
]
frames = []
for b in bodies:
    raw = b"{not json" if b == "garbage" else json.dumps({"v": 1, "body": b}).encode()
    frames.append(struct.pack(">I", len(raw)) + raw)
answered = [0]
lock = threading.Lock()
def run(k):
    for i in range(k, total, 8):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.sendall(frames[i % len(frames)])
            s.recv(65536)
            s.close()
            with lock:
                answered[0] += 1
        except OSError:
            pass
threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(answered[0])
"#;

fn audit_count(d: &Daemon) -> u64 {
    let a = d.cli(&["audit", "--json"]);
    assert_eq!(a.code(), 0, "{}", a.stderr());
    let j = a.json();
    j["entries"].as_array().unwrap().len() as u64 + j["omitted"].as_u64().unwrap_or(0)
}

fn stored_bytes(d: &Daemon) -> u64 {
    let wal = d.database.with_extension("db-wal");
    [d.database.clone(), wal]
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

fn sendmail_stub(dir: &std::path::Path) -> String {
    let program = dir.join("sendmail");
    std::fs::write(&program, "#!/bin/sh\ncat > /dev/null\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("email_codes = true\n[email]\nsendmail = {program:?}\n")
}

#[test]
fn four_thousand_requests_from_one_user_add_at_most_100_audit_rows_and_2_mb() {
    if !is_root() {
        eprintln!("SKIP four_thousand_requests_from_one_user_add_at_most_100_audit_rows_and_2_mb: needs root to create a test user");
        return;
    }
    let mail = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(&sendmail_stub(mail.path()));
    let me = TestUser::create_unique("tf-fl");
    let script = d.dir.path().join("flood.py");
    std::fs::write(&script, FLOOD).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (rows, bytes) = (audit_count(&d), stored_bytes(&d));
    let started = std::time::Instant::now();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &me.name,
            "--regid",
            &me.name,
            "--init-groups",
            "--",
        ])
        .arg("/usr/bin/python3")
        .arg(&script)
        .arg(&d.socket)
        .arg(&me.name)
        .arg("4000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answered: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let added_rows = audit_count(&d) - rows;
    let added_bytes = stored_bytes(&d).saturating_sub(bytes);
    println!(
        "flood: {answered} of 4000 requests answered in {:.1} s; audit rows +{added_rows}, database + WAL +{added_bytes} bytes",
        started.elapsed().as_secs_f64()
    );
    assert!(
        answered >= 3_000,
        "the flood did not get through: {answered}"
    );
    assert!(added_rows <= 100, "{added_rows} audit rows");
    assert!(added_bytes <= 2 << 20, "{added_bytes} bytes");
    // The log is bounded too: a few lines per kind and minute, not thousands.
    let lines = d.log().lines().count();
    assert!(lines <= 100, "{lines} log lines: {}", d.log());
}

/// Finding 7: one user looping changes (each new set of backup codes costs 13 Argon2id
/// hashes) is held to a few a minute, and is told so.
#[test]
fn an_unprivileged_user_gets_a_few_changes_a_minute() {
    if !is_root() {
        eprintln!("SKIP an_unprivileged_user_gets_a_few_changes_a_minute: needs root to create a test user");
        return;
    }
    let d = Daemon::start_with("");
    let me = TestUser::create_unique("tf-bu");
    let mut refused = None;
    for i in 0..25 {
        let r = d.cli_as(Some(&me.name), &["enroll", "--json"], None);
        if r.code() != 0 {
            refused = Some((i, r));
            break;
        }
    }
    let (i, r) = refused.expect("25 enrollments in a row were all allowed");
    assert_eq!(i, 20, "the 21st change in a minute is refused");
    assert_eq!(r.code(), 3, "{}", r.stdout());
    assert!(r.stdout().contains("wait a minute"), "{}", r.stdout());
    // Root is not held to it.
    let root = d.cli(&["enroll", "--user", &me.name, "--json"]);
    assert_eq!(root.code(), 0, "{}", root.stderr());
}
