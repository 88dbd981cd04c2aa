//! Measurements for scripts/bench.sh. Each subcommand prints one JSON object on stdout.
//!
//! `capacity`: accepted verifications per second at the socket level, with C concurrent
//! clients against a real twofoldd (release build) on a real SQLite file, every acceptance
//! durable (synchronous=FULL, committed before the reply). The store is seeded through the
//! library with N users and no backup codes (their Argon2id cost belongs to enrollment, not
//! to logins; BENCHMARKS.md says so).
#![deny(unsafe_code)]
#![allow(clippy::print_stdout)]

mod floor;
mod pam;
mod rate;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use twofold_daemon::store::{Store, UserRecord};
use twofold_shared::client::Client;
use twofold_shared::otp::{self, TotpParams};
use twofold_shared::secret::Secret;
use twofold_shared::wire::{RequestBody, ResponseBody, SecretText};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A deterministic 20-byte secret per user: the bench recomputes codes without storing them.
fn secret_of(i: usize) -> Secret {
    let mut bytes = [0u8; 20];
    for (k, b) in bytes.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761).wrapping_add(k * 40_503) >> (k % 7)) as u8 ^ (k as u8);
    }
    Secret::from_bytes(bytes.to_vec())
}

fn user_name(i: usize) -> String {
    format!("bench{i:06}")
}

/// The store a benchmark seeds: an SQLite file, or (`postgres:URL`) an empty PostgreSQL
/// database, whose schema it creates first as `twofold fleet init` does (twofoldd never does).
fn open_store(target: &str) -> Result<Store, String> {
    match target.strip_prefix("postgres:") {
        Some(url) => twofold_daemon::store::postgres::init(url, None, None)
            .and_then(|()| Store::open_postgres(url, None, Vec::new()))
            .map(|(s, _)| s)
            .map_err(|e| e.to_string()),
        None => Store::open(Path::new(target)).map_err(|e| e.to_string()),
    }
}

/// Seeds `n` enrolled users (no backup codes) straight into the store, each with
/// `authenticators` authenticators: the first has the user's secret (the one the login's code
/// is made with), the others other secrets, so that every login checks all of them.
fn seed(target: &str, n: usize, authenticators: usize) -> Result<(), String> {
    let store = open_store(target)?;
    let t = now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let chunk = chunk.to_vec();
        store
            .write(move |tx| {
                for i in chunk {
                    let mut record = UserRecord::single(
                        &user_name(i),
                        secret_of(i),
                        TotpParams::default(),
                        t,
                        -1,
                        vec![0; 16],
                        None,
                        None,
                    );
                    for k in 1..authenticators {
                        let mut spare = record.authenticators[0].clone();
                        spare.label = format!("spare{k}");
                        spare.secret = secret_of(i + k * 10_000_000);
                        record.authenticators.push(spare);
                    }
                    tx.activate(&record, &[])?;
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct Daemon {
    child: std::process::Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A twofoldd on `dir/NAME.sock`, on the SQLite file `db` or (`pg` given) on PostgreSQL.
fn start_daemon(
    twofoldd: &Path,
    dir: &Path,
    db: &Path,
    pg: Option<&str>,
    name: &str,
) -> Result<Daemon, String> {
    let socket = dir.join(format!("{name}.sock"));
    let config = dir.join(format!("{name}.toml"));
    let store = pg.map_or(String::new(), |url| {
        format!("store = \"postgres\"\npostgres_url = {url:?}\n")
    });
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\ndatabase = {:?}\nmax_connections = 1024\n{store}[throttle]\nlockout_after = 0\n",
            socket, db
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new(twofoldd)
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", twofoldd.display()))?;
    let d = Daemon { child, socket };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
        if Instant::now() > deadline {
            return Err("twofoldd did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(d)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// C clients verify distinct (user, step) pairs as fast as they can for `secs` seconds. Each
/// user's codes for steps T-1, T and T+1 are used once each, in order, so every submission is a
/// valid, fresh code that must be accepted and written.
/// `pg`: PostgreSQL instead of SQLite, with the clients spread over two daemons ("hosts").
fn capacity(
    twofoldd: &Path,
    users: usize,
    clients: usize,
    secs: u64,
    pg: Option<&str>,
) -> Result<serde_json::Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // twofoldd refuses a database in a directory others can read.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let db = dir.path().join("bench.db");
    let t0 = Instant::now();
    match pg {
        Some(url) => seed(&format!("postgres:{url}"), users, 1)?,
        None => seed(db.to_str().ok_or("temp path is not UTF-8")?, users, 1)?,
    }
    let seed_secs = t0.elapsed().as_secs_f64();
    let daemons = match pg {
        Some(_) => vec![
            start_daemon(twofoldd, dir.path(), &db, pg, "a")?,
            start_daemon(twofoldd, dir.path(), &db, pg, "b")?,
        ],
        None => vec![start_daemon(twofoldd, dir.path(), &db, None, "a")?],
    };
    // Start at a step boundary's far side so that T-1..T+1 stay valid for the whole run.
    let wait = 30 - now() % 30;
    if wait < secs + 3 {
        std::thread::sleep(Duration::from_secs(wait));
    }
    let step = TotpParams::default().step(now());
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let daemon = &daemons[t % daemons.len()];
            let (next, accepted, refused, errors) = (
                next.clone(),
                accepted.clone(),
                refused.clone(),
                errors.clone(),
            );
            let client = Client::new(&daemon.socket, Duration::from_secs(10), vec![0, nix_uid()]);
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= users * 3 {
                        break;
                    }
                    // Round r uses step T-1+r for every user: each later use is a higher step.
                    let (round, i) = (k / users, k % users);
                    let code = otp::totp_for_step(
                        &secret_of(i),
                        &TotpParams::default(),
                        step - 1 + round as u64,
                    );
                    let request = RequestBody::Verify {
                        user: user_name(i),
                        code: SecretText::new(code),
                        pam: Default::default(),
                        grace_secs: 0,
                    };
                    match client.call(request) {
                        Ok(ResponseBody::Accepted { .. }) => {
                            accepted.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(_) => refused.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss = rss_kib(daemons[0].child.id());
    let n = accepted.load(Ordering::Relaxed);
    Ok(serde_json::json!({
        "users": users,
        "clients": clients,
        "seconds": elapsed,
        "accepted": n,
        "refused": refused.load(Ordering::Relaxed),
        "errors": errors.load(Ordering::Relaxed),
        "durable_verifications_per_s": n as f64 / elapsed,
        "daemon_rss_mib": rss as f64 / 1024.0,
        "seed_seconds": seed_secs,
    }))
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Up to `logins` (user, code) pairs from a users file (`NAME BASE32` lines): each user's
/// codes for steps T-1, T and T+1, in rounds, so every one is valid and unused. All codes are
/// computed before the clock starts, inside one step.
fn prepared_logins(users_file: &Path, logins: usize) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(users_file)
        .map_err(|e| format!("{}: {e}", users_file.display()))?;
    let users: Vec<(String, Secret)> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_string();
            let secret = Secret::from_base32(w.next()?).ok()?;
            Some((name, secret))
        })
        .collect();
    if users.is_empty() {
        return Err("no users".into());
    }
    let logins = logins.min(users.len() * 3);
    let wait = 30 - now() % 30;
    if wait < 25 {
        std::thread::sleep(Duration::from_secs(wait));
    }
    let step = TotpParams::default().step(now());
    Ok((0..logins)
        .map(|k| {
            let (round, i) = (k / users.len(), k % users.len());
            let code =
                otp::totp_for_step(&users[i].1, &TotpParams::default(), step - 1 + round as u64);
            (users[i].0.clone(), code)
        })
        .collect())
}

/// Per-login cost of several services measured side by side: login k is run once against
/// each service in turn (the order rotating with k), so that the machine's drift and noise
/// fall on all of them alike. Each twofold service must have a store of its own (the same
/// code is used once on each). Prints each service's p50 and the p50 of its per-login
/// difference from the first service (the baseline).
fn pam_interleaved(
    services: &[String],
    users_file: &Path,
    logins: usize,
) -> Result<serde_json::Value, String> {
    let work = prepared_logins(users_file, logins)?;
    let mut times = vec![Vec::with_capacity(work.len()); services.len()];
    let mut ok = vec![0u64; services.len()];
    for (k, (user, code)) in work.iter().enumerate() {
        for j in 0..services.len() {
            let s = (j + k) % services.len();
            let t = Instant::now();
            let r = pam::login(&services[s], user, code);
            times[s].push(t.elapsed().as_secs_f64() * 1000.0);
            if r == Ok(0) {
                ok[s] += 1;
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let rows: Vec<serde_json::Value> = (0..services.len())
        .map(|s| {
            let mut diff: Vec<f64> = times[s].iter().zip(&times[0]).map(|(a, b)| a - b).collect();
            let mut own = times[s].clone();
            serde_json::json!({
                "service": services[s],
                "logins": times[s].len(),
                "succeeded": ok[s],
                "p50_ms": median(&mut own),
                "p50_over_baseline_ms": median(&mut diff),
            })
        })
        .collect();
    Ok(serde_json::json!({ "interleaved": rows }))
}

/// Per-login cost through libpam: `threads` threads run `logins` whole logins (pam_start,
/// pam_authenticate, pam_end) against `service`, each for a different user with a currently
/// valid, unused code (steps T-1, T, T+1 in rounds, so replay protection is exercised).
/// Run under pam_wrapper so that `service` comes from a private directory.
fn pam_logins(
    service: &str,
    users_file: &Path,
    threads: usize,
    logins: usize,
    flood: Option<(PathBuf, String, u64)>,
) -> Result<serde_json::Value, String> {
    let work = Arc::new(prepared_logins(users_file, logins)?);
    let next = Arc::new(AtomicUsize::new(0));
    // Optionally, one user receives wrong codes at `rate` per second meanwhile.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooded = Arc::new(AtomicU64::new(0));
    // Eight senders share the rate: one alone cannot send a thousand requests a second.
    const SENDERS: u64 = 8;
    let flooders: Vec<_> = flood
        .iter()
        .flat_map(|(socket, user, rate)| {
            (0..SENDERS)
                .map(|_| {
                    let (stop, flooded, socket, user) =
                        (stop.clone(), flooded.clone(), socket.clone(), user.clone());
                    let per_sender = (*rate / SENDERS).max(1);
                    std::thread::spawn(move || {
                        let client =
                            Client::new(&socket, Duration::from_secs(5), vec![0, nix_uid()]);
                        let gap = Duration::from_secs_f64(1.0 / per_sender as f64);
                        let mut due = Instant::now();
                        while !stop.load(Ordering::Relaxed) {
                            let request = RequestBody::Verify {
                                user: user.clone(),
                                code: SecretText::new("000000"),
                                pam: Default::default(),
                                grace_secs: 0,
                            };
                            let _ = client.call(request);
                            flooded.fetch_add(1, Ordering::Relaxed);
                            due += gap;
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (work, next, service) = (work.clone(), next.clone(), service.to_string());
            std::thread::spawn(move || {
                let mut times = Vec::new();
                let mut ok = 0u64;
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((user, code)) = work.get(k) else {
                        break;
                    };
                    let t = Instant::now();
                    let r = pam::login(&service, user, code);
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                    if r == Ok(0) {
                        ok += 1;
                    }
                }
                (times, ok)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut ok = 0;
    for h in handles {
        let (t, o) = h.join().map_err(|_| "a login thread panicked")?;
        times.extend(t);
        ok += o;
    }
    let wall = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.join();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(serde_json::json!({
        "service": service,
        "threads": threads,
        "logins": times.len(),
        "succeeded": ok,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "logins_per_s": times.len() as f64 / wall,
        "flood_requests_per_s": flooded.load(Ordering::Relaxed) as f64 / wall,
    }))
}

fn usage() -> ExitCode {
    eprintln!("usage: twofold-bench capacity TWOFOLDD USERS CLIENTS SECONDS [POSTGRES_URL]");
    eprintln!("                     (with POSTGRES_URL: two daemons share it, clients alternate)");
    eprintln!(
        "       twofold-bench pam SERVICE USERS_FILE THREADS LOGINS [FLOOD_SOCKET FLOOD_USER RATE]"
    );
    eprintln!("                     (under pam_wrapper; the flood sends wrong codes for one user)");
    eprintln!("       twofold-bench pam-side-by-side USERS_FILE LOGINS BASELINE SERVICE...");
    eprintln!("                     (one login at a time, each login on every service in turn)");
    eprintln!("       twofold-bench pam-rate SERVICE HOTP_USERS_FILE RATE SECONDS [AT COMMAND]...");
    eprintln!("                     (HOTP logins at RATE/s for SECONDS and until 3 s after the last COMMAND)");
    eprintln!("       twofold-bench fsync DIR TRIES        (4 KiB write + fdatasync in DIR)");
    eprintln!("       twofold-bench round-trip SOCKET TRIES (connect, ping, reply)");
    eprintln!(
        "       twofold-bench seed DATABASE|postgres:URL USERS USERS_FILE [AUTHENTICATORS]   (enrolled, no backup codes)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("capacity") if args.len() == 6 || args.len() == 7 => {
            let parse = |s: &String| s.parse::<usize>().ok();
            let pg = args.get(6).map(String::as_str);
            match (parse(&args[3]), parse(&args[4]), parse(&args[5])) {
                (Some(u), Some(c), Some(s)) => capacity(Path::new(&args[2]), u, c, s as u64, pg),
                _ => return usage(),
            }
        }
        Some("seed") if args.len() == 5 || args.len() == 6 => match (
            args[3].parse::<usize>(),
            args.get(5).map_or(Ok(1), |k| k.parse::<usize>()),
        ) {
            (Ok(n), Ok(k)) if (1..=24).contains(&k) => seed(&args[2], n, k).and_then(|()| {
                let lines: String = (0..n)
                    .map(|i| format!("{} {}\n", user_name(i), secret_of(i).to_base32()))
                    .collect();
                std::fs::write(&args[4], lines).map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "seeded": n, "authenticators": k }))
            }),
            _ => return usage(),
        },
        Some("pam") if args.len() == 6 || args.len() == 9 => {
            let parse = |s: &String| s.parse::<usize>().ok();
            let flood = match args.get(6..9) {
                Some([socket, user, rate]) => match rate.parse() {
                    Ok(r) => Some((PathBuf::from(socket), user.clone(), r)),
                    Err(_) => return usage(),
                },
                _ => None,
            };
            match (parse(&args[4]), parse(&args[5])) {
                (Some(t), Some(n)) => pam_logins(&args[2], Path::new(&args[3]), t, n, flood),
                _ => return usage(),
            }
        }
        Some("fsync") if args.len() == 4 => match args[3].parse() {
            Ok(n) => floor::fsync(Path::new(&args[2]), n),
            Err(_) => return usage(),
        },
        Some("round-trip") if args.len() == 4 => match args[3].parse() {
            Ok(n) => floor::round_trip(Path::new(&args[2]), n),
            Err(_) => return usage(),
        },
        Some("pam-side-by-side") if args.len() >= 6 => match args[3].parse::<usize>() {
            Ok(n) => pam_interleaved(&args[4..], Path::new(&args[2]), n),
            Err(_) => return usage(),
        },
        Some("pam-rate") if args.len() >= 6 => {
            match (
                args[4].parse::<f64>(),
                args[5].parse::<f64>(),
                rate::events(&args[6..]),
            ) {
                (Ok(r), Ok(s), Ok(ev)) => rate::run(&args[2], Path::new(&args[3]), r, s, ev),
                (_, _, Err(e)) => Err(e),
                _ => return usage(),
            }
        }
        _ => return usage(),
    };
    match result {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("twofold-bench: {e}");
            ExitCode::from(1)
        }
    }
}
