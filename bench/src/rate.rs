//! `pam-rate`: logins arriving at a steady rate while the daemon is restarted or upgraded
//! underneath (scripts/vm-test.sh). Login k is due at start + k / rate, whatever happened to
//! the earlier ones (each runs on a thread of its own, so a slow answer delays nobody), and
//! every login uses a valid, unused code: a login that is not PAM_SUCCESS was refused by the
//! module, and is counted and listed. Meanwhile the given commands run at their offsets.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

pub fn run(
    service: &str,
    users_file: &Path,
    rate: f64,
    seconds: f64,
    events: Vec<Event>,
) -> Result<serde_json::Value, String> {
    if !(rate > 0.0 && rate <= 1000.0 && seconds > 0.0 && seconds <= 25.0) {
        return Err(
            "rate must be in (0, 1000] per second and the run at most 25 s (one code step)".into(),
        );
    }
    let wanted = (rate * seconds).round() as usize;
    let work = super::prepared_logins(users_file, wanted)?;
    if work.len() < wanted {
        return Err(format!(
            "{wanted} logins need {} users with three codes each; the file has codes for {}",
            wanted.div_ceil(3),
            work.len()
        ));
    }
    let started = Instant::now();
    let runner = std::thread::spawn(move || {
        events
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
            .collect::<Vec<_>>()
    });
    let logins: Vec<_> = work
        .into_iter()
        .enumerate()
        .map(|(k, (user, code))| {
            let service = service.to_string();
            sleep_until(started, k as f64 / rate);
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = super::pam::login(&service, &user, &code);
                (
                    user,
                    r,
                    started.elapsed().as_secs_f64(),
                    t.elapsed().as_secs_f64(),
                )
            })
        })
        .collect();
    let mut refused = Vec::new();
    let mut slowest = 0f64;
    let total = logins.len();
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
    Ok(serde_json::json!({
        "service": service,
        "rate_per_s": rate,
        "logins": total,
        "refused": refused.len(),
        "refusals": refused,
        "slowest_login_s": slowest,
        "events": events,
    }))
}

fn sleep_until(start: Instant, offset_s: f64) {
    let due = start + Duration::from_secs_f64(offset_s);
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}
