//! `pam-rate`: logins arriving at a steady rate while the daemon is restarted or upgraded
//! underneath (scripts/vm-test.sh). Login k is due at start + k / rate, whatever happened to
//! the earlier ones (each runs on a thread of its own, so a slow answer delays nobody). The
//! accounts hold counter-based (HOTP) tokens, so that a load can last as long as the commands
//! take: login k is account k mod n with its next counter, and one account's logins are n / rate
//! seconds apart. Every code is valid and unused: a login that is not PAM_SUCCESS was refused
//! by the module, and is counted and listed. The commands run at their offsets; the load goes
//! on until the last has finished, and 3 s more.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twofold_shared::otp::{self, Algorithm};
use twofold_shared::secret::Secret;

/// The longest a load goes on, whatever the commands do.
const MAX_SECONDS: f64 = 600.0;

/// A command run (by `sh -c`) at `at` seconds into the load.
#[derive(Debug)]
pub struct Event {
    pub at: f64,
    pub command: String,
}

/// Parses `AT COMMAND` pairs.
pub fn events(args: &[String]) -> Result<Vec<Event>, String> {
    if args.len() % 2 != 0 {
        return Err("events come in pairs: SECONDS COMMAND".into());
    }
    args.chunks(2)
        .map(|p| {
            let at: f64 = p[0]
                .parse()
                .map_err(|_| format!("not a number of seconds: {}", p[0]))?;
            Ok(Event {
                at,
                command: p[1].clone(),
            })
        })
        .collect()
}

/// `users_file`: `NAME BASE32 [NEXT_COUNTER]` lines, each an HOTP token (next counter 0 when
/// not given); rewritten with the counters the next run starts from.
pub fn run(
    service: &str,
    users_file: &Path,
    rate: f64,
    seconds: f64,
    events: Vec<Event>,
) -> Result<serde_json::Value, String> {
    if !(rate > 0.0 && rate <= 1000.0 && seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err("rate must be in (0, 1000] per second and SECONDS at most 600".into());
    }
    let text = std::fs::read_to_string(users_file)
        .map_err(|e| format!("{}: {e}", users_file.display()))?;
    let users: Vec<(String, String, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_string();
            let key = w.next()?.to_string();
            let next = w.next().map_or(Some(0), |c| c.parse().ok())?;
            Some((name, key, next))
        })
        .collect();
    let secrets = users
        .iter()
        .map(|(_, key, _)| Secret::from_base32(key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "a key in the users file is not base32")?;
    if users.is_empty() {
        return Err("no users".into());
    }
    let started = Instant::now();
    // When the last command ended (seconds into the run); None while one still runs.
    let events_end = Arc::new(Mutex::new(if events.is_empty() { Some(0.0) } else { None }));
    let end = events_end.clone();
    let runner = std::thread::spawn(move || {
        let ran = events
            .into_iter()
            .map(|e| {
                sleep_until(started, e.at);
                let t = started.elapsed().as_secs_f64();
                let status = Command::new("sh").arg("-c").arg(&e.command).status();
                serde_json::json!({
                    "command": e.command,
                    "at_s": t,
                    "took_s": started.elapsed().as_secs_f64() - t,
                    "exit": status.ok().and_then(|s| s.code()),
                })
            })
            .collect::<Vec<_>>();
        *end.lock().unwrap_or_else(|e| e.into_inner()) = Some(started.elapsed().as_secs_f64());
        ran
    });
    let mut logins = Vec::new();
    for k in 0usize.. {
        let due = k as f64 / rate;
        let ended = *events_end.lock().unwrap_or_else(|e| e.into_inner());
        if due >= MAX_SECONDS || (due >= seconds && ended.is_some_and(|e| due >= e + 3.0)) {
            break;
        }
        let (user, _, next) = &users[k % users.len()];
        let counter = next + (k / users.len()) as u64;
        let code = otp::format_code(
            otp::hotp(&secrets[k % users.len()], counter, 6, Algorithm::Sha1),
            6,
        );
        let (service, user) = (service.to_string(), user.clone());
        sleep_until(started, due);
        logins.push(std::thread::spawn(move || {
            let t = Instant::now();
            let r = super::pam::login(&service, &user, &code);
            (
                user,
                r,
                started.elapsed().as_secs_f64(),
                t.elapsed().as_secs_f64(),
            )
        }));
    }
    // The counters the next run starts from (a code once tried is spent or stale).
    let total = logins.len();
    let rewritten: String = users
        .iter()
        .enumerate()
        .map(|(i, (name, key, next))| {
            let used = total / users.len() + usize::from(i < total % users.len());
            format!("{name} {key} {}\n", next + used as u64)
        })
        .collect();
    std::fs::write(users_file, rewritten).map_err(|e| format!("{}: {e}", users_file.display()))?;
    let mut refused = Vec::new();
    let mut slowest = 0f64;
    for h in logins {
        let (user, r, at, took) = h.join().map_err(|_| "a login thread panicked")?;
        slowest = slowest.max(took);
        if r != Ok(0) {
            refused.push(serde_json::json!({
                "user": user,
                "result": r.unwrap_or_else(|e| { eprintln!("twofold-bench: {e}"); -1 }),
                "ended_at_s": at,
            }));
        }
    }
    let events = runner.join().map_err(|_| "the event thread panicked")?;
    let events_end = *events_end.lock().unwrap_or_else(|e| e.into_inner());
    Ok(serde_json::json!({
        "service": service,
        "rate_per_s": rate,
        "logins": total,
        "refused": refused.len(),
        "refusals": refused,
        "slowest_login_s": slowest,
        "load_s": started.elapsed().as_secs_f64(),
        "events_ended_at_s": events_end,
        "events": events,
    }))
}

fn sleep_until(start: Instant, offset_s: f64) {
    let due = start + Duration::from_secs_f64(offset_s);
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}
