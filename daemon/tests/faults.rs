//! The fault matrix (issue 7): twofoldd killed in the middle of every kind of write, a database
//! that is read-only, locked by another process, corrupt or not private, a flood of idle and
//! trickling connections from an unprivileged user, and a clock set back an hour. Real
//! processes, a real SQLite file, codes from oathtool. Each case must fail closed (never
//! "accepted" for what is not valid), lose nothing, say why, and work again once the fault is
//! gone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twofold_tests::*;

fn integrity(db: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Accepted logins of `user` in the audit trail.
fn accepted_logins(d: &Daemon, user: &str) -> usize {
    let r = d.cli(&["audit", "--user", user, "--json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "login" && e["outcome"] == "accepted")
        .count()
}

fn status(d: &Daemon, user: &str) -> serde_json::Value {
    let r = d.cli(&["status", "--user", user, "--json"]);
    assert_eq!(r.code(), 0, "status: {} {}", r.stdout(), r.stderr());
    r.json()
}

/// Enrolls `count` users named `prefix`NN, four at a time.
fn enroll_many(d: &Daemon, prefix: &str, count: usize) -> Vec<(String, String)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|part| {
                s.spawn(move || {
                    (part..count)
                        .step_by(4)
                        .map(|i| {
                            let name = format!("{prefix}{i:02}");
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
    })
}

#[test]
fn sigkill_while_verifying_leaves_every_code_used_or_unused() {
    let mut d = Daemon::start_with("backup_codes = 1");
    let users = enroll_many(&d, "kv", 48);
    let mut interrupted = 0;
    // Three rounds of 16 parallel logins, killed after 2, 8 and 20 ms.
    for (round, delay) in [2u64, 8, 20].into_iter().enumerate() {
        let batch: Vec<(String, String)> = users[round * 16..(round + 1) * 16].to_vec();
        ensure_step_time(15);
        // +1: ahead of the step each confirmation consumed.
        let work: Vec<(String, String)> = batch
            .iter()
            .map(|(n, s)| (n.clone(), oathtool(s, 1)))
            .collect();
        let socket = d.socket.clone();
        let handles: Vec<_> = work
            .iter()
            .cloned()
            .map(|(name, code)| {
                let socket = socket.clone();
                std::thread::spawn(move || {
                    let out = Command::new(twofold_cli())
                        .arg("--socket")
                        .arg(&socket)
                        .args(["verify", &name, &code])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .unwrap();
                    out.code().unwrap_or(-1)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(delay));
        d.stop(); // SIGKILL
        let first: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        d.restart();
        assert_eq!(integrity(&d.database), "ok", "round {round}");
        for ((name, code), before) in work.iter().zip(&first) {
            let again = d.cli(&["verify", name, code]).code();
            match before {
                // Acknowledged: it was durable, so it is now a replay.
                0 => assert_eq!(again, 1, "{name}: an accepted code came back after SIGKILL"),
                // Never acknowledged: consumed or not, but nothing in between.
                _ => {
                    interrupted += 1;
                    assert!(again == 0 || again == 1, "{name}: exit {again}");
                }
            }
            assert_eq!(d.cli(&["verify", name, code]).code(), 1, "{name}: replay");
            assert_eq!(
                accepted_logins(&d, name),
                1,
                "{name}: the code's use and its audit entry are one transaction"
            );
        }
    }
    eprintln!("sigkill_while_verifying: {interrupted} of 48 logins were cut off by the kill");
}

/// The administrative writes, each killed at several moments: afterwards the account is in
/// exactly its old or its new state, and the database is intact.
#[test]
fn sigkill_during_enroll_confirm_regenerate_and_reset_keeps_old_or_new_state() {
    let mut d = Daemon::start_with("backup_codes = 2");
    for (i, delay) in [0u64, 3, 10, 25].into_iter().enumerate() {
        // Enrollment (a pending secret) killed: no enrollment, or a pending one.
        let user = format!("ke{i}");
        kill_during(&mut d, &["enroll", "--user", &user, "--json"], delay);
        let s = status(&d, &user);
        assert_eq!(s["enrolled"], false, "{s}");
        // Either way a new enrollment can start and finish.
        let (secret, _) = d.enroll_now(&user);
        assert!(!secret.is_empty());

        // Confirmation killed: still pending (confirm again works) or enrolled (codes work).
        let user = format!("kc{i}");
        let e = d.cli(&["enroll", "--user", &user, "--json"]);
        assert_eq!(e.code(), 0);
        let secret = e.json()["secret"].as_str().unwrap().to_string();
        ensure_step_time(10);
        kill_during(
            &mut d,
            &["confirm", &oathtool(&secret, 0), "--user", &user],
            delay,
        );
        let s = status(&d, &user);
        if s["enrolled"] == true {
            assert_eq!(s["pending"], false, "{s}");
            assert_eq!(s["backup_codes_left"], 2, "{s}");
            assert_eq!(d.cli(&["verify", &user, &oathtool(&secret, 1)]).code(), 0);
        } else {
            assert_eq!(s["pending"], true, "neither old nor new: {s}");
            let c = d.cli(&["confirm", &oathtool(&secret, 1), "--user", &user]);
            assert_eq!(c.code(), 0, "{}", c.stderr());
        }

        // Regeneration of backup codes killed: the old set or a full new one.
        let user = format!("kb{i}");
        let (_, old) = d.enroll_now(&user);
        kill_during(&mut d, &["backup-codes", "--user", &user], delay);
        assert_eq!(status(&d, &user)["backup_codes_left"], 2);
        let first = d.cli(&["verify", &user, &old[0]]).code();
        let second = d.cli(&["verify", &user, &old[1]]).code();
        assert!(
            (first == 0 && second == 0) || (first == 1 && second == 1),
            "half of the old backup codes survived: {first} {second}"
        );

        // Reset killed: still enrolled (codes work) or not enrolled at all.
        let user = format!("kr{i}");
        let (secret, _) = d.enroll_now(&user);
        kill_during(&mut d, &["disable", "--user", &user], delay);
        let s = status(&d, &user);
        ensure_step_time(5);
        let v = d.cli(&["verify", &user, &oathtool(&secret, 1)]).code();
        if s["enrolled"] == true {
            assert_eq!(v, 0, "enrolled but the code fails");
        } else {
            assert_eq!(s["backup_codes_left"], 0, "{s}");
            // No enrollment (and no account by that name): refused like any unknown name.
            assert_eq!(v, 1, "reset, so the old secret must not work");
        }
    }
}

/// Runs `twofold ARGS` and SIGKILLs the daemon `delay_ms` later; restarts it and checks the
/// database's integrity.
fn kill_during(d: &mut Daemon, args: &[&str], delay_ms: u64) {
    let mut child = Command::new(twofold_cli())
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(delay_ms));
    d.stop();
    let _ = child.wait();
    d.restart();
    assert_eq!(
        integrity(&d.database),
        "ok",
        "{args:?} killed after {delay_ms} ms"
    );
}

/// Another process holds the write lock (an administrator's `sqlite3` in `BEGIN EXCLUSIVE`):
/// a login is refused within the PAM timeout with the reason logged, and works once released.
#[test]
fn database_locked_by_another_process_fails_closed_then_recovers() {
    let d = Daemon::start_with("");
    let (secret, _) = d.enroll_now("lena");
    let holder = rusqlite::Connection::open(&d.database).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    ensure_step_time(12);
    let code = oathtool(&secret, 1);
    let t = Instant::now();
    let r = d.cli(&["verify", "lena", &code, "--json"]);
    let took = t.elapsed();
    assert_eq!(
        r.code(),
        6,
        "locked database: {} {}",
        r.stdout(),
        r.stderr()
    );
    assert_eq!(r.json()["kind"], "storage", "{}", r.stdout());
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}, beyond the module's default timeout"
    );
    assert!(
        d.log().contains("database is locked"),
        "no reason in the log: {}",
        d.log()
    );
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    // Nothing was spent: the same code works now.
    assert_eq!(d.cli(&["verify", "lena", &code]).code(), 0);
}

/// The database turns read-only while twofoldd runs. Root ignores file modes, so the files are
/// made immutable (`chattr +i`, which binds root too); a read-only remount is refused by the
/// kernel while twofoldd holds the files open for writing.
#[test]
fn read_only_database_fails_closed_then_recovers() {
    if !is_root() {
        eprintln!("SKIP read_only_database_fails_closed_then_recovers: chattr +i needs root");
        return;
    }
    let mut d = Daemon::start_with("");
    let (secret, codes) = d.enroll_now("rosa");
    // The database and its write-ahead log; not the -shm index, which SQLite maps into memory
    // (a write to a mapped page of an immutable file is SIGBUS, not an error SQLite could
    // report; a file system that fails that way takes the daemon down, which also fails closed).
    let files: Vec<std::path::PathBuf> = ["", "-wal"]
        .iter()
        .map(|s| Path::new(&format!("{}{s}", d.database.display())).to_path_buf())
        .filter(|p| p.exists())
        .collect();
    let chattr = |flag: &str| {
        let out = Command::new("chattr")
            .arg(flag)
            .args(&files)
            .output()
            .expect("chattr (Debian package e2fsprogs) is required to make the database read-only");
        assert!(
            out.status.success(),
            "chattr {flag} failed (the test directory must be on ext4, xfs or btrfs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    struct Mutable(Vec<std::path::PathBuf>);
    impl Drop for Mutable {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").args(&self.0).status();
        }
    }
    let _mutable = Mutable(files.clone());
    chattr("+i");
    ensure_step_time(12);
    let code = oathtool(&secret, 1);
    let t = Instant::now();
    let r = d.cli(&["verify", "rosa", &code, "--json"]);
    assert_eq!(r.code(), 6, "read-only: {} {}", r.stdout(), r.stderr());
    assert_eq!(r.json()["kind"], "storage", "{}", r.stdout());
    assert!(t.elapsed() < Duration::from_secs(5));
    let r = d.cli(&["verify", "rosa", &codes[0], "--json"]);
    assert_eq!(
        r.code(),
        6,
        "backup code on a read-only database: {}",
        r.stdout()
    );
    let r = d.cli(&["verify", "rosa", "000000", "--json"]);
    assert_eq!(
        r.code(),
        6,
        "a failure that cannot be counted is not answered: {}",
        r.stdout()
    );
    let log = d.log();
    assert!(
        log.contains("verify user=rosa failed: database"),
        "no reason in the log: {log}"
    );
    assert!(d.alive(), "the daemon died on a read-only database");
    chattr("-i");
    // Nothing was spent or counted: the same code and backup code work now.
    assert_eq!(d.cli(&["verify", "rosa", &code]).code(), 0);
    assert_eq!(d.cli(&["verify", "rosa", &codes[0]]).code(), 0);
    assert_eq!(status(&d, "rosa")["failures"], 0);
}

/// A flipped header or a truncated file: twofoldd refuses to start and says why, and starts
/// again once the administrator puts the good copy back.
#[test]
fn corrupt_database_is_refused_with_the_reason_and_a_restored_copy_works() {
    let mut d = Daemon::start_with("");
    let (secret, _) = d.enroll_now("cora");
    d.stop();
    // Fold the WAL into the file so that the copy is the whole database.
    {
        let c = rusqlite::Connection::open(&d.database).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let good = std::fs::read(&d.database).unwrap();
    assert!(good.len() >= 8192);

    let mut flipped = good.clone();
    for b in &mut flipped[..16] {
        *b ^= 0xff;
    }
    std::fs::write(&d.database, &flipped).unwrap();
    let (code, err) = refused_start(&d.config);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot open database"), "{err}");
    assert!(err.contains("not a database"), "{err}");
    assert_eq!(
        std::fs::read(&d.database).unwrap(),
        flipped,
        "left for inspection"
    );

    std::fs::write(&d.database, &good[..good.len() / 2]).unwrap();
    let (code, err) = refused_start(&d.config);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("malformed") || err.contains("corrupt") || err.contains("not a database"),
        "{err}"
    );

    std::fs::write(&d.database, &good).unwrap();
    d.restart();
    ensure_step_time(5);
    assert_eq!(d.cli(&["verify", "cora", &oathtool(&secret, 1)]).code(), 0);
}

/// A database path others could read or swap: twofoldd refuses to start and says why.
#[test]
fn unsafe_database_paths_are_refused_at_start() {
    let mut d = Daemon::start_with("");
    d.enroll_now("pia");
    d.stop();
    let state = d.database.parent().unwrap().to_path_buf();
    let set_mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();

    set_mode(&d.database, 0o644);
    let (code, err) = refused_start(&d.config);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("open to group or others") && err.contains("chmod 600"),
        "{err}"
    );
    set_mode(&d.database, 0o600);

    set_mode(&state, 0o755);
    let (code, err) = refused_start(&d.config);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("readable by others"), "{err}");
    set_mode(&state, 0o777);
    let (code, err) = refused_start(&d.config);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("writable by others"), "{err}");
    set_mode(&state, 0o700);

    // A symbolic link at the database path (to the real file, even).
    let real = state.join("real.db");
    std::fs::rename(&d.database, &real).unwrap();
    std::os::unix::fs::symlink(&real, &d.database).unwrap();
    let (code, err) = refused_start(&d.config);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    std::fs::remove_file(&d.database).unwrap();
    std::fs::rename(&real, &d.database).unwrap();

    d.restart();
    assert_eq!(status(&d, "pia")["enrolled"], true);
}

/// An unprivileged user opens 1,000 connections and trickles bytes into others; root's
/// requests (what PAM sends) are still answered, each within the module's timeout.
#[test]
fn idle_and_trickling_connections_of_a_user_do_not_starve_root() {
    if !is_root() {
        eprintln!(
            "SKIP idle_and_trickling_connections_of_a_user_do_not_starve_root: needs root to \
             act as another user"
        );
        return;
    }
    let d = Daemon::start_with("request_timeout = 5");
    let (secret, _) = d.enroll_now("ida");
    let script = r#"
import socket, sys, time
path = sys.argv[1]
held = []
for i in range(1000):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        continue
    held.append(s)
trickle = held[:50]
end = time.time() + float(sys.argv[2])
while time.time() < end:
    for s in trickle:
        try:
            s.send(b"\x00")
        except OSError:
            pass
    time.sleep(0.05)
print(len(held), flush=True)
"#;
    let attacker = Command::new("sh")
        .args(["-c", "ulimit -n 4096; exec setpriv --reuid nobody --regid nogroup --clear-groups -- /usr/bin/python3 -c \"$0\" \"$1\" \"$2\""])
        .arg(script)
        .arg(&d.socket)
        .arg("8")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t = Instant::now();
        let r = d.cli(&["status", "--user", "root"]);
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            r.code(),
            0,
            "root's request {i} under the flood: {}",
            r.stderr()
        );
    }
    ensure_step_time(10);
    let t = Instant::now();
    assert_eq!(d.cli(&["verify", "ida", &oathtool(&secret, 1)]).code(), 0);
    slowest = slowest.max(t.elapsed());
    assert!(
        slowest < Duration::from_secs(5),
        "root waited {slowest:?} under the flood"
    );
    let out = attacker.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the flooding process failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "idle flood: the unprivileged user held {} connection(s); root's slowest answer {slowest:?}",
        stdout.trim()
    );
}

/// The system clock goes back an hour (twofoldd restarted under libfaketime): codes of that
/// earlier time are valid by the clock but older than the last accepted one, so they are
/// refused, and the daemon says the clock went back.
#[test]
fn clock_set_back_an_hour_does_not_revive_old_codes() {
    let faketime = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libfaketime is required (Debian package faketime; scripts/deps.sh installs it)");
    let mut d = Daemon::start_with("");
    let (secret, _) = d.enroll_now("tara");
    ensure_step_time(8);
    assert_eq!(d.cli(&["verify", "tara", &oathtool(&secret, 1)]).code(), 0);
    d.stop();
    let log = std::fs::File::create(d.dir.path().join("twofoldd-faketime.log")).unwrap();
    let mut child = Command::new(twofoldd())
        .arg("--config")
        .arg(&d.config)
        .env("LD_PRELOAD", faketime)
        .env("FAKETIME", "-1h")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "twofoldd under faketime did not start"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "twofoldd under faketime exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The codes an hour ago: what the daemon's clock now calls current.
    let mut results = Vec::new();
    for back in [-121, -120, -119] {
        results.push(d.cli(&["verify", "tara", &oathtool(&secret, back)]).code());
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(d.dir.path().join("twofoldd-faketime.log")).unwrap();
    assert!(
        results.iter().all(|c| *c == 1 || *c == 3),
        "an old code was accepted after the clock went back: {results:?}\n{log}"
    );
    assert!(
        log.contains("clock"),
        "nothing in the log says the clock is behind: {log}"
    );
}

/// twofoldd and twofold mark themselves not dumpable: the kernel then gives their /proc entries
/// to root (/proc/PID/environ, mem, …), whoever runs them: no core dumps, no ptrace or reading
/// of their memory by their own user.
#[test]
fn processes_are_not_dumpable() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        eprintln!("SKIP processes_are_not_dumpable: needs root to run them as another user");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&state, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let socket = state.join("s");
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        format!("socket = {:?}\ndatabase = {:?}\n", socket, state.join("db")),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |program: PathBuf| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            "--",
        ])
        .arg(program);
        c
    };
    let mut daemon = as_nobody(twofoldd())
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "twofoldd as nobody did not start"
        );
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "twofoldd as nobody exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The CLI waits for a code on standard input (`-`) before it does anything.
    let mut cli = as_nobody(twofold_cli())
        .arg("--socket")
        .arg(&socket)
        .args(["confirm", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let owner = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/environ"))
            .unwrap()
            .uid()
    };
    let (d_owner, c_owner) = (owner(daemon.id()), owner(cli.id()));
    let _ = cli.kill();
    let _ = cli.wait();
    let _ = daemon.kill();
    let _ = daemon.wait();
    // Control: a dumpable process of nobody's owns its /proc entry.
    let mut sleeper = as_nobody(PathBuf::from("sleep")).arg("5").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let s_owner = owner(sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(
        s_owner,
        nobody.uid.as_raw(),
        "control: an ordinary process of nobody"
    );
    assert_eq!(d_owner, 0, "twofoldd is dumpable");
    assert_eq!(c_owner, 0, "twofold is dumpable");
}
