//! The verification rules that run inside the deciding transaction (ARCHITECTURE.md §3): the
//! throttle gate, the window and the high-water mark, backup and mailed codes, failure
//! accounting, the audit row and the remembered device, so that parallel submissions succeed
//! exactly once.

use super::*;
use crate::offline::Noted;

/// A typed answer hashed (outside the writer) under the salt of the one-time code it is
/// checked against: a mailed login code, or a helpdesk code.
pub(super) struct HashedTry {
    pub(super) salt: Vec<u8>,
    pub(super) hash: Option<backup::BackupHash>,
}

/// Inside the writer: does the answer match the live mailed code? A match consumes the code;
/// a miss counts a try, and the fifth kills it.
pub(super) fn email_in_tx(
    tx: &dyn Tx,
    name: &str,
    attempt: &HashedTry,
    now: u64,
) -> Result<bool, StoreError> {
    let Some(code) = tx.mailed_code(name, CodePurpose::Login)? else {
        return Ok(false);
    };
    if now >= code.expires || code.salt != attempt.salt {
        return Ok(false);
    }
    let matches = attempt.hash.as_ref().is_some_and(|h| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            h.as_bytes(),
            code.hash.as_slice(),
        ))
    });
    if matches {
        tx.kill_mailed_code(name, CodePurpose::Login)?;
        return Ok(true);
    }
    if code.tries + 1 >= email::MAX_TRIES {
        tx.kill_mailed_code(name, CodePurpose::Login)?;
    } else {
        tx.count_mailed_code_try(name, CodePurpose::Login)?;
    }
    Ok(false)
}

/// The mailed-code-only check (no TOTP involved): gate, code, failure accounting.
pub(super) fn verify_email_in_tx(
    tx: &dyn Tx,
    name: &str,
    attempt: &HashedTry,
    now: u64,
    cfg: &throttle::ThrottleConfig,
) -> Result<Outcome, StoreError> {
    let state = tx.throttle(name)?;
    if let Some(blocked) = gate_outcome(cfg, state, now) {
        return Ok(blocked);
    }
    if email_in_tx(tx, name, attempt, now)? {
        tx.clear_throttle(name)?;
        return Ok(Outcome::Accepted {
            method: Method::Email,
            left: None,
        });
    }
    fail_in_tx(tx, name, state, now, cfg, Outcome::Wrong)
}

/// What a verification came to, before it is turned into a reply and an audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Accepted {
        method: Method,
        left: Option<u32>,
    },
    Wrong,
    Replayed,
    Throttled {
        until: u64,
    },
    Locked,
    /// This failure reached the lockout limit.
    NowLocked,
}

/// What a typed code looks like.
pub(super) enum Input {
    Totp(String),
    Backup(zeroize::Zeroizing<String>),
    /// A helpdesk code (`twofold bypass`).
    Helpdesk(zeroize::Zeroizing<String>),
    Garbage,
}

/// A TOTP code has exactly the user's number of digits; anything else that can be a backup
/// code (including the 8-digit scratch codes of an imported google-authenticator file) is one.
pub(super) fn classify(code: &str, digits: &[u32]) -> Input {
    if code.len() > MAX_CODE {
        return Input::Garbage;
    }
    if let Some(c) = digits.iter().find_map(|&d| otp::normalize_code(code, d)) {
        return Input::Totp(c);
    }
    if let Some(c) = backup::normalize_helpdesk(code) {
        return Input::Helpdesk(c);
    }
    match backup::normalize(code) {
        Some(c) => Input::Backup(c),
        None => Input::Garbage,
    }
}

/// A dummy secret used to spend the same work on unknown users as on real ones.
pub(super) fn decoy_secret() -> Secret {
    Secret::from_bytes(vec![0x5a; GENERATED_SECRET_BYTES])
}

/// A login's audit entry, and whether a refusal by the throttle goes unrecorded because one
/// was recorded for the same user less than [`limits::QUIET_SECS`] ago: a flood of guesses at a
/// throttled account (a local user can send thousands a second at their own) must not fill
/// the disk and the log. Every refusal that changes something (a wrong code, a lockout) is
/// always recorded.
#[derive(Clone)]
pub(super) struct LoginBase {
    pub(super) entry: AuditEntry,
    pub(super) quiet: bool,
}

/// Stores a login's outcome in the audit trail, in the transaction that decided it; a failure
/// that reached the lockout limit also records the lockout.
pub(super) fn record_login(
    tx: &dyn Tx,
    base: &LoginBase,
    outcome: Outcome,
) -> Result<(), StoreError> {
    record_login_by(tx, base, outcome, None)
}

/// [`record_login`] of a code accepted from the authenticator `by`.
pub(super) fn record_login_by(
    tx: &dyn Tx,
    base: &LoginBase,
    outcome: Outcome,
    by: Option<&str>,
) -> Result<(), StoreError> {
    login_entries(base, outcome, by)
        .iter()
        .try_for_each(|e| tx.audit(e))
}

/// The audit entries of a login's outcome (none for a quiet refusal, see [`LoginBase`]).
pub(super) fn login_entries(
    base: &LoginBase,
    outcome: Outcome,
    by: Option<&str>,
) -> Vec<AuditEntry> {
    if base.quiet && matches!(outcome, Outcome::Throttled { .. } | Outcome::Locked) {
        return Vec::new();
    }
    let base = &base.entry;
    let (result, method, detail) = match outcome {
        Outcome::Accepted {
            method: Method::Totp,
            ..
        } => (
            "accepted",
            Some("totp"),
            by.map(|label| format!("authenticator {label}")),
        ),
        Outcome::Accepted {
            method: Method::Remembered,
            ..
        } => ("accepted", Some("remembered"), None),
        Outcome::Accepted {
            method: Method::Email,
            ..
        } => ("accepted", Some("email"), None),
        Outcome::Accepted {
            method: Method::BackupCode,
            left,
        } => (
            "accepted",
            Some("backup-code"),
            Some(format!("{} left", left.unwrap_or(0))),
        ),
        Outcome::Accepted {
            method: Method::Bypass,
            left,
        } => (
            "accepted",
            Some("bypass"),
            Some(format!("helpdesk code; {} use(s) left", left.unwrap_or(0))),
        ),
        Outcome::Wrong => ("rejected", None, Some("wrong code".to_string())),
        Outcome::Replayed => ("rejected", None, Some("replayed".to_string())),
        Outcome::NowLocked => ("rejected", None, Some("wrong code; now locked".to_string())),
        Outcome::Throttled { until } => ("throttled", None, Some(format!("until {until}"))),
        Outcome::Locked => ("locked", None, None),
    };
    let mut entries = vec![AuditEntry {
        outcome: result.into(),
        method: method.map(Into::into),
        detail,
        ..base.clone()
    }];
    if let Outcome::Accepted {
        method: Method::Bypass,
        left,
    } = outcome
    {
        entries.push(AuditEntry {
            event: "bypass".into(),
            outcome: "used".into(),
            detail: Some(format!("{} use(s) left", left.unwrap_or(0))),
            ..base.clone()
        });
    }
    if outcome == Outcome::NowLocked {
        entries.push(AuditEntry {
            event: "lockout".into(),
            outcome: "locked".into(),
            ..base.clone()
        });
    }
    entries
}

/// What "remember this device" is keyed by (besides the user): the service, and where the
/// login comes from: the remote host, or for a local login (su, sudo, a console) the caller's
/// login session as the kernel numbers it (its audit session: a tty name is handed to the
/// next user within minutes); and who asked (PAM_RUSER). A remote host that is this host's
/// own name (sudo's `Defaults pam_rhost`) is no remote host. Without a remote host or a
/// session, nothing is remembered.
pub(super) fn grace_key(pam: &PamItems, session: Option<u32>) -> Option<(String, String)> {
    let service = pam.service.clone().filter(|s| !s.is_empty())?;
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let this_host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok());
    let remote = nonempty(&pam.rhost).filter(|r| this_host.as_deref() != Some(r.as_str()));
    let mut origin = match (remote, session) {
        (Some(rhost), _) => format!("rhost:{rhost}"),
        // Audit sessions are numbered anew at each boot: the boot's id tells them apart.
        (None, Some(session)) => format!(
            "session:{}/{session} tty:{}",
            users::boot_id().unwrap_or_default(),
            nonempty(&pam.tty).unwrap_or_default()
        ),
        (None, None) => return None,
    };
    if let Some(ruser) = nonempty(&pam.ruser) {
        origin.push_str(&format!(" ruser:{ruser}"));
    }
    Some((service, origin))
}

/// A device that logins are remembered by: see [`grace_key`].
pub(super) type Device = (String, String);

/// After an accepted code, remembers the origin for later preflights (same transaction).
pub(super) fn remember_in_tx(
    tx: &dyn Tx,
    name: &str,
    outcome: Outcome,
    grace: Option<&(String, String)>,
    now: u64,
) -> Result<(), StoreError> {
    match remembered_device(outcome, grace, now) {
        Some((service, origin, at)) => tx.remember(name, &service, &origin, at),
        None => Ok(()),
    }
}

/// The device an outcome remembers, and when: an accepted code's, with a device to remember.
pub(super) fn remembered_device(
    outcome: Outcome,
    grace: Option<&(String, String)>,
    now: u64,
) -> Option<(String, String, u64)> {
    match (outcome, grace) {
        // A helpdesk code lets one login in, not a device for days.
        (
            Outcome::Accepted {
                method: Method::Bypass,
                ..
            },
            _,
        ) => None,
        (Outcome::Accepted { .. }, Some((service, origin))) => {
            Some((service.clone(), origin.clone(), now))
        }
        _ => None,
    }
}

/// The authenticator that made an accepted code, and the step (or counter) it was made at.
pub(super) type ByAuthenticator = Option<(String, i64)>;

/// How far from the high-water mark codes are looked for: time steps either side of now
/// (TOTP), counters ahead of the last one accepted (HOTP).
#[derive(Debug, Clone, Copy)]
pub(super) struct Windows {
    pub(super) totp: u32,
    pub(super) hotp: u32,
}

/// Evaluates a TOTP code inside the writer: throttle gate, window, high-water mark, failure
/// accounting — one transaction, so parallel submissions of one code succeed exactly once.
pub(super) fn verify_totp_in_tx(
    tx: &dyn Tx,
    name: &str,
    code: &str,
    now: u64,
    window: Windows,
    cfg: &throttle::ThrottleConfig,
    email_try: Option<&HashedTry>,
) -> Result<(Outcome, ByAuthenticator), StoreError> {
    let state = tx.throttle(name)?;
    let user = tx.user(name)?;
    let why = match decide_totp(user.as_ref(), state, code, now, window, cfg) {
        TotpVerdict::Blocked(blocked) => return Ok((blocked, None)),
        // Read in this transaction: the mark cannot have moved since.
        TotpVerdict::Accept(mark) if tx.advance_mark(name, &mark)? => {
            tx.set_last_success(name, now)?;
            tx.clear_throttle(name)?;
            return Ok((accepted(Method::Totp), Some((mark.label, mark.step))));
        }
        TotpVerdict::Accept(_) => Outcome::Replayed,
        TotpVerdict::Failed(why) => why,
    };
    if email_try.is_some_and(|t| email_in_tx(tx, name, t, now).unwrap_or(false)) {
        tx.clear_throttle(name)?;
        return Ok((accepted(Method::Email), None));
    }
    Ok((fail_in_tx(tx, name, state, now, cfg, why)?, None))
}

/// The authenticator's name of [`ByAuthenticator`].
pub(super) fn label(by: &ByAuthenticator) -> Option<&str> {
    by.as_ref().map(|(label, _)| label.as_str())
}

fn accepted(method: Method) -> Outcome {
    Outcome::Accepted { method, left: None }
}

/// What the TOTP rules make of a code, from the throttle and the enrollment as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TotpVerdict {
    /// The throttle refuses before any code is looked at.
    Blocked(Outcome),
    /// A fresh code: this mark moves.
    Accept(MarkAdvance),
    /// Wrong, or replayed (made within the window, but not above the mark).
    Failed(Outcome),
}

/// The TOTP rules, on a state read (ARCHITECTURE.md §3): the gate, then every authenticator.
/// No enrollment (revoked meanwhile) is a wrong code.
pub(super) fn decide_totp(
    user: Option<&UserRecord>,
    state: ThrottleRecord,
    code: &str,
    now: u64,
    window: Windows,
    cfg: &throttle::ThrottleConfig,
) -> TotpVerdict {
    if let Some(blocked) = gate_outcome(cfg, state, now) {
        return TotpVerdict::Blocked(blocked);
    }
    let Some(user) = user else {
        return TotpVerdict::Failed(Outcome::Wrong);
    };
    match match_authenticators(user, code, now, window) {
        (_, Some((label, step))) => {
            let a = user.authenticators.iter().find(|a| a.label == label);
            TotpVerdict::Accept(MarkAdvance {
                label: label.to_string(),
                added_at: a.map_or(0, |a| a.added_at),
                last_step: a.map_or(-1, |a| a.last_step),
                step: i64::try_from(step).unwrap_or(i64::MAX),
                now,
            })
        }
        (true, None) => TotpVerdict::Failed(Outcome::Replayed),
        (false, None) => TotpVerdict::Failed(Outcome::Wrong),
    }
}

/// A login's TOTP verdict as a [`LoginDecision`] over the state it came from, with the outcome it
/// stands for (what `verify_totp_in_tx` and its caller would write, as data).
pub(super) fn totp_decision(
    verdict: TotpVerdict,
    state: ThrottleRecord,
    base: &LoginBase,
    grace: Option<&Device>,
    now: u64,
    cfg: &throttle::ThrottleConfig,
) -> (Outcome, ByAuthenticator, LoginDecision) {
    let mut d = LoginDecision {
        throttle_was: state,
        ..Default::default()
    };
    let (outcome, by) = match verdict {
        TotpVerdict::Blocked(blocked) => (blocked, None),
        TotpVerdict::Accept(mark) => {
            let by = (mark.label.clone(), mark.step);
            d.mark = Some(mark);
            d.last_success = Some(now);
            // Clearing a throttle that holds nothing would be one more statement.
            d.throttle = (state != ThrottleRecord::default()).then_some(None);
            (accepted(Method::Totp), Some(by))
        }
        TotpVerdict::Failed(why) => {
            let (next, outcome) = failure(state, now, cfg, why);
            d.throttle = Some(Some(next));
            (outcome, None)
        }
    };
    d.audit = login_entries(base, outcome, label(&by));
    d.remember = remembered_device(outcome, grace, now);
    (outcome, by, d)
}

/// Checks `code` against every authenticator of `user`, all of them whatever matches (the time
/// taken tells neither which one matched nor how many there are). `.0`: some authenticator
/// made this code within the window; `.1`: the first one whose step (or counter) is above its
/// high-water mark, and that step (or counter).
pub(super) fn match_authenticators<'u>(
    user: &'u UserRecord,
    code: &str,
    now: u64,
    window: Windows,
) -> (bool, Option<(&'u str, u64)>) {
    let mut matched = false;
    let mut fresh = None;
    for a in &user.authenticators {
        if a.kind == OtpKind::Hotp {
            // The counters after the last one accepted: none of them is spent.
            let next = u64::try_from(a.last_step.saturating_add(1)).unwrap_or(0);
            let counter = otp::normalize_code(code, a.params.digits)
                .and_then(|c| otp::matching_counter(&a.secret, &a.params, &c, next, window.hotp));
            matched |= counter.is_some();
            if let (None, Some(counter)) = (fresh, counter) {
                fresh = Some((a.label.as_str(), counter));
            }
            continue;
        }
        let window = window.totp;
        let steps = otp::normalize_code(code, a.params.digits)
            .map(|c| {
                otp::matching_steps(
                    &a.secret,
                    &a.params,
                    &c,
                    a.params.step(now),
                    a.window.unwrap_or(window),
                )
            })
            .unwrap_or_default();
        matched |= !steps.is_empty();
        let step = steps
            .into_iter()
            .filter(|&s| (s as i128) > i128::from(a.last_step))
            .max();
        if let (None, Some(step)) = (fresh, step) {
            fresh = Some((a.label.as_str(), step));
        }
    }
    (matched, fresh)
}

/// Evaluates a backup code (its hash, computed outside the writer) inside the writer: the
/// gate again (it may have closed while hashing), the code spent once, failure accounting.
pub(super) fn verify_backup_in_tx(
    tx: &dyn Tx,
    name: &str,
    hash: Option<backup::BackupHash>,
    now: u64,
    cfg: &throttle::ThrottleConfig,
) -> Result<Outcome, StoreError> {
    let state = tx.throttle(name)?;
    if let Some(blocked) = gate_outcome(cfg, state, now) {
        return Ok(blocked);
    }
    match hash {
        Some(h) if tx.consume_backup_code(name, &h, now)? => {
            tx.clear_throttle(name)?;
            Ok(Outcome::Accepted {
                method: Method::BackupCode,
                left: Some(tx.backup_codes_left(name)?),
            })
        }
        _ => fail_in_tx(tx, name, state, now, cfg, Outcome::Wrong),
    }
}

pub(super) fn gate_outcome(
    cfg: &throttle::ThrottleConfig,
    state: ThrottleRecord,
    now: u64,
) -> Option<Outcome> {
    match throttle::gate(cfg, state, now) {
        Gate::Open => None,
        Gate::Wait { until } => Some(Outcome::Throttled { until }),
        Gate::Locked => Some(Outcome::Locked),
    }
}

pub(super) fn fail_in_tx(
    tx: &dyn Tx,
    name: &str,
    state: ThrottleRecord,
    now: u64,
    cfg: &throttle::ThrottleConfig,
    why: Outcome,
) -> Result<Outcome, StoreError> {
    let (next, outcome) = failure(state, now, cfg, why);
    tx.set_throttle(name, next)?;
    Ok(outcome)
}

/// A failure counted: the throttle after it, and the outcome (`NowLocked` when it reached
/// the lockout limit).
pub(super) fn failure(
    state: ThrottleRecord,
    now: u64,
    cfg: &throttle::ThrottleConfig,
    why: Outcome,
) -> (ThrottleRecord, Outcome) {
    let next = throttle::record_failure(state, now);
    if cfg.lockout_after > 0 && next.failures == cfg.lockout_after {
        return (next, Outcome::NowLocked);
    }
    (next, why)
}

impl Engine {
    /// `Ok(None)`: a known account without enrollment. Unknown names are evaluated against a
    /// decoy and rejected, at the same cost as a wrong code. On `store` (the fleet, or this
    /// host's copy of it while the fleet does not answer: `offline`, see `outage.rs`), from
    /// the login's state read there.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn evaluate_on(
        &self,
        store: &Store,
        state: LoginState,
        offline: bool,
        name: &str,
        code: &str,
        now: u64,
        base: LoginBase,
        grace: Option<(String, String)>,
    ) -> Result<Option<(Outcome, ByAuthenticator)>, StoreError> {
        let LoginState {
            user,
            throttle: state,
            mailed,
            verified_address,
        } = state;
        if let Some(u) = &user {
            self.warn_if_clock_behind(name, u, now);
        }
        let (by_email, email_try) =
            self.email_attempt(user.is_none(), state, mailed, verified_address, code, now);
        let digits: Vec<u32> = user
            .as_ref()
            .map_or(vec![TotpParams::default().digits], |u| {
                u.authenticators.iter().map(|a| a.params.digits).collect()
            });
        let input = classify(code, &digits);
        let window = Windows {
            totp: self.config().window,
            hotp: self.config().hotp_window,
        };
        let cfg = self.login_throttle(offline);
        let owned = name.to_string();
        let not_totp = user
            .as_ref()
            .is_none_or(|_| !matches!(input, Input::Totp(_)));
        if let (Some(attempt), true) = (&email_try, not_totp || by_email) {
            // Only the mailed code can match (no enrollment, or not a TOTP-shaped answer).
            let attempt = HashedTry {
                salt: attempt.salt.clone(),
                hash: attempt.hash.clone(),
            };
            let outcome = store.write(move |tx| {
                let outcome = verify_email_in_tx(tx, &owned, &attempt, now, &cfg)?;
                record_login(tx, &base, outcome)?;
                remember_in_tx(tx, &owned, outcome, grace.as_ref(), now)?;
                Ok(outcome)
            })?;
            return Ok(Some((outcome, None)));
        }
        let Some(user) = user else {
            if users::uid_of(name).is_some() {
                return Ok(None);
            }
            return self
                .evaluate_unknown(store, offline, name, &input, now, base)
                .map(|o| Some((o, None)));
        };
        let outcome = match input {
            Input::Totp(c) => {
                let verdict = decide_totp(Some(&user), state, &c, now, window, &cfg);
                if let (false, TotpVerdict::Accept(mark)) = (offline, &verdict) {
                    // Noted before the fleet is asked: whatever becomes of its answer, this
                    // host's copy will not take this code again (outage mode).
                    self.note_online(Noted::Mark {
                        name: name.to_string(),
                        label: mark.label.clone(),
                        step: mark.step,
                    });
                }
                // Decided from the state read, when no mailed code is in play; the store applies
                // that in one statement if it still holds, else decides again under the lock.
                let first = email_try.is_none().then(|| {
                    let (outcome, by, d) =
                        totp_decision(verdict, state, &base, grace.as_ref(), now, &cfg);
                    ((outcome, by), d)
                });
                let (outcome, by) = store.decide(name, first, move |tx| {
                    let (outcome, by) =
                        verify_totp_in_tx(tx, &owned, &c, now, window, &cfg, email_try.as_ref())?;
                    record_login_by(tx, &base, outcome, label(&by))?;
                    remember_in_tx(tx, &owned, outcome, grace.as_ref(), now)?;
                    Ok((outcome, by))
                })?;
                // Decided again under the lock, it may have taken another step.
                if let (false, Outcome::Accepted { .. }, Some((label, step))) =
                    (offline, outcome, &by)
                {
                    self.note_online(Noted::Mark {
                        name: name.to_string(),
                        label: label.clone(),
                        step: *step,
                    });
                }
                return Ok(Some((outcome, by)));
            }
            Input::Backup(c) => {
                // Do not spend an Argon2id hash on an attempt the throttle refuses anyway.
                if let Some(blocked) = gate_outcome(&cfg, state, now) {
                    store.write(move |tx| record_login(tx, &base, blocked))?;
                    return Ok(Some((blocked, None)));
                }
                let hash = self.hash_backup(Lane::Login, &c, &user.backup_salt);
                if let (Some(hash), false) = (&hash, offline) {
                    // Noted first, as a TOTP code is (a code not stored is no change).
                    self.note_online(Noted::BackupCode {
                        name: name.to_string(),
                        hash: hash.clone(),
                    });
                }
                store.write(move |tx| {
                    let outcome = verify_backup_in_tx(tx, &owned, hash, now, &cfg)?;
                    record_login(tx, &base, outcome)?;
                    remember_in_tx(tx, &owned, outcome, grace.as_ref(), now)?;
                    Ok(outcome)
                })?
            }
            Input::Helpdesk(c) => {
                if let Some(blocked) = gate_outcome(&cfg, state, now) {
                    store.write(move |tx| record_login(tx, &base, blocked))?;
                    return Ok(Some((blocked, None)));
                }
                let attempt = self.bypass_try(store, name, &c)?;
                store.write(move |tx| {
                    let outcome = verify_bypass_in_tx(tx, &owned, &attempt, now, &cfg)?;
                    record_login(tx, &base, outcome)?;
                    remember_in_tx(tx, &owned, outcome, grace.as_ref(), now)?;
                    Ok(outcome)
                })?
            }
            Input::Garbage => store.write(move |tx| {
                let state = tx.throttle(&owned)?;
                let outcome = match gate_outcome(&cfg, state, now) {
                    Some(blocked) => blocked,
                    None => fail_in_tx(tx, &owned, state, now, &cfg, Outcome::Wrong)?,
                };
                record_login(tx, &base, outcome)?;
                Ok(outcome)
            })?,
        };
        Ok(Some((outcome, None)))
    }

    /// Once a minute per user (a refused flood must not become a flood of log lines): the
    /// user's last accepted code is ahead of the clock.
    fn warn_if_clock_behind(&self, name: &str, user: &UserRecord, now: u64) {
        for u in &user.authenticators {
            self.warn_if_authenticator_ahead(name, u, now);
        }
    }

    fn warn_if_authenticator_ahead(&self, name: &str, u: &Authenticator, now: u64) {
        if u.kind == OtpKind::Hotp {
            return;
        }
        let current = (now / u.params.period.max(1)) as i64;
        let window = i64::from(u.window.unwrap_or(self.config().window));
        if u.last_step > current + window && !self.clock_warned.quiet(name, now) {
            self.clock_warned.note(name, now, false);
            self.log.warn(&format!(
                "clock: the system clock is {} s behind the last code accepted for user={}; \
                 that user's codes are refused until it catches up (check time \
                 synchronisation)",
                (u.last_step - current) as u64 * u.params.period,
                audit::field(name)
            ));
        }
    }

    /// What a mailed code has to do with this answer. `.0`, enrolled by email: a user with no
    /// app whose verified address is their factor (email_auto), or who has a live mailed code;
    /// every answer then goes through the mailed-code check (gate, failure counted), whatever
    /// is typed: it is never "not enrolled". `.1`: the attempt to check against the live code
    /// (a six-digit answer costs one hash; any other answer of a user enrolled by email cannot
    /// match, but still counts as a try).
    fn email_attempt(
        &self,
        no_app: bool,
        state: ThrottleRecord,
        mailed: Option<MailedCode>,
        verified_address: bool,
        code: &str,
        now: u64,
    ) -> (bool, Option<HashedTry>) {
        let cfg = self.config();
        let live_mail = mailed.as_ref().is_some_and(|m| now < m.expires);
        let by_email =
            no_app && cfg.email_codes && (live_mail || (cfg.email_auto && verified_address));
        let attempt = match (mailed, email::normalize_code(code)) {
            (Some(m), Some(typed))
                if cfg.email_codes
                    && live_mail
                    && gate_outcome(&cfg.throttle, state, now).is_none() =>
            {
                Some(HashedTry {
                    hash: self.hash_backup(Lane::Login, &typed, &m.salt),
                    salt: m.salt,
                })
            }
            (Some(m), _) if by_email => Some(HashedTry {
                hash: None,
                salt: m.salt,
            }),
            (None, _) if by_email => Some(HashedTry {
                hash: None,
                salt: Vec::new(),
            }),
            _ => None,
        };
        (by_email, attempt)
    }

    /// A name with no account: the same work as a wrong code of an enrolled user (against a
    /// decoy), and the same throttle, so that the answers (rejected, then throttled, then
    /// locked) do not tell the two apart.
    fn evaluate_unknown(
        &self,
        store: &Store,
        offline: bool,
        name: &str,
        input: &Input,
        now: u64,
        base: LoginBase,
    ) -> Result<Outcome, StoreError> {
        let window = self.config().window;
        let cfg = self.login_throttle(offline);
        match input {
            Input::Totp(c) => {
                let _ = otp::matching_steps(
                    &decoy_secret(),
                    &TotpParams::default(),
                    c,
                    now / 30,
                    window,
                );
            }
            Input::Backup(c) | Input::Helpdesk(c) => {
                let _ = self.hash_backup(Lane::Login, c, &[0x5a; backup::SALT_BYTES]);
            }
            Input::Garbage => {}
        }
        let owned = name.to_string();
        store.write(move |tx| {
            let state = tx.throttle(&owned)?;
            let outcome = match gate_outcome(&cfg, state, now) {
                Some(blocked) => blocked,
                None => {
                    tx.count_unknown_rejection()?;
                    fail_in_tx(tx, &owned, state, now, &cfg, Outcome::Wrong)?
                }
            };
            record_login(tx, &base, outcome)?;
            Ok(outcome)
        })
    }
}
