//! How status, lists, the policy report and the audit trail are printed.

use super::*;

pub(super) fn print_policy(ctx: &Ctx, p: &twofold_shared::wire::PolicyReport) {
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string(p).unwrap_or_else(|_| "{}".into())
        );
        return;
    }
    let names = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
        let more = if v.len() > 8 {
            format!(", … {} more", v.len() - 8)
        } else {
            String::new()
        };
        if v.is_empty() {
            String::new()
        } else {
            format!("  ({}{more})", shown.join(", "))
        }
    };
    if p.enabled {
        println!("Two-factor:         on");
    } else {
        println!(
            "Two-factor:         OFF (enabled = false): every login passes through without a code"
        );
    }
    println!(
        "Not enrolled:       {} (unenrolled = \"{}\")",
        if p.unenrolled == "deny" {
            "refused"
        } else {
            "let through"
        },
        p.unenrolled
    );
    for g in &p.require_groups {
        if g.exists {
            println!(
                "Required for group: {} — {} member(s), {} not enrolled yet",
                g.group, g.members, g.not_enrolled
            );
        } else {
            println!("Required for group: {} — no such group", g.group);
        }
    }
    println!(
        "Self-enrollment:    {}",
        if p.self_enroll {
            "allowed"
        } else {
            "root only"
        }
    );
    println!(
        "Enroll at login:    {}",
        match p.enroll_at_login.as_str() {
            "invited" => "invited accounts ('twofold invite NAME')",
            "always" => "every account without a factor, at its first login",
            _ => "never",
        }
    );
    println!("Window:             ±{} step(s) of 30 s", p.window);
    println!();
    println!("Local accounts:     {}", p.accounts);
    println!(
        "  asked for a code:        {}{}",
        p.asked_for_code.len(),
        names(&p.asked_for_code)
    );
    println!(
        "  refused until enrolled:  {}{}",
        p.refused_until_enrolled.len(),
        names(&p.refused_until_enrolled)
    );
    println!(
        "  pass without a code:     {}{}",
        p.pass_without_code.len(),
        names(&p.pass_without_code)
    );
    if p.other_enrolled > 0 {
        println!(
            "Other enrollments:  {} (names that are not local accounts)",
            p.other_enrolled
        );
    }
}

/// `90s`, `15m`, `12h`, `7d`, `2w` (or plain seconds) in seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 12h, 7d or 2w"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{text:?}: the unit must be s, m, h, d or w")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

pub(super) fn print_audit(ctx: &Ctx, entries: &[twofold_shared::wire::AuditEntry], omitted: u64) {
    if ctx.json {
        println!("{}", json!({ "entries": entries, "omitted": omitted }));
        return;
    }
    if omitted > 0 {
        println!("({omitted} older entries not shown; narrow with --since or --user)");
    }
    if entries.is_empty() {
        println!("No audit entries.");
    }
    for e in entries {
        let mut line = format!(
            "{}  {:<13} {:<16} {}",
            format_time_secs(e.time),
            e.event,
            e.user.as_deref().unwrap_or("-"),
            e.outcome
        );
        if let Some(m) = &e.method {
            line.push_str(&format!(" ({m})"));
        }
        for (key, value) in [
            ("service", &e.service),
            ("rhost", &e.rhost),
            ("tty", &e.tty),
        ] {
            if let Some(v) = value {
                line.push_str(&format!(" {key}={v}"));
            }
        }
        if let Some(uid) = e.caller_uid {
            line.push_str(&format!(" by-uid={uid}"));
        }
        if let Some(d) = &e.detail {
            line.push_str(&format!(" — {d}"));
        }
        // Names and PAM items come from clients: never let them drive the terminal.
        let clean: String = line
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        println!("{clean}");
    }
}

pub use crate::clock::{format_time, format_time_secs};

pub(super) fn state_word(s: &UserStatus) -> &'static str {
    match (s.enrolled, s.pending, s.invited_until.is_some()) {
        (true, false, false) => "enrolled",
        (true, false, true) => "enrolled (invited to replace)",
        (true, true, _) => "enrolled (replacement pending)",
        (false, true, _) => "pending confirmation",
        (false, false, true) => "invited",
        (false, false, false) => "not enrolled",
    }
}

pub(super) fn throttle_word(s: &UserStatus) -> String {
    if s.locked {
        "locked".into()
    } else if let Some(until) = s.throttled_until {
        format!("throttled until {}", format_time(until))
    } else {
        "ok".into()
    }
}

pub(super) fn print_status(ctx: &Ctx, s: &UserStatus) {
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string(s).unwrap_or_else(|_| "{}".into())
        );
        return;
    }
    println!("User:          {}", s.user);
    println!("Two-factor:    {}", state_word(s));
    if let Some(t) = s.enrolled_at {
        println!("Enrolled:      {}", format_time(t));
    }
    if s.enrolled {
        println!("Authenticators: {}", s.authenticators);
        println!("Backup codes:  {} left", s.backup_codes_left);
        println!(
            "Last success:  {}",
            s.last_success
                .map(format_time)
                .unwrap_or_else(|| "never".into())
        );
    }
    if let Some(email) = &s.email {
        println!(
            "Email:         {} ({})",
            crate::audit::text(email),
            if s.email_verified {
                "verified"
            } else {
                "not verified"
            }
        );
    }
    if let Some(t) = s.invited_until {
        println!(
            "Invited:       to enroll at login, until {}",
            format_time(t)
        );
    }
    if let Some(t) = s.bypass_until {
        println!("Helpdesk code: works until {}", format_time(t));
    }
    println!(
        "Failures:      {} consecutive ({})",
        s.failures,
        throttle_word(s)
    );
}

pub(super) fn print_authenticators(
    ctx: &Ctx,
    user: &str,
    authenticators: &[twofold_shared::wire::AuthenticatorInfo],
) {
    if ctx.json {
        println!(
            "{}",
            json!({ "user": user, "authenticators": authenticators })
        );
        return;
    }
    println!(
        "{:<32} {:<22} {:<22} KIND",
        "AUTHENTICATOR", "ADDED", "LAST USED"
    );
    for a in authenticators {
        let kind = match a.counter {
            Some(next) => format!(
                "HOTP, {}, {} digits, next counter {next}",
                a.algorithm, a.digits
            ),
            None => format!("{}, {} digits, {} s", a.algorithm, a.digits, a.period),
        };
        println!(
            "{:<32} {:<22} {:<22} {kind}",
            a.name,
            format_time(a.added_at),
            a.last_used
                .map(format_time)
                .unwrap_or_else(|| "never".into()),
        );
    }
}

pub(super) fn print_list(ctx: &Ctx, users: &[UserStatus]) {
    if ctx.json {
        println!("{}", json!({ "users": users }));
        return;
    }
    if users.is_empty() {
        println!("No users enrolled.");
        return;
    }
    println!(
        "{:<24} {:<22} {:>4} {:>6} {:<22} {:>8}  THROTTLE",
        "USER", "STATE", "APPS", "BACKUP", "LAST SUCCESS", "FAILURES"
    );
    for s in users {
        println!(
            "{:<24} {:<22} {:>4} {:>6} {:<22} {:>8}  {}",
            s.user,
            state_word(s),
            s.authenticators,
            s.backup_codes_left,
            s.last_success
                .map(format_time)
                .unwrap_or_else(|| "-".into()),
            s.failures,
            throttle_word(s)
        );
    }
}
