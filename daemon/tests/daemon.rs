//! twofoldd over a real Unix socket and a real SQLite file, driven through the real CLI with
//! codes from oathtool.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twofold_shared::wire::{self, ErrorKind, Response, ResponseBody};
use twofold_tests::*;

#[test]
fn enroll_confirm_verify_and_replay() {
    let d = Daemon::start_with("");
    ensure_step_time(5);
    let (secret, codes) = d.enroll_now("alice");
    assert_eq!(codes.len(), 12);
    // The app's next code is accepted once, refused the second time.
    let next = oathtool(&secret, 1);
    let ok = d.cli(&["verify", "alice", &next]);
    assert_eq!(ok.code(), 0, "{}", ok.stderr());
    let again = d.cli(&["verify", "alice", &next]);
    assert_eq!(
        again.code(),
        1,
        "replayed code must be refused: {}",
        again.stdout()
    );
    assert!(again.stderr().contains("Invalid verification code."));
    // The code used to confirm (an older step) is refused too.
    assert_eq!(d.cli(&["verify", "alice", &oathtool(&secret, 0)]).code(), 1);
    // Two steps ahead is outside the window.
    assert_eq!(d.cli(&["verify", "alice", &oathtool(&secret, 3)]).code(), 1);
    let s = d.cli(&["status", "--user", "alice", "--json"]).json();
    assert_eq!(s["enrolled"], true);
    assert_eq!(s["backup_codes_left"], 12);
    assert_eq!(s["failures"], 3);
    assert!(s["last_success"].as_u64().is_some());
    let human = d.cli(&["status", "--user", "alice"]);
    assert!(
        human.stdout().contains("Backup codes:  12 left"),
        "{}",
        human.stdout()
    );
    // The audit trail names the outcome and never the code.
    let log = d.log();
    assert!(
        log.contains("user=alice") && log.contains("reason=replayed"),
        "{log}"
    );
    assert!(!log.contains(&next), "a code reached the log");
}

#[test]
fn otpauth_uri_follows_key_uri_format() {
    let d = Daemon::start_with("");
    let e = d
        .cli(&["enroll", "--user", "bob.smith@example.org", "--json"])
        .json();
    let secret = e["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 32, "160-bit secret in unpadded base32");
    assert_eq!(
        e["otpauth_uri"].as_str().unwrap(),
        format!(
            "otpauth://totp/test-host:bob.smith%40example.org?secret={secret}&issuer=test-host"
        )
    );
    assert_eq!(e["label"], "test-host:bob.smith@example.org");
    // Pending, not active, until confirmed.
    let s = d
        .cli(&["status", "--user", "bob.smith@example.org", "--json"])
        .json();
    assert_eq!(
        (s["enrolled"].as_bool(), s["pending"].as_bool()),
        (Some(false), Some(true))
    );
}

#[test]
fn one_code_100_parallel_submissions_exactly_one_accepted() {
    let d = Arc::new(Daemon::start_with(""));
    ensure_step_time(10);
    let (secret, _) = d.enroll_now("carol");
    let code = oathtool(&secret, 1);
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let d = d.clone();
            let code = code.clone();
            std::thread::spawn(move || d.cli(&["verify", "carol", &code]).code())
        })
        .collect();
    let codes: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let accepted = codes.iter().filter(|&&c| c == 0).count();
    assert_eq!(accepted, 1, "exit codes: {codes:?}");
    // The others are refused: as replays (1) or, once five had failed, throttled (3).
    assert!(codes.iter().all(|c| [0, 1, 3].contains(c)), "{codes:?}");
}

#[test]
fn hundred_users_verifying_in_parallel_all_accepted() {
    // One backup code each keeps the Argon2id cost of enrolling 100 users small.
    let d = Arc::new(Daemon::start_with("backup_codes = 1"));
    let users: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|part| {
                let d = &d;
                s.spawn(move || {
                    (0..25)
                        .map(|i| {
                            let name = format!("user{:03}", part * 25 + i);
                            let (secret, _) = d.enroll_now(&name);
                            (name, secret)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    ensure_step_time(10);
    // +1 step: ahead of whatever step each confirmation consumed.
    let work: Vec<(String, String)> = users
        .iter()
        .map(|(n, s)| (n.clone(), oathtool(s, 1)))
        .collect();
    let handles: Vec<_> = work
        .into_iter()
        .map(|(name, code)| {
            let d = d.clone();
            std::thread::spawn(move || (name.clone(), d.cli(&["verify", &name, &code]).code()))
        })
        .collect();
    let results: Vec<(String, i32)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let failed: Vec<_> = results.iter().filter(|(_, c)| *c != 0).collect();
    assert!(
        failed.is_empty(),
        "valid concurrent logins refused: {failed:?}"
    );
    assert_eq!(
        d.cli(&["list", "--json"]).json()["users"]
            .as_array()
            .unwrap()
            .len(),
        100
    );
}

#[test]
fn six_wrong_codes_throttle_and_it_survives_a_restart() {
    let mut d = Daemon::start_with("");
    let (secret, _) = d.enroll_now("dave");
    for i in 0..5 {
        let r = d.cli(&["verify", "dave", "000000"]);
        assert_eq!(r.code(), 1, "attempt {i}: {}", r.stderr());
    }
    let sixth = d.cli(&["verify", "dave", "000000"]);
    assert_eq!(sixth.code(), 3, "{}", sixth.stderr());
    assert!(
        sixth
            .stderr()
            .contains("Too many failed attempts; try again in 1 min."),
        "{}",
        sixth.stderr()
    );
    d.restart();
    // Still throttled, and even the right code is not evaluated during the wait.
    let after = d.cli(&["verify", "dave", &oathtool(&secret, 1), "--json"]);
    assert_eq!(after.code(), 3, "{}", after.stdout());
    assert_eq!(after.json()["result"], "throttled");
    let s = d.cli(&["status", "--user", "dave", "--json"]).json();
    assert_eq!(s["failures"], 5);
    assert!(s["throttled_until"].as_u64().is_some());
}

#[test]
fn lockout_at_the_limit_until_unlocked() {
    let d = Daemon::start_with(
        "[throttle]\nfree_failures = 5\nbase_delay = 0\nmax_delay = 0\nlockout_after = 8",
    );
    ensure_step_time(8);
    let (secret, _) = d.enroll_now("erin");
    for _ in 0..8 {
        assert_eq!(d.cli(&["verify", "erin", "111111"]).code(), 1);
    }
    let locked = d.cli(&["verify", "erin", &oathtool(&secret, 1)]);
    assert_eq!(locked.code(), 3);
    assert!(locked.stderr().contains("Locked"), "{}", locked.stderr());
    assert_eq!(
        d.cli(&["status", "--user", "erin", "--json"]).json()["locked"],
        true
    );
    assert!(d.log().contains("locked after 8 consecutive failures"));
    let unlock = d.cli(&["unlock", "erin"]);
    assert_eq!(unlock.code(), 0, "{}", unlock.stderr());
    assert_eq!(d.cli(&["verify", "erin", &oathtool(&secret, 1)]).code(), 0);
    // A success resets the count.
    assert_eq!(
        d.cli(&["status", "--user", "erin", "--json"]).json()["failures"],
        0
    );
}

#[test]
fn backup_code_works_once_and_counts_down() {
    let d = Daemon::start_with("");
    let (_, codes) = d.enroll_now("frank");
    // Typed loosely: upper case, spaces instead of hyphens.
    let typed = codes[3].to_uppercase().replace('-', " ");
    let first = d.cli(&["verify", "frank", &typed, "--json"]);
    assert_eq!(first.code(), 0, "{}", first.stdout());
    assert_eq!(first.json()["method"], "backup_code");
    assert_eq!(first.json()["backup_codes_left"], 11);
    assert_eq!(
        d.cli(&["verify", "frank", &codes[3]]).code(),
        1,
        "a backup code is single-use"
    );
    assert_eq!(
        d.cli(&["status", "--user", "frank", "--json"]).json()["backup_codes_left"],
        11
    );
    // Regenerating replaces them all: old codes die.
    let fresh = d.cli(&["backup-codes", "--user", "frank", "--json"]).json();
    assert_eq!(fresh["backup_codes"].as_array().unwrap().len(), 12);
    assert_eq!(d.cli(&["verify", "frank", &codes[4]]).code(), 1);
    let new_code = fresh["backup_codes"][0].as_str().unwrap();
    assert_eq!(d.cli(&["verify", "frank", new_code]).code(), 0);
}

#[test]
fn database_file_holds_no_backup_code() {
    let d = Daemon::start_with("");
    let (_, codes) = d.enroll_now("grace");
    let mut files = vec![d.database.clone()];
    let wal = d.database.with_extension("db-wal");
    if wal.exists() {
        files.push(wal);
    }
    let out = Command::new("strings")
        .args(["-n", "4"])
        .args(&files)
        .output()
        .expect("strings (binutils)");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        text.contains("grace"),
        "strings saw nothing: is this the right file?"
    );
    for code in &codes {
        let bare = code.replace('-', "");
        assert!(
            !text.contains(&bare) && !text.contains(code),
            "backup code found in the database"
        );
        for part in code.split('-') {
            // Every 4-char group could appear by chance in binary noise; the full code cannot.
            let _ = part;
        }
    }
}

#[test]
fn socket_is_0666_and_database_0600() {
    let d = Daemon::start_with("");
    d.enroll_now("henry");
    let sock = std::fs::metadata(&d.socket).unwrap();
    assert!(sock.file_type().is_socket());
    assert_eq!(sock.permissions().mode() & 0o777, 0o666);
    for f in [d.database.clone(), d.database.with_extension("db-wal")] {
        if let Ok(m) = std::fs::metadata(&f) {
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", f.display());
        }
    }
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_is_not() {
    let mut d = Daemon::start_with("");
    // A second daemon on the same socket refuses to start.
    let second = Command::new(twofoldd())
        .arg("--config")
        .arg(&d.config)
        .arg("--database")
        .arg(d.dir.path().join("state/other.db"))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already serving"));
    // SIGKILL leaves the socket file behind; a restart replaces it.
    d.stop();
    assert!(d.socket.exists());
    d.restart();
    assert_eq!(d.cli(&["status", "--user", "root"]).code(), 0);
}

#[test]
fn corrupt_or_unreadable_database_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = dir.path().join("bad.db");
    std::fs::write(&db, vec![0x42u8; 8192]).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(twofoldd())
        .args(["--config", "/nonexistent-config-is-fine-when-not-given"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a named config that is missing is an error"
    );
    let out = Command::new(twofoldd())
        .arg("--socket")
        .arg(dir.path().join("s"))
        .arg("--database")
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open database") && err.contains("not a database"),
        "{err}"
    );
    // The bad file is left as it was, for the administrator to inspect.
    assert_eq!(std::fs::read(&db).unwrap(), vec![0x42u8; 8192]);
}

#[test]
fn exit_statuses_for_unavailable_and_not_enrolled() {
    let mut d = Daemon::start_with("");
    // root exists on every system: a known account without enrollment.
    let r = d.cli(&["verify", "root", "123456"]);
    assert_eq!(r.code(), 4, "{}", r.stderr());
    // A name without any account is rejected like a wrong code.
    assert_eq!(
        d.cli(&["verify", "no-such-account-xyz", "123456"]).code(),
        1
    );
    assert_eq!(d.cli(&["confirm", "123456", "--user", "root"]).code(), 2);
    assert_eq!(d.cli(&["unlock", "bad name"]).code(), 2);
    let huge = "x".repeat(300);
    let r = d.cli(&["status", "--user", &huge]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("longer than 256"), "{}", r.stderr());
    d.stop();
    let r = d.cli(&["status", "--json"]);
    assert_eq!(r.code(), 6);
    assert_eq!(r.json()["result"], "error");
}

#[test]
fn replacing_an_enrollment_needs_force_and_keeps_the_throttle() {
    let d = Daemon::start_with("");
    let (old, _) = d.enroll_now("ivan");
    assert_eq!(d.cli(&["verify", "ivan", "000000"]).code(), 1);
    let r = d.cli(&["enroll", "--user", "ivan", "--json"]);
    assert_eq!(r.code(), 2);
    assert_eq!(r.json()["kind"], "already_enrolled");
    let (new, _) = {
        let e = d
            .cli(&["enroll", "--user", "ivan", "--force", "--json"])
            .json();
        let s = e["secret"].as_str().unwrap().to_string();
        // Until confirmed, the old secret still works.
        assert_eq!(d.cli(&["verify", "ivan", &oathtool(&old, 1)]).code(), 0);
        assert_eq!(d.cli(&["verify", "ivan", "000000"]).code(), 1);
        assert_eq!(
            d.cli(&["confirm", &oathtool(&s, 0), "--user", "ivan"])
                .code(),
            0
        );
        (s, ())
    };
    assert_ne!(old, new);
    assert_eq!(
        d.cli(&["status", "--user", "ivan", "--json"]).json()["failures"],
        1,
        "re-enrollment keeps the count"
    );
    let gone = d.cli(&["disable", "--user", "ivan"]);
    assert_eq!(gone.code(), 0, "{}", gone.stderr());
    assert_eq!(
        d.cli(&["verify", "ivan", &oathtool(&new, 1)]).code(),
        1,
        "no account named ivan: unknown"
    );
}

#[test]
fn interactive_enroll_shows_qr_key_label_and_backup_codes() {
    let d = Daemon::start_with("");
    let svg = d.dir.path().join("qr.svg");
    ensure_step_time(8);
    let mut child = Command::new(twofold_cli())
        .args([
            "--socket",
            path_str(&d.socket),
            "enroll",
            "--user",
            "judy",
            "--qr-svg",
            path_str(&svg),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut shown = String::new();
    let key = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "no key shown: {shown}"
        );
        shown.push_str(&line);
        if let Some(k) = line.strip_prefix("Key:") {
            break k.trim().to_string();
        }
    };
    assert!(shown.contains("Account:  test-host:judy"), "{shown}");
    assert!(
        shown.contains('▀') || shown.contains('▄'),
        "no half-block QR code: {shown}"
    );
    let groups: Vec<&str> = key.split(' ').collect();
    assert!(
        groups.len() == 8 && groups.iter().all(|g| g.len() == 4),
        "key not in groups of four: {key}"
    );
    let secret = key.replace(' ', "");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "000000").unwrap(); // a typo first
    writeln!(stdin, "{}", oathtool(&secret, 0)).unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{rest} {err}");
    assert!(err.contains("That code is not right"), "{err}");
    assert!(rest.contains("Two-factor authentication is now active for judy."));
    assert!(rest.contains("Store them somewhere safe"));
    assert_eq!(
        rest.lines()
            .filter(|l| l.split_whitespace().count() == 2 && l.contains('-'))
            .count(),
        6,
        "{rest}"
    );
    let meta = std::fs::metadata(&svg).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
}

// ---------------------------------------------------------------------------------------------
// Malformed input over the raw socket

fn raw_exchange(d: &Daemon, bytes: &[u8], shutdown_write: bool) -> Option<ResponseBody> {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    if shutdown_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let payload = wire::read_frame(&mut s).ok()?;
    Some(wire::decode::<Response>(&payload).unwrap().body)
}

fn frame(json: &str) -> Vec<u8> {
    let mut v = (json.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v
}

fn expect_error(reply: Option<ResponseBody>, want: ErrorKind, case: &str) -> String {
    match reply {
        Some(ResponseBody::Error { kind, message }) if kind == want => message,
        other => panic!("{case}: expected {want:?}, got {other:?}"),
    }
}

#[test]
fn malformed_frames_get_clean_errors_and_the_daemon_keeps_serving() {
    let mut d = Daemon::start_with("");
    let m = expect_error(
        raw_exchange(&d, &[0, 0, 0, 0], false),
        ErrorKind::BadRequest,
        "zero-length",
    );
    assert!(m.contains("zero-length"), "{m}");
    let m = expect_error(
        raw_exchange(&d, &[0xff, 0xff, 0xff, 0xff, b'{'], false),
        ErrorKind::BadRequest,
        "4 GiB header",
    );
    assert!(m.contains("exceeds"), "{m}");
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(b"{\"v\":1,");
    let m = expect_error(
        raw_exchange(&d, &truncated, true),
        ErrorKind::BadRequest,
        "truncated",
    );
    assert!(m.contains("middle of a frame"), "{m}");
    expect_error(
        raw_exchange(&d, &[0, 0], true),
        ErrorKind::BadRequest,
        "truncated header",
    );
    expect_error(
        raw_exchange(&d, &frame("\u{1}garbage\u{ff}"), false),
        ErrorKind::BadRequest,
        "garbage",
    );
    let mut non_utf8 = 4u32.to_be_bytes().to_vec();
    non_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    expect_error(
        raw_exchange(&d, &non_utf8, false),
        ErrorKind::BadRequest,
        "non-UTF-8",
    );
    let m = expect_error(
        raw_exchange(&d, &frame(r#"{"v":1,"body":{"op":"drop_tables"}}"#), false),
        ErrorKind::BadRequest,
        "unknown op",
    );
    assert!(m.contains("unknown variant `drop_tables`"), "{m}");
    let m = expect_error(
        raw_exchange(&d, &frame(r#"{"v":99,"body":{"op":"ping"}}"#), false),
        ErrorKind::VersionMismatch,
        "wrong version",
    );
    assert!(m.contains("99"), "{m}");
    expect_error(
        raw_exchange(&d, &frame(r#"{"body":{"op":"ping"}}"#), false),
        ErrorKind::BadRequest,
        "no version",
    );
    // A 4 KiB user name and a control character in one are refused, not looked up.
    let long = format!(
        r#"{{"v":1,"body":{{"op":"status","user":"{}"}}}}"#,
        "a".repeat(4096)
    );
    expect_error(
        raw_exchange(&d, &frame(&long), false),
        ErrorKind::BadRequest,
        "huge name",
    );
    expect_error(
        raw_exchange(
            &d,
            &frame(r#"{"v":1,"body":{"op":"status","user":"a\u001bb"}}"#),
            false,
        ),
        ErrorKind::BadRequest,
        "control char",
    );
    // Still alive and answering.
    assert!(d.alive());
    assert!(matches!(
        raw_exchange(&d, &frame(r#"{"v":1,"body":{"op":"ping"}}"#), false),
        Some(ResponseBody::Pong { .. })
    ));
}

#[test]
fn slow_clients_are_cut_off_and_do_not_block_others() {
    let d = Daemon::start_with("request_timeout = 1");
    // Ten clients that connect and trickle one byte at a time.
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let mut s = UnixStream::connect(&d.socket).unwrap();
            s.write_all(&[0]).unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    assert_eq!(d.cli(&["status", "--user", "root"]).code(), 0);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "a fast client waited for slow ones"
    );
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&[0]);
        let started = Instant::now();
        let reply = wire::read_frame(&mut s);
        // Either the daemon already answered "timed out" or it answers within its deadline.
        match reply {
            Ok(p) => {
                let r: Response = wire::decode(&p).unwrap();
                assert!(
                    matches!(r.body, ResponseBody::Error { kind: ErrorKind::BadRequest, ref message } if message.contains("timed out")),
                    "{:?}",
                    r.body
                );
            }
            Err(e) => panic!("no answer to a slow client: {e}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

#[test]
fn connection_cap_answers_busy() {
    let d = Daemon::start_with("max_connections = 4\nrequest_timeout = 30");
    // Let the start-up probe's connection finish so that it does not take one of the four.
    std::thread::sleep(Duration::from_millis(500));
    let held: Vec<_> = (0..4)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    // The daemon accepts the four in its own time; on a loaded machine that can take a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let busy = loop {
        let r = d.cli(&["status", "--user", "root", "--json"]);
        if r.code() == 6 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(busy.code(), 6, "{} {}", busy.stdout(), d.log());
    assert_eq!(busy.json()["kind"], "busy");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.cli(&["status", "--user", "root"]).code() != 0 {
        assert!(
            Instant::now() < deadline,
            "still busy after the held connections closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// A real non-root user

#[test]
fn a_non_root_user_manages_only_their_own_account() {
    if !is_root() {
        eprintln!(
            "SKIP a_non_root_user_manages_only_their_own_account: needs root to create a test user"
        );
        return;
    }
    let d = Daemon::start_with("");
    let me = TestUser::create_unique("tf-u");
    let other = TestUser::create_unique("tf-o");
    let (other_secret, _) = d.enroll_now(&other.name);
    let mine = d.cli_as(Some(&me.name), &["enroll", "--json"], None);
    assert_eq!(mine.code(), 0, "self-enrollment: {}", mine.stderr());
    let secret = mine.json()["secret"].as_str().unwrap().to_string();
    assert_eq!(mine.json()["user"], me.name.as_str());
    let c = d.cli_as(
        Some(&me.name),
        &["confirm", "-"],
        Some(&format!("{}\n", oathtool(&secret, 0))),
    );
    assert_eq!(c.code(), 0, "{}", c.stderr());
    assert_eq!(d.cli_as(Some(&me.name), &["status"], None).code(), 0);
    // Someone else's account: status, verify, enroll, reset, disable, admin commands: exit 5.
    let o = other.name.as_str();
    let code = oathtool(&other_secret, 1);
    for args in [
        vec!["status", "--user", o],
        vec!["verify", o, code.as_str()],
        vec!["enroll", "--user", o, "--json"],
        vec!["enroll", "--user", o, "--force", "--json"],
        vec!["backup-codes", "--user", o],
        vec!["disable", "--user", o],
        vec!["list"],
        vec!["unlock", o],
        vec!["unlock", me.name.as_str()],
    ] {
        let r = d.cli_as(Some(&me.name), &args, None);
        assert_eq!(r.code(), 5, "{args:?}: {} {}", r.stdout(), r.stderr());
    }
    // The other user's code was not consumed by the refused attempt.
    assert_eq!(d.cli(&["verify", o, &code]).code(), 0);
    // Changing one's own active enrollment needs a current code.
    let r = d.cli_as(Some(&me.name), &["backup-codes", "--json"], None);
    assert_eq!(r.code(), 2);
    assert_eq!(r.json()["kind"], "code_required");
    let r = d.cli_as(
        Some(&me.name),
        &["backup-codes", "--code", "-", "--json"],
        Some(&format!("{}\n", oathtool(&secret, 1))),
    );
    assert_eq!(r.code(), 0, "{}", r.stdout());
    let r = d.cli_as(Some(&me.name), &["disable"], None);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(d.cli(&["status", "--user", &me.name, "--json"]).json()["enrolled"] == true);
}

#[test]
fn self_enrollment_can_be_switched_off() {
    if !is_root() {
        eprintln!("SKIP self_enrollment_can_be_switched_off: needs root to create a test user");
        return;
    }
    let d = Daemon::start_with("self_enroll = false");
    let me = TestUser::create_unique("tf-s");
    let r = d.cli_as(Some(&me.name), &["enroll"], None);
    assert_eq!(r.code(), 5);
    assert!(
        r.stderr().contains("self-enrollment is switched off"),
        "{}",
        r.stderr()
    );
    // Root still can.
    d.enroll_now(&me.name);
}

#[test]
fn doctor_reports_daemon_files_and_users() {
    let mut d = Daemon::start_with("unenrolled = \"deny\"");
    d.enroll_now("kate");
    let config = path_str(&d.config).to_string();
    let r = d.cli(&["doctor", "--config", &config, "--json"]);
    let report = r.json();
    let findings = report["findings"].as_array().unwrap();
    let level = |check: &str| -> Vec<String> {
        findings
            .iter()
            .filter(|f| f["check"] == check)
            .map(|f| f["level"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(level("config"), ["ok"]);
    assert_eq!(level("daemon"), ["ok"], "{report}");
    assert_eq!(level("socket"), ["ok"], "{report}");
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "users" && f["message"] == "1 user(s) enrolled"),
        "{report}"
    );
    assert!(!level("pam").is_empty() && !level("clock").is_empty());
    // The exit status follows the verdict.
    assert_eq!(r.code(), if report["ok"] == true { 0 } else { 1 });
    if is_root() {
        assert_eq!(level("database"), ["ok"], "{report}");
    }
    // With the daemon gone, doctor says so and fails.
    d.stop();
    let r = d.cli(&["doctor", "--config", &config]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stdout().contains("[FAIL] daemon") && r.stdout().contains("systemctl start twofoldd"),
        "{}",
        r.stdout()
    );
    // A broken configuration is a finding, not a crash.
    std::fs::write(&d.config, "windw = 1\n").unwrap();
    let r = d.cli(&["doctor", "--config", &config, "--json"]);
    assert_eq!(r.code(), 1);
    assert!(r.stdout().contains("unknown field"), "{}", r.stdout());
}

#[test]
fn list_of_a_large_host_exceeds_the_request_frame_limit() {
    let d = Arc::new(Daemon::start_with(""));
    // Pending enrollments are listed too and cost no Argon2id: 400 of them make an answer of
    // well over 64 KiB.
    std::thread::scope(|s| {
        for part in 0..4 {
            let d = &d;
            s.spawn(move || {
                for i in 0..100 {
                    let name = format!("pending-user-with-a-long-name-{part}-{i:03}");
                    assert_eq!(d.cli(&["enroll", "--user", &name, "--json"]).code(), 0);
                }
            });
        }
    });
    let r = d.cli(&["list", "--json"]);
    assert_eq!(r.code(), 0, "{} {}", r.stdout(), r.stderr());
    assert!(r.0.stdout.len() > 64 * 1024, "{} bytes", r.0.stdout.len());
    assert_eq!(r.json()["users"].as_array().unwrap().len(), 400);
}

/// Rewrites the daemon's configuration (keeping socket and database) and sends SIGHUP; waits
/// until the daemon has logged `expect` (`count` times in all).
fn reconfigure(d: &Daemon, extra: &str, expect: &str) {
    let before = d.log().matches(expect).count();
    std::fs::write(
        &d.config,
        format!(
            "socket = {:?}\ndatabase = {:?}\nissuer = \"test-host\"\n{extra}\n",
            d.socket, d.database
        ),
    )
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(d.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.log().matches(expect).count() <= before {
        assert!(
            Instant::now() < deadline,
            "no '{expect}' after SIGHUP: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn policy_switch_reloads_on_sighup_and_keeps_the_old_policy_when_invalid() {
    let d = Daemon::start_with("");
    d.enroll_now("liam");
    let p = d.cli(&["policy", "--json"]).json();
    assert_eq!(p["enabled"], true);
    assert_eq!(p["unenrolled"], "allow");
    assert!(
        p["pass_without_code"]
            .as_array()
            .unwrap()
            .contains(&"root".into()),
        "{p}"
    );
    assert_eq!(p["other_enrolled"], 1, "liam has no local account");
    // root has an account and no enrollment: let through under "allow".
    assert_eq!(
        d.cli(&["verify", "root", "123456", "--json"]).json(),
        serde_json::json!({"result": "not_enrolled", "required": false})
    );

    reconfigure(&d, "unenrolled = \"deny\"", "policy reloaded");
    assert_eq!(
        d.cli(&["verify", "root", "123456", "--json"]).json()["required"],
        true
    );
    let p = d.cli(&["policy", "--json"]).json();
    assert!(
        p["refused_until_enrolled"]
            .as_array()
            .unwrap()
            .contains(&"root".into()),
        "{p}"
    );
    assert!(d
        .cli(&["policy"])
        .stdout()
        .contains("Not enrolled:       refused"));

    // An invalid file is refused; the policy in force stays.
    reconfigure(&d, "unenrolled = \"sometimes\"", "reload refused");
    assert_eq!(d.cli(&["policy", "--json"]).json()["unenrolled"], "deny");
    assert!(d.log().contains("the previous policy stays in force"));

    // Switched off: logins pass through untouched, and the policy says so.
    reconfigure(&d, "enabled = false", "policy reloaded");
    let r = d.cli(&["verify", "liam", "123456", "--json"]);
    assert_eq!(r.json()["result"], "disabled");
    let p = d.cli(&["policy", "--json"]).json();
    assert_eq!(p["enabled"], false);
    assert!(p["refused_until_enrolled"].as_array().unwrap().is_empty());
    assert!(d.cli(&["policy"]).stdout().contains("OFF"));
}

#[test]
fn require_groups_refuse_members_until_enrolled() {
    if !is_root() {
        eprintln!("SKIP require_groups_refuse_members_until_enrolled: needs root to create a group and users");
        return;
    }
    let group = format!("tf-g{}", std::process::id() % 100_000);
    let _g = TestGroup::create(&group);
    let member = TestUser::create_unique("tf-m");
    let outsider = TestUser::create_unique("tf-n");
    assert!(Command::new("usermod")
        .args(["-aG", &group, &member.name])
        .status()
        .unwrap()
        .success());
    let d = Daemon::start_with(&format!(
        "unenrolled = \"allow\"\nrequire_groups = [\"{group}\"]"
    ));
    let required =
        |name: &str| d.cli(&["verify", name, "123456", "--json"]).json()["required"].clone();
    assert_eq!(
        required(&member.name),
        true,
        "group members are refused until enrolled"
    );
    assert_eq!(
        required(&outsider.name),
        false,
        "others follow unenrolled = allow"
    );
    let p = d.cli(&["policy", "--json"]).json();
    let groups = p["require_groups"].as_array().unwrap();
    assert_eq!(
        groups[0],
        serde_json::json!({"group": group, "exists": true, "members": 1, "not_enrolled": 1})
    );
    assert_eq!(groups.len(), 1);
    // A group that does not exist is a configuration error: refused at reload (the policy in
    // force stays) and at start, never silently "nobody is a member".
    reconfigure(
        &d,
        "require_groups = [\"no-such-group-tf\"]",
        "reload refused",
    );
    assert_eq!(required(&member.name), true);
    let out = Command::new(twofoldd())
        .arg("--config")
        .arg(&d.config)
        .arg("--socket")
        .arg(d.dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("group \"no-such-group-tf\" does not exist")
    );
    // Once enrolled, the member is asked for a code like everyone enrolled.
    let (secret, _) = d.enroll_now(&member.name);
    assert_eq!(
        d.cli(&["verify", &member.name, &oathtool(&secret, 1)])
            .code(),
        0
    );
}

#[test]
fn audit_trail_records_every_event_and_never_a_code() {
    let d = Daemon::start_with(
        "[throttle]\nfree_failures = 5\nbase_delay = 0\nmax_delay = 0\nlockout_after = 3",
    );
    ensure_step_time(8);
    let (secret, codes) = d.enroll_now("mia");
    let good = oathtool(&secret, 1);
    assert_eq!(d.cli(&["verify", "mia", &good]).code(), 0);
    assert_eq!(d.cli(&["verify", "mia", &codes[0]]).code(), 0);
    for _ in 0..3 {
        assert_eq!(d.cli(&["verify", "mia", "000000"]).code(), 1);
    }
    assert_eq!(d.cli(&["verify", "mia", "000000"]).code(), 3);
    assert_eq!(d.cli(&["unlock", "mia"]).code(), 0);
    assert_eq!(
        d.cli(&["backup-codes", "--user", "mia", "--json"]).code(),
        0
    );
    assert_eq!(d.cli(&["verify", "root", "123456"]).code(), 4);
    reconfigure(&d, "unenrolled = \"deny\"", "policy reloaded");
    reconfigure(&d, "bogus = 1", "reload refused");
    assert_eq!(d.cli(&["disable", "--user", "mia"]).code(), 0);

    let r = d.cli(&["audit", "--json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let entries = r.json()["entries"].as_array().unwrap().clone();
    let seen: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["event"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["method"].as_str().unwrap_or("-")
            )
        })
        .collect();
    for want in [
        "enroll pending -",
        "confirm enrolled -",
        "login accepted totp",
        "login accepted backup-code",
        "login rejected -",
        "lockout locked -",
        "login locked -",
        "unlock cleared -",
        "backup-codes replaced -",
        "login ignored-not-enrolled -",
        "policy-reload applied -",
        "policy-reload refused -",
        "disable removed -",
    ] {
        assert!(seen.iter().any(|s| s == want), "no '{want}' in {seen:#?}");
    }
    // Oldest first, each with the caller's uid where a caller asked.
    let times: Vec<u64> = entries
        .iter()
        .map(|e| e["time"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    // No code or backup code in the trail, the log or the database.
    let everything = format!("{} {} {}", r.stdout(), d.cli(&["audit"]).stdout(), d.log());
    for secret_text in [
        good.as_str(),
        codes[0].as_str(),
        &codes[0].replace('-', ""),
        secret.as_str(),
    ] {
        assert!(!everything.contains(secret_text), "{secret_text} leaked");
    }
    // Filters.
    let mine = d.cli(&["audit", "--user", "root", "--json"]).json();
    assert!(mine["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["user"] == "root"));
    assert_eq!(mine["entries"].as_array().unwrap().len(), 1);
    assert!(
        !d.cli(&["audit", "--since", "1h", "--json"]).json()["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(d.cli(&["audit", "--since", "soon"]).code(), 2);
    let human = d.cli(&["audit", "--user", "mia"]).stdout();
    assert!(
        human.contains("login") && human.contains("accepted (totp)") && human.contains("by-uid=0"),
        "{human}"
    );
}

#[test]
fn one_user_cannot_take_every_connection() {
    if !is_root() {
        eprintln!("SKIP one_user_cannot_take_every_connection: needs root to create a second user");
        return;
    }
    let d = Daemon::start_with("max_connections = 16\nrequest_timeout = 30");
    std::thread::sleep(Duration::from_millis(300)); // let the start-up probe finish
    let hog = TestUser::create_unique("tf-h");
    // The user opens 40 idle connections and keeps them open.
    let mut holder = Command::new("setpriv")
        .args(["--reuid", &hog.name, "--regid", &hog.name, "--init-groups", "--", "/usr/bin/python3", "-c"])
        .arg(format!(
            "import socket,sys,time\nh=[]\nfor i in range(40):\n  s=socket.socket(socket.AF_UNIX); s.connect({:?}); h.append(s)\nprint('held', flush=True)\ntime.sleep(60)",
            path_str(&d.socket)
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    std::thread::sleep(Duration::from_millis(300));
    // Root is still served; the hog's next request is answered "busy".
    let root = d.cli(&["status", "--user", "root"]);
    assert_eq!(root.code(), 0, "{}", root.stderr());
    let theirs = d.cli_as(Some(&hog.name), &["status", "--json"], None);
    assert_eq!(theirs.code(), 6, "{}", theirs.stdout());
    assert_eq!(theirs.json()["kind"], "busy");
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn full_disk_fails_closed_and_loses_nothing() {
    if !is_root() {
        eprintln!(
            "SKIP full_disk_fails_closed_and_loses_nothing: needs root to mount a small tmpfs"
        );
        return;
    }
    let mut d = Daemon::start_with("");
    // Move the database onto a 3 MiB tmpfs.
    let fs = d.dir.path().join("small");
    std::fs::create_dir(&fs).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs"])
        .arg(&fs)
        .status()
        .unwrap()
        .success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(fs.clone());
    d.database = fs.join("twofold.db");
    std::fs::write(
        &d.config,
        format!(
            "socket = {:?}\ndatabase = {:?}\nissuer = \"test-host\"\n",
            d.socket, d.database
        ),
    )
    .unwrap();
    d.restart();
    ensure_step_time(20);
    let (secret, codes) = d.enroll_now("nora");
    // Fill the file system to the last byte.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", fs.join("filler").display()))
        .stderr(Stdio::null())
        .status();
    // Writes fail now; the daemon must say so, never "accepted", and count nothing.
    let mut refused = 0;
    for _ in 0..50 {
        let r = d.cli(&["verify", "nora", "000000", "--json"]);
        match r.code() {
            1 => continue, // the WAL still had room for this one
            6 => {
                assert_eq!(r.json()["kind"], "storage", "{}", r.stdout());
                refused += 1;
                break;
            }
            other => panic!("unexpected exit {other}: {}", r.stdout()),
        }
    }
    assert_eq!(refused, 1, "the disk never filled up");
    let code = oathtool(&secret, 1);
    let r = d.cli(&["verify", "nora", &code, "--json"]);
    assert_eq!(
        r.code(),
        6,
        "a valid code on a full disk must not be accepted: {}",
        r.stdout()
    );
    let r = d.cli(&["verify", "nora", &codes[0], "--json"]);
    assert_eq!(r.code(), 6, "nor a backup code: {}", r.stdout());
    assert!(d.alive(), "the daemon died on a full disk");
    // Space again: the same code and the same backup code still work: nothing was spent.
    std::fs::remove_file(fs.join("filler")).unwrap();
    assert_eq!(d.cli(&["verify", "nora", &code]).code(), 0);
    let r = d.cli(&["verify", "nora", &codes[0], "--json"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert_eq!(r.json()["backup_codes_left"], 11);
}

#[test]
fn names_without_account_meet_the_same_throttle_as_enrolled_users() {
    let d = Daemon::start_with("");
    let (_s, _c) = d.enroll_now("olga"); // no local account either, but enrolled
    for name in ["olga", "no-such-account-qq"] {
        let codes: Vec<i32> = (0..7)
            .map(|_| d.cli(&["verify", name, "000000"]).code())
            .collect();
        assert_eq!(codes, [1, 1, 1, 1, 1, 3, 3], "{name}");
    }
}

/// Runs the real google-authenticator tool to write `file`; `args` choose the options.
fn google_authenticator(file: &std::path::Path, args: &[&str], stdin: &str) {
    let mut child = Command::new("google-authenticator")
        .args(["-f", "-C", "-q", "-Q", "NONE", "-s"])
        .arg(file)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("google-authenticator is required (Debian package libpam-google-authenticator; scripts/deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn import_from_google_authenticator_keeps_the_phone_and_the_scratch_codes() {
    let d = Daemon::start_with("");
    let file = d.dir.path().join("ga-defaults");
    google_authenticator(&file, &["-t", "-d", "-r", "3", "-R", "30", "-w", "3"], "");
    let before = std::fs::read(&file).unwrap();
    let text = String::from_utf8(before.clone()).unwrap();
    let secret = text.lines().next().unwrap().to_string();
    let scratch: Vec<&str> = text
        .lines()
        .filter(|l| l.len() == 8 && l.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(scratch.len(), 5);
    let r = d.cli(&[
        "import",
        "google-authenticator",
        "--user",
        "pat",
        path_str(&file),
    ]);
    assert_eq!(r.code(), 0, "{} {}", r.stdout(), r.stderr());
    assert!(
        r.stdout().contains("pat imported") && r.stdout().contains("backup codes 5"),
        "{}",
        r.stdout()
    );
    assert!(
        r.stderr().contains("RATE_LIMIT not imported"),
        "{}",
        r.stderr()
    );
    // The source file is untouched.
    assert_eq!(std::fs::read(&file).unwrap(), before);
    // The phone's codes work at once (no confirmation step), exactly once.
    ensure_step_time(5);
    let code = oathtool(&secret, 0);
    assert_eq!(d.cli(&["verify", "pat", &code]).code(), 0);
    assert_eq!(d.cli(&["verify", "pat", &code]).code(), 1);
    // Scratch codes are single-use backup codes, stored hashed.
    let r = d.cli(&["verify", "pat", scratch[2], "--json"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert_eq!(r.json()["backup_codes_left"], 4);
    assert_eq!(d.cli(&["verify", "pat", scratch[2]]).code(), 1);
    let strings = Command::new("strings").arg(&d.database).output().unwrap();
    for s in &scratch {
        assert!(
            !String::from_utf8_lossy(&strings.stdout).contains(s),
            "a scratch code is stored in clear"
        );
    }
    // Importing again needs --force.
    let again = d.cli(&[
        "import",
        "google-authenticator",
        "--user",
        "pat",
        path_str(&file),
        "--json",
    ]);
    assert_eq!(again.code(), 2);
    assert_eq!(again.json()["kind"], "already_enrolled");
    assert_eq!(
        d.cli(&[
            "import",
            "google-authenticator",
            "--user",
            "pat",
            path_str(&file),
            "--force"
        ])
        .code(),
        0
    );
    assert!(d
        .cli(&["audit", "--user", "pat"])
        .stdout()
        .contains("import"));
}

#[test]
fn import_keeps_step_size_and_window() {
    let d = Daemon::start_with("");
    let file = d.dir.path().join("ga-wide");
    google_authenticator(
        &file,
        &["-t", "-D", "-u", "-S", "60", "-w", "17", "-e", "0"],
        "",
    );
    let secret = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        d.cli(&[
            "import",
            "google-authenticator",
            "--user",
            "quinn",
            path_str(&file)
        ])
        .code(),
        0
    );
    // 60-second steps, and 4 steps back is inside a window of 17 codes (±8).
    let old = Command::new("oathtool")
        .args([
            "--totp",
            "-s",
            "60s",
            "-b",
            "-N",
            "now - 240 seconds",
            &secret,
        ])
        .output()
        .unwrap();
    let old = String::from_utf8(old.stdout).unwrap().trim().to_string();
    assert_eq!(d.cli(&["verify", "quinn", &old]).code(), 0);
    // A 30-second code of the same key is not one of these.
    assert_eq!(d.cli(&["verify", "quinn", &oathtool(&secret, 0)]).code(), 1);
}

/// A counter-based file made by google-authenticator itself (`-c`) imports: its next counter
/// (HOTP_COUNTER) is the next code oathtool --hotp makes, and its scratch codes come along.
#[test]
fn import_of_a_counter_based_google_authenticator_file() {
    let d = Daemon::start_with("");
    let file = d.dir.path().join("ga-hotp");
    google_authenticator(&file, &["-c", "-w", "3"], "n\n");
    let text = std::fs::read_to_string(&file).unwrap();
    let secret = text.lines().next().unwrap().to_string();
    let next: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("\" HOTP_COUNTER "))
        .expect("google-authenticator -c writes HOTP_COUNTER")
        .trim()
        .parse()
        .unwrap();
    let r = d.cli(&[
        "import",
        "google-authenticator",
        "--user",
        "ruth",
        path_str(&file),
    ]);
    assert_eq!(r.code(), 0, "{}{}", r.stdout(), r.stderr());
    let hotp = |counter: u64| {
        let out = Command::new("oathtool")
            .args(["--hotp", "-b", "-c", &counter.to_string(), &secret])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(d.cli(&["verify", "ruth", &hotp(next)]).code(), 0);
    assert_eq!(d.cli(&["verify", "ruth", &hotp(next)]).code(), 1, "spent");
    assert_eq!(d.cli(&["verify", "ruth", &hotp(next + 3)]).code(), 0);
    assert_eq!(d.cli(&["verify", "ruth", &hotp(next + 2)]).code(), 1);
    let listed = d
        .cli(&["authenticators", "--user", "ruth", "--json"])
        .json();
    let a = &listed["authenticators"][0];
    assert_eq!(
        (a["kind"].as_str(), a["counter"].as_u64()),
        (Some("hotp"), Some(next + 4)),
        "{listed}"
    );
    let shown = d.cli(&["authenticators", "--user", "ruth"]).stdout();
    assert!(
        shown.contains(&format!("HOTP, SHA1, 6 digits, next counter {}", next + 4)),
        "{shown}"
    );
    assert!(!shown.contains(&secret) && !d.log().contains(&secret));
}

#[test]
fn import_refuses_malformed_files_with_the_reason() {
    let d = Daemon::start_with("");
    let cases: [(&str, &[u8], &str); 5] = [
        ("empty", b"", "empty"),
        ("short-key", b"JBSWY3DPEHPK3PXP\n\" TOTP_AUTH\n", "80 bits"),
        ("garbage", b"\xff\xfe\x00binary", "not a text file"),
        (
            "bad-line",
            b"4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" TOTP_AUTH\nhello\n",
            "line 3",
        ),
        (
            "no-mode",
            b"4JZ5HSY5CTMVUR6GNXOGOFGYQA\n12345678\n",
            "neither a TOTP_AUTH nor a HOTP_COUNTER",
        ),
    ];
    for (name, content, want) in cases {
        let f = d.dir.path().join(name);
        std::fs::write(&f, content).unwrap();
        let r = d.cli(&[
            "import",
            "google-authenticator",
            "--user",
            "ruth",
            path_str(&f),
        ]);
        assert_eq!(r.code(), 2, "{name}");
        assert!(r.stderr().contains(want), "{name}: {}", r.stderr());
        assert_eq!(
            std::fs::read(&f).unwrap(),
            content,
            "{name}: the file changed"
        );
    }
    let missing = d.cli(&[
        "import",
        "google-authenticator",
        "--user",
        "ruth",
        "/nonexistent/ga",
    ]);
    assert_eq!(missing.code(), 2);
    assert_eq!(
        d.cli(&["status", "--user", "ruth", "--json"]).json()["enrolled"],
        false
    );
}

#[test]
fn import_reads_the_users_own_file_but_never_through_a_symlink() {
    if !is_root() {
        eprintln!("SKIP import_reads_the_users_own_file_but_never_through_a_symlink: needs root to create a user");
        return;
    }
    let d = Daemon::start_with("");
    let u = TestUser::create_unique("tf-ga");
    let home = std::path::PathBuf::from(format!("/home/{}", u.name));
    let own = home.join(".google_authenticator");
    // Written by the user, as they would have, with the real tool.
    let write_own_file = || {
        let status = Command::new("setpriv")
            .args([
                "--reuid",
                &u.name,
                "--regid",
                &u.name,
                "--init-groups",
                "--",
            ])
            .args([
                "google-authenticator",
                "-t",
                "-d",
                "-f",
                "-C",
                "-q",
                "-Q",
                "NONE",
            ])
            .args(["-w", "3", "-r", "3", "-R", "30"])
            .env("HOME", &home)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };
    write_own_file();
    let r = d.cli(&["import", "google-authenticator", "--user", &u.name]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    // A user who points the file at something of root's gets nothing read.
    std::fs::remove_file(&own).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &own).unwrap();
    let r = d.cli(&[
        "import",
        "google-authenticator",
        "--user",
        &u.name,
        "--force",
    ]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("symbolic link"), "{}", r.stderr());
    // Nor through a hard link (finding 10 of the 2026-11 review; possible for any user where
    // fs.protected_hardlinks is off): a second name for a file is refused.
    std::fs::remove_file(&own).unwrap();
    write_own_file();
    let second = home.join("second-name");
    std::fs::hard_link(&own, &second).unwrap();
    let r = d.cli(&[
        "import",
        "google-authenticator",
        "--user",
        &u.name,
        "--force",
    ]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("hard links"), "{}", r.stderr());
    std::fs::remove_file(&second).unwrap();
    // Users may not import, not even their own file: the daemon refuses (exit 5).
    std::fs::remove_file(&own).unwrap();
    write_own_file();
    let r = d.cli_as(
        Some(&u.name),
        &[
            "import",
            "google-authenticator",
            "--user",
            &u.name,
            "--force",
        ],
        None,
    );
    assert_eq!(r.code(), 5, "{}", r.stderr());
}

#[test]
fn a_user_changes_their_own_email_address_only_with_a_current_code() {
    if !is_root() {
        eprintln!(
            "SKIP a_user_changes_their_own_email_address_only_with_a_current_code: needs root to create a test user"
        );
        return;
    }
    let (spool, program) = sendmail_spool();
    let d = Daemon::start_with(&format!(
        "email_codes = true\nemail_resend_secs = 0\n[email]\nsendmail = {program:?}\n"
    ));
    let me = TestUser::create_unique("tf-e");
    let other = TestUser::create_unique("tf-f");
    let (secret, _) = d.enroll_now(&me.name);
    let mailed = || last_mailed(&spool);
    // Enrolled: registering an address changes the second factor, so it needs a code.
    let no_code = d.cli_as(Some(&me.name), &["email", "set", "me@example.org"], None);
    assert_eq!(no_code.code(), 2, "{}", no_code.stderr());
    assert!(
        no_code.stderr().contains("current code"),
        "{}",
        no_code.stderr()
    );
    ensure_step_time(5);
    let set = d.cli_as(
        Some(&me.name),
        &["email", "set", "me@example.org", "--code", "-"],
        Some(&format!("{}\n", oathtool(&secret, 1))),
    );
    assert_eq!(set.code(), 0, "{}", set.stderr());
    let confirm = d.cli_as(Some(&me.name), &["email", "confirm", &mailed()], None);
    assert_eq!(confirm.code(), 0, "{}", confirm.stderr());
    let status = d.cli_as(Some(&me.name), &["status", "--json"], None).json();
    assert_eq!(status["email"], "m***@example.org");
    assert_eq!(status["email_verified"], true);
    // Someone else's address: permission denied (exit 5), whatever the command.
    for args in [
        vec!["email", "set", "x@example.org", "--user", &other.name],
        vec!["email", "confirm", "123456", "--user", &other.name],
        vec!["email", "remove", "--user", &other.name],
    ] {
        let r = d.cli_as(Some(&me.name), &args, None);
        assert_eq!(r.code(), 5, "{args:?}: {}", r.stderr());
    }
    // Bad addresses are refused before anything is mailed.
    for bad in ["no-at-sign", "a@b@c", "a b@example.org"] {
        let r = d.cli(&["email", "set", bad, "--user", &other.name]);
        assert_eq!(r.code(), 2, "{bad}: {}", r.stderr());
    }
    // Removing needs a code too.
    let remove = d.cli_as(Some(&me.name), &["email", "remove"], None);
    assert_eq!(remove.code(), 2, "{}", remove.stderr());
    assert!(d.log().contains("outcome=sent"), "{}", d.log());
}

/// A stand-in sendmail (run by twofoldd, root here) keeping the last message in the directory
/// returned; and the program's path.
fn sendmail_spool() -> (tempfile::TempDir, std::path::PathBuf) {
    let spool = tempfile::tempdir().unwrap();
    let program = spool.path().join("sendmail");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\ncat > {0}/m.tmp && mv {0}/m.tmp {0}/message\n",
            spool.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    (spool, program)
}

fn last_mailed(spool: &tempfile::TempDir) -> String {
    let m = std::fs::read_to_string(spool.path().join("message")).unwrap();
    m.split_whitespace()
        .find(|w| w.len() == 7 && w.as_bytes()[3] == b'-')
        .unwrap()
        .to_string()
}

/// Finding 2 of the 2026-11 review: an email-only user (a stolen shell) could enroll an app of
/// its own without proving the address; and finding 10: root's `verify` of a mailed code
/// consumed it and then exited 2.
#[test]
fn an_email_only_user_adds_an_app_only_with_a_mailed_code() {
    if !is_root() {
        eprintln!("SKIP an_email_only_user_adds_an_app_only_with_a_mailed_code: needs root to create a test user");
        return;
    }
    let (spool, program) = sendmail_spool();
    let d = Daemon::start_with(&format!(
        "email_codes = true\nemail_auto = true\nemail_resend_secs = 0\n[email]\nsendmail = {program:?}\n"
    ));
    let me = TestUser::create_unique("tf-g");
    let other = TestUser::create_unique("tf-h");
    for u in [&me.name, &other.name] {
        let set = d.cli(&["email", "set", "x@example.org", "--user", u]);
        assert_eq!(set.code(), 0, "{}", set.stderr());
        let ok = d.cli(&["email", "confirm", &last_mailed(&spool), "--user", u]);
        assert_eq!(ok.code(), 0, "{}", ok.stderr());
    }
    let no_code = d.cli_as(Some(&me.name), &["enroll", "--json"], None);
    assert_eq!(no_code.code(), 2, "{}", no_code.stdout());
    assert!(
        no_code.stdout().contains("mailed to x***@example.org"),
        "{}",
        no_code.stdout()
    );
    let wrong = d.cli_as(
        Some(&me.name),
        &["enroll", "--json", "--code", "000-000"],
        None,
    );
    assert_eq!(wrong.code(), 1, "{}", wrong.stdout());
    // A new code was mailed by the first attempt; the wrong try did not kill it.
    let e = d.cli_as(
        Some(&me.name),
        &["enroll", "--json", "--code", "-"],
        Some(&format!("{}\n", last_mailed(&spool))),
    );
    assert_eq!(e.code(), 0, "{} {}", e.stdout(), e.stderr());
    let secret = e.json()["secret"].as_str().unwrap().to_string();
    let c = d.cli_as(Some(&me.name), &["confirm", &oathtool(&secret, 0)], None);
    assert_eq!(c.code(), 0, "{}", c.stderr());
    // Root checks a mailed login code: accepted, exit 0 (it was "unexpected answer", exit 2).
    let mailed = d.cli_as(Some(&other.name), &["enroll", "--json"], None);
    assert_eq!(mailed.code(), 2, "{}", mailed.stdout());
    let v = d.cli(&["verify", &other.name, &last_mailed(&spool)]);
    assert_eq!(v.code(), 0, "{} {}", v.stdout(), v.stderr());
    assert!(
        v.stdout().contains("Mailed code accepted"),
        "{}",
        v.stdout()
    );
    let again = d.cli(&["verify", &other.name, &last_mailed(&spool)]);
    assert_eq!(again.code(), 1, "spent: {}", again.stderr());
}

/// Finding 10 of the 2026-11 review: root's `--qr-svg` followed a user's directory symlinks and
/// created a root-owned file wherever they pointed.
#[test]
fn root_writes_the_qr_image_only_into_a_directory_of_roots() {
    if !is_root() {
        eprintln!("SKIP root_writes_the_qr_image_only_into_a_directory_of_roots: needs root");
        return;
    }
    let d = Daemon::start_with("");
    let u = TestUser::create_unique("tf-qr");
    let home = std::path::PathBuf::from(format!("/home/{}", u.name));
    let target = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(target.path(), home.join("link")).unwrap();
    for (path, why) in [
        (home.join("qr.svg"), "not root's"),
        (home.join("link").join("qr.svg"), "symbolic link"),
    ] {
        let r = d.cli(&[
            "enroll",
            "--user",
            &u.name,
            "--qr-svg",
            path_str(&path),
            "--json",
        ]);
        assert_eq!(r.code(), 2, "{}", r.stdout());
        assert!(r.stdout().contains(why), "{}", r.stdout());
        assert!(!path.exists());
    }
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
    let ok = target.path().join("qr.svg");
    let r = d.cli(&[
        "enroll",
        "--user",
        &u.name,
        "--force",
        "--qr-svg",
        path_str(&ok),
        "--json",
    ]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert!(std::fs::read_to_string(&ok).unwrap().starts_with("<?xml"));
}

#[test]
fn json_mode_prints_json_even_for_local_errors() {
    let d = Daemon::start_with("");
    // No code on standard input.
    let r = d.cli(&["verify", "root", "-", "--json"]);
    assert_eq!(r.code(), 2);
    assert_eq!(r.json()["result"], "error");
    // A QR image that cannot be written.
    let r = d.cli(&[
        "enroll",
        "--user",
        "vera",
        "--qr-svg",
        "/nonexistent/dir/qr.svg",
        "--json",
    ]);
    assert_eq!(r.code(), 2);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("cannot write"));
}

#[test]
fn a_flood_at_a_throttled_account_is_recorded_once_a_minute() {
    let d = Daemon::start_with("[throttle]\nfree_failures = 1\nlockout_after = 0");
    d.enroll_now("flo");
    // One wrong code (free), then a flood at the throttled account.
    assert_eq!(d.cli(&["verify", "flo", "000000"]).code(), 1);
    let mut throttled = 0;
    for _ in 0..40 {
        let c = d.cli(&["verify", "flo", "000000"]).code();
        assert!(c == 3 || c == 1, "exit {c}");
        throttled += usize::from(c == 3);
    }
    assert!(
        throttled >= 30,
        "the throttle did not hold: {throttled} of 40"
    );
    let r = d.cli(&["audit", "--user", "flo", "--json"]);
    let rows = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "login" && e["outcome"] == "throttled")
        .count();
    assert_eq!(
        rows, 1,
        "one audit entry a minute for refusals by the throttle"
    );
    let throttled_lines = d
        .log()
        .lines()
        .filter(|l| l.contains("user=flo") && l.contains("outcome=throttled"))
        .count();
    assert_eq!(throttled_lines, 1, "{}", d.log());
    // The throttle itself still counts nothing more and still refuses.
    assert_eq!(d.cli(&["verify", "flo", "000000"]).code(), 3);
}

/// The code for `secret` with other parameters, from oathtool.
fn oathtool_with(secret: &str, algorithm: &str, digits: u32, period: u64, steps: i64) -> String {
    let when = format!(
        "now {} {} seconds",
        if steps < 0 { "-" } else { "+" },
        steps.unsigned_abs() * period
    );
    let out = Command::new("oathtool")
        .args([
            &format!("--totp={algorithm}"),
            "-b",
            "-d",
            &digits.to_string(),
            "-s",
            &format!("{period}s"),
            "-N",
            &when,
            secret,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn enrollment_with_sha256_eight_digits_and_a_minute_step() {
    let d = Daemon::start_with("");
    for (user, alg, digits, period, key_bytes) in [
        ("alg256", "sha256", 8u32, 60u64, 32usize),
        ("alg512", "sha512", 6, 30, 64),
    ] {
        let e = d.cli(&[
            "enroll",
            "--user",
            user,
            "--algorithm",
            alg,
            "--digits",
            &digits.to_string(),
            "--period",
            &period.to_string(),
            "--json",
        ]);
        assert_eq!(e.code(), 0, "{}", e.stderr());
        let secret = e.json()["secret"].as_str().unwrap().to_string();
        let uri = e.json()["otpauth_uri"].as_str().unwrap().to_string();
        assert!(
            uri.contains(&format!("algorithm={}", alg.to_uppercase())),
            "{uri}"
        );
        if digits != 6 {
            assert!(uri.contains("digits=8"), "{uri}");
        }
        if period != 30 {
            assert!(uri.contains("period=60"), "{uri}");
        }
        // The key is as long as the hash's output.
        assert_eq!(secret.len(), (key_bytes * 8).div_ceil(5), "{secret}");
        // Codes computed by oathtool with the same parameters.
        let left = period
            - (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                % period);
        if left < 5 {
            std::thread::sleep(Duration::from_secs(left + 1));
        }
        let first = oathtool_with(&secret, alg, digits, period, 0);
        assert_eq!(first.len(), digits as usize);
        let c = d.cli(&["confirm", &first, "--user", user]);
        assert_eq!(c.code(), 0, "{} {}", c.stdout(), c.stderr());
        let next = oathtool_with(&secret, alg, digits, period, 1);
        assert_eq!(d.cli(&["verify", user, &next]).code(), 0);
        assert_eq!(d.cli(&["verify", user, &next]).code(), 1, "replay");
    }
    for (args, why) in [
        (&["--digits", "7"][..], "6 or 8"),
        (&["--period", "5"][..], "15 to 300"),
        (&["--algorithm", "md5"][..], "sha1, sha256 or sha512"),
    ] {
        let mut all = vec!["enroll", "--user", "badparams"];
        all.extend_from_slice(args);
        let r = d.cli(&all);
        assert_eq!(r.code(), 2, "{args:?}: {}", r.stdout());
        assert!(r.stderr().contains(why), "{args:?}: {}", r.stderr());
    }
}
