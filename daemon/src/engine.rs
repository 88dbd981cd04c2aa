//! The verification rules (DESIGN §3) and every operation of the protocol, over the store.
//! Time is a parameter: the server reads the clock once per request and passes `now`.

use crate::audit::{self, Logger};
use crate::backup;
use crate::config::{Config, Unenrolled};
use crate::email::{self, Mailer};
use crate::limits::{self, Budget, Coalesce, HashGate, Lane};
use crate::policy::{self, Caller, Decision, Operation};
use crate::seal;
use crate::store::{
    CodePurpose, MailedCode, PendingRecord, Store, StoreError, ThrottleRecord, Tx, UserRecord,
};
use crate::throttle::{self, Gate};
use crate::users;
use std::sync::{Arc, Mutex, RwLock};
use twofold_shared::otp::{self, Algorithm, TotpParams};
use twofold_shared::secret::{Secret, GENERATED_SECRET_BYTES};
use twofold_shared::uri::OtpAuthUri;
use twofold_shared::wire::{
    self, AuditEntry, EnrollmentInfo, ErrorKind, GroupReport, Method, PamItems, PolicyReport,
    Request, RequestBody, ResponseBody, SecretText, UserStatus, MAX_CODE, MAX_GRACE_SECS, MAX_ITEM,
    PROTOCOL_VERSION,
};

/// Wrong first codes after which a pending enrollment is discarded.
const MAX_FAILED_CONFIRMS: u32 = 5;
/// The least time a refused login takes (see [`Engine::handle`]): above what any refusal costs
/// on a quiet host (a name-service miss plus a durable write: about 1 ms here), far below what
/// anyone typing a code notices, and short enough that eight senders still deliver the
/// benchmark's flood of 1,000 wrong codes a second.
pub const REFUSAL_TIME: std::time::Duration = std::time::Duration::from_millis(4);

#[derive(Debug)]
pub struct Engine {
    store: Store,
    /// The policy in force; replaced whole on SIGHUP.
    config: RwLock<Arc<Config>>,
    /// Argon2id hashes running at once: each takes 19 MiB, so a burst of backup-code guesses
    /// must queue rather than exhaust memory.
    hashing: HashGate,
    /// The uid twofoldd runs as; it is trusted like root.
    daemon_uid: u32,
    log: Arc<Logger>,
    /// Delivery used instead of the configured one (tests).
    mailer: MailerSlot,
    /// Throttled refusals, recorded once a minute per user.
    quiet: Coalesce,
    /// Other repeated events (a login that met no enrollment, refused requests), recorded
    /// once a minute per kind and user or uid.
    repeated: Coalesce,
    /// What each unprivileged uid may change in a minute.
    budget: Budget,
    /// Users whose last accepted code is ahead of the clock, warned about once a minute.
    clock_warned: Coalesce,
    /// One `seal rekey` at a time.
    rekeying: Mutex<()>,
}

struct MailerSlot(Option<Arc<dyn Mailer>>);

impl std::fmt::Debug for MailerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "MailerSlot(custom)"
        } else {
            "MailerSlot(configured)"
        })
    }
}

/// A typed answer checked against a mailed login code: its hash under that code's salt.
struct EmailTry {
    salt: Vec<u8>,
    hash: Option<backup::BackupHash>,
}

/// Inside the writer: does the answer match the live mailed code? A match consumes the code;
/// a miss counts a try, and the fifth kills it.
fn email_in_tx(tx: &dyn Tx, name: &str, attempt: &EmailTry, now: u64) -> Result<bool, StoreError> {
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
fn verify_email_in_tx(
    tx: &dyn Tx,
    name: &str,
    attempt: &EmailTry,
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
enum Outcome {
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

/// What an import brings, as sent by the CLI.
struct Imported {
    secret: SecretText,
    params: TotpParams,
    window: Option<u32>,
    backup_codes: Vec<SecretText>,
    last_used_step: Option<u64>,
    force: bool,
}

struct FreshCodes {
    codes: Vec<SecretText>,
    hashes: Vec<backup::BackupHash>,
    salt: Vec<u8>,
}

/// What a typed code looks like.
enum Input {
    Totp(String),
    Backup(zeroize::Zeroizing<String>),
    Garbage,
}

/// A TOTP code has exactly the user's number of digits; anything else that can be a backup
/// code (including the 8-digit scratch codes of an imported google-authenticator file) is one.
fn classify(code: &str, digits: u32) -> Input {
    if code.len() > MAX_CODE {
        return Input::Garbage;
    }
    if let Some(c) = otp::normalize_code(code, digits) {
        return Input::Totp(c);
    }
    match backup::normalize(code) {
        Some(c) => Input::Backup(c),
        None => Input::Garbage,
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ResponseBody {
    ResponseBody::Error {
        kind,
        message: message.into(),
    }
}

/// The cause (a path, a database host, a driver's words) goes to the log, never to a caller,
/// who may be any local user.
fn storage_error() -> ResponseBody {
    error(
        ErrorKind::Storage,
        "the database failed; nothing was changed (the reason is in twofoldd's log)",
    )
}

/// What an enrollment may ask for: 6 or 8 digits (what apps show), a step of 15 s to 5 min.
fn enrollable(params: &TotpParams) -> Result<(), String> {
    params.validate()?;
    if params.digits != 6 && params.digits != 8 {
        return Err(format!(
            "digits must be 6 or 8 (what authenticator apps show), not {}",
            params.digits
        ));
    }
    if !(15..=300).contains(&params.period) {
        return Err(format!(
            "the step must be 15 to 300 seconds, not {}",
            params.period
        ));
    }
    Ok(())
}

/// A dummy secret used to spend the same work on unknown users as on real ones.
fn decoy_secret() -> Secret {
    Secret::from_bytes(vec![0x5a; GENERATED_SECRET_BYTES])
}

/// Stores a login's outcome in the audit trail, in the transaction that decided it; a failure
/// that reached the lockout limit also records the lockout.
/// A login's audit entry, and whether a refusal by the throttle goes unrecorded because one
/// was recorded for the same user less than [`limits::QUIET_SECS`] ago: a flood of guesses at a
/// throttled account (a local user can send thousands a second at their own) must not fill
/// the disk and the log. Every refusal that changes something (a wrong code, a lockout) is
/// always recorded.
#[derive(Clone)]
struct LoginBase {
    entry: AuditEntry,
    quiet: bool,
}

fn record_login(tx: &dyn Tx, base: &LoginBase, outcome: Outcome) -> Result<(), StoreError> {
    if base.quiet && matches!(outcome, Outcome::Throttled { .. } | Outcome::Locked) {
        return Ok(());
    }
    let base = &base.entry;
    let (result, method, detail) = match outcome {
        Outcome::Accepted {
            method: Method::Totp,
            ..
        } => ("accepted", Some("totp"), None),
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
        Outcome::Wrong => ("rejected", None, Some("wrong code".to_string())),
        Outcome::Replayed => ("rejected", None, Some("replayed".to_string())),
        Outcome::NowLocked => ("rejected", None, Some("wrong code; now locked".to_string())),
        Outcome::Throttled { until } => ("throttled", None, Some(format!("until {until}"))),
        Outcome::Locked => ("locked", None, None),
    };
    tx.audit(&AuditEntry {
        outcome: result.into(),
        method: method.map(Into::into),
        detail,
        ..base.clone()
    })?;
    if outcome == Outcome::NowLocked {
        tx.audit(&AuditEntry {
            event: "lockout".into(),
            outcome: "locked".into(),
            ..base.clone()
        })?;
    }
    Ok(())
}

/// What "remember this device" is keyed by (besides the user): the service, and where the
/// login comes from: the remote host, or for a local login (su, sudo, a console) the caller's
/// login session as the kernel numbers it (its audit session: a tty name is handed to the
/// next user within minutes); and who asked (PAM_RUSER). A remote host that is this host's
/// own name (sudo's `Defaults pam_rhost`) is no remote host. Without a remote host or a
/// session, nothing is remembered.
fn grace_key(pam: &PamItems, session: Option<u32>) -> Option<(String, String)> {
    let service = pam.service.clone().filter(|s| !s.is_empty())?;
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let this_host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok());
    let remote = nonempty(&pam.rhost).filter(|r| this_host.as_deref() != Some(r.as_str()));
    let mut origin = match (remote, session) {
        (Some(rhost), _) => format!("rhost:{rhost}"),
        (None, Some(session)) => format!(
            "session:{session} tty:{}",
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
type Device = (String, String);

/// After an accepted code, remembers the origin for later preflights (same transaction).
fn remember_in_tx(
    tx: &dyn Tx,
    name: &str,
    outcome: Outcome,
    grace: Option<&(String, String)>,
    now: u64,
) -> Result<(), StoreError> {
    match (outcome, grace) {
        (Outcome::Accepted { .. }, Some((service, origin))) => {
            tx.remember(name, service, origin, now)
        }
        _ => Ok(()),
    }
}

/// An audit entry for an administrative event.
fn admin_entry(now: u64, event: &str, name: &str, outcome: &str, uid: u32) -> AuditEntry {
    AuditEntry {
        time: now,
        event: event.into(),
        user: Some(name.to_string()),
        outcome: outcome.into(),
        caller_uid: Some(uid),
        ..Default::default()
    }
}

/// Evaluates a TOTP code inside the writer: throttle gate, window, high-water mark, failure
/// accounting — one transaction, so parallel submissions of one code succeed exactly once.
fn verify_totp_in_tx(
    tx: &dyn Tx,
    name: &str,
    code: &str,
    now: u64,
    window: u32,
    cfg: &throttle::ThrottleConfig,
    email_try: Option<&EmailTry>,
) -> Result<Outcome, StoreError> {
    let state = tx.throttle(name)?;
    if let Some(blocked) = gate_outcome(cfg, state, now) {
        return Ok(blocked);
    }
    let Some(user) = tx.user(name)? else {
        // Disabled between the snapshot and now: a plain failure.
        return fail_in_tx(tx, name, state, now, cfg, Outcome::Wrong);
    };
    let steps = otp::matching_steps(
        &user.secret,
        &user.params,
        code,
        user.params.step(now),
        user.window.unwrap_or(window),
    );
    let fresh = steps
        .iter()
        .copied()
        .filter(|&s| (s as i128) > i128::from(user.last_step))
        .max();
    match fresh {
        Some(step) if tx.advance_step(name, i64::try_from(step).unwrap_or(i64::MAX), now)? => {
            tx.clear_throttle(name)?;
            Ok(Outcome::Accepted {
                method: Method::Totp,
                left: None,
            })
        }
        _ if email_try.is_some_and(|t| email_in_tx(tx, name, t, now).unwrap_or(false)) => {
            tx.clear_throttle(name)?;
            Ok(Outcome::Accepted {
                method: Method::Email,
                left: None,
            })
        }
        _ => {
            let why = if steps.is_empty() {
                Outcome::Wrong
            } else {
                Outcome::Replayed
            };
            fail_in_tx(tx, name, state, now, cfg, why)
        }
    }
}

fn gate_outcome(
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

fn fail_in_tx(
    tx: &dyn Tx,
    name: &str,
    state: ThrottleRecord,
    now: u64,
    cfg: &throttle::ThrottleConfig,
    why: Outcome,
) -> Result<Outcome, StoreError> {
    let next = throttle::record_failure(state, now);
    tx.set_throttle(name, next)?;
    if cfg.lockout_after > 0 && next.failures == cfg.lockout_after {
        return Ok(Outcome::NowLocked);
    }
    Ok(why)
}

impl Engine {
    pub fn new(store: Store, config: Config, log: Arc<Logger>) -> Engine {
        Engine {
            store,
            config: RwLock::new(Arc::new(config)),
            hashing: HashGate::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
            daemon_uid: nix::unistd::geteuid().as_raw(),
            log,
            mailer: MailerSlot(None),
            quiet: Coalesce::default(),
            repeated: Coalesce::default(),
            budget: Budget::default(),
            clock_warned: Coalesce::default(),
            rekeying: Mutex::new(()),
        }
    }

    /// Sends mail through `mailer` instead of the configured transport (tests).
    pub fn with_mailer(mut self, mailer: Arc<dyn Mailer>) -> Engine {
        self.mailer = MailerSlot(Some(mailer));
        self
    }

    /// Argon2id of a backup code (or mailed code), waiting for a free slot in `lane`.
    fn hash_backup(&self, lane: Lane, normalized: &str, salt: &[u8]) -> Option<backup::BackupHash> {
        self.hashing.run(lane, || backup::hash(normalized, salt))
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts a new policy in force (SIGHUP). Socket and database stay as they are.
    pub fn reload(&self, mut new: Config, now: u64) {
        let old = self.config();
        if new.socket != old.socket
            || new.database != old.database
            || new.seal_key_file != old.seal_key_file
        {
            self.log.warn(
                "reload: socket, database and seal_key_file changes take effect only at restart",
            );
        }
        new.socket = old.socket.clone();
        new.database = old.database.clone();
        new.seal_key_file = old.seal_key_file.clone();
        self.log.info(&format!(
            "policy reloaded: enabled={} unenrolled={} require_groups={} window={} self_enroll={}",
            new.enabled,
            new.unenrolled.name(),
            audit::field(&new.require_groups.join(",")),
            new.window,
            new.self_enroll
        ));
        let entry = AuditEntry {
            time: now,
            event: "policy-reload".into(),
            outcome: "applied".into(),
            detail: Some(format!(
                "enabled={} unenrolled={} require_groups={}",
                new.enabled,
                new.unenrolled.name(),
                new.require_groups.join(",")
            )),
            ..Default::default()
        };
        match self.config.write() {
            Ok(mut c) => *c = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        if let Err(e) = self.store.write(move |tx| tx.audit(&entry)) {
            self.log.error(&format!("audit write failed: {e}"));
        }
    }

    /// Decodes one request frame and answers it. `session`: the caller's audit session (see
    /// [`grace_key`]).
    pub fn handle_payload(
        &self,
        uid: u32,
        session: Option<u32>,
        payload: &[u8],
        now: u64,
    ) -> ResponseBody {
        if let Some(v) = wire::peek_version(payload) {
            if v != PROTOCOL_VERSION {
                return error(
                    ErrorKind::VersionMismatch,
                    format!(
                        "client speaks protocol version {v}, twofoldd speaks {PROTOCOL_VERSION}"
                    ),
                );
            }
        }
        match wire::decode::<Request>(payload) {
            Ok(request) => self.handle_from(uid, session, request.body, now),
            Err(e) => {
                self.warn_repeated(
                    &format!("bad-request:{uid}"),
                    now,
                    &format!(
                        "bad request from uid {uid}: {}",
                        audit::text(&e.to_string())
                    ),
                );
                error(ErrorKind::BadRequest, e.to_string())
            }
        }
    }

    /// A warning that a caller can repeat at will (a refused request, a bad frame): logged
    /// once a minute per `key`, with the count of those left out.
    pub fn warn_repeated(&self, key: &str, now: u64, line: &str) {
        if let Some(n) = self.repeated.admit(key, now) {
            self.log.warn(&format!("{line}{}", limits::omitted(n)));
        }
    }

    /// Whether the enrollments stored under `name` (an account's own name) or for its uid are
    /// that account's: `None` if so, else the refusal, with a log line saying what to do. An
    /// enrollment made before uids were recorded is taken as the account's (and recorded).
    fn check_owner(&self, name: &str, uid: u32, now: u64) -> Option<ResponseBody> {
        let found = match self.store.read(|tx| tx.enrollments_for(name, uid)) {
            Ok(f) => f,
            Err(e) => return Some(self.store_failed("enrollment owner", name, &e)),
        };
        let mut legacy = false;
        for (enrolled, recorded) in &found {
            let why = match (enrolled == name, recorded) {
                (true, None) => {
                    legacy = true;
                    continue;
                }
                (true, Some(r)) if *r == uid => continue,
                (true, Some(r)) => format!(
                    "was made for uid {r}, and the account now has uid {uid} (deleted and made again?)"
                ),
                (false, _) => format!(
                    "is stored under the name {} (the account's name changed, or fully \
                     qualified names were switched on)",
                    audit::field(enrolled)
                ),
            };
            self.warn_repeated(
                &format!("owner:{name}"),
                now,
                &format!(
                    "user={} uid={uid}: refused: the enrollment {why}; if it is this account's, \
                     'twofold disable --user {}' and enroll again",
                    audit::field(name),
                    audit::field(enrolled)
                ),
            );
            return Some(error(
                ErrorKind::Internal,
                "this account's two-factor enrollment does not match the account; ask an administrator",
            ));
        }
        if legacy {
            let owned = name.to_string();
            if let Err(e) = self.store.write(move |tx| tx.set_user_uid(&owned, uid)) {
                return Some(self.store_failed("enrollment owner", name, &e));
            }
        }
        None
    }

    /// Answers one request. A login that is refused is answered no sooner than
    /// [`REFUSAL_TIME`] after it arrived, whoever it was for: a name with no account costs a
    /// name-service miss, an enrolled one a database write, and the difference must not tell
    /// an attacker which names exist or are enrolled.
    pub fn handle(&self, uid: u32, body: RequestBody, now: u64) -> ResponseBody {
        self.handle_from(uid, None, body, now)
    }

    /// [`Engine::handle`] for a caller in a known login session.
    pub fn handle_from(
        &self,
        uid: u32,
        session: Option<u32>,
        body: RequestBody,
        now: u64,
    ) -> ResponseBody {
        let started = std::time::Instant::now();
        let login = matches!(body, RequestBody::Verify { .. });
        let reply = self.answer(uid, session, body, now);
        if login && !matches!(reply, ResponseBody::Accepted { .. }) {
            if let Some(rest) = REFUSAL_TIME.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        reply
    }

    fn answer(&self, uid: u32, session: Option<u32>, body: RequestBody, now: u64) -> ResponseBody {
        let caller = Caller {
            uid,
            admin: uid == 0 || uid == self.daemon_uid,
        };
        let op = body.op_name();
        let (operation, target, pam) = match &body {
            RequestBody::Ping {} => (Operation::Ping, None, None),
            RequestBody::Preflight { user, pam, .. } => {
                (Operation::Preflight, Some(Some(user.clone())), Some(pam))
            }
            RequestBody::Verify { user, pam, .. } => {
                (Operation::Verify, Some(Some(user.clone())), Some(pam))
            }
            RequestBody::Enroll { user, .. } => (Operation::Enroll, Some(user.clone()), None),
            RequestBody::Confirm { user, .. } => (Operation::Confirm, Some(user.clone()), None),
            RequestBody::Status { user } => (Operation::Status, Some(user.clone()), None),
            RequestBody::BackupCodes { user, .. } => {
                (Operation::BackupCodes, Some(user.clone()), None)
            }
            RequestBody::Disable { user, .. } => (Operation::Disable, Some(user.clone()), None),
            RequestBody::List {} => (Operation::List, None, None),
            RequestBody::Policy {} => (Operation::Policy, None, None),
            RequestBody::Audit { user, .. } => (Operation::Audit, user.clone().map(Some), None),
            RequestBody::Import { user, .. } => (Operation::Import, Some(Some(user.clone())), None),
            RequestBody::SealRekey {} => (Operation::SealRekey, None, None),
            RequestBody::Unlock { user } => (Operation::Unlock, Some(Some(user.clone())), None),
            RequestBody::EmailSet { user, .. } => (Operation::EmailSet, Some(user.clone()), None),
            RequestBody::EmailConfirm { user, .. } => {
                (Operation::EmailConfirm, Some(user.clone()), None)
            }
            RequestBody::EmailRemove { user, .. } => {
                (Operation::EmailRemove, Some(user.clone()), None)
            }
            RequestBody::SendEmailCode { user, pam } => (
                Operation::SendEmailCode,
                Some(Some(user.clone())),
                Some(pam),
            ),
        };
        if let Some(pam) = pam {
            for item in [&pam.service, &pam.rhost, &pam.tty].into_iter().flatten() {
                if item.len() > MAX_ITEM {
                    return error(
                        ErrorKind::BadRequest,
                        format!("a PAM item is longer than {MAX_ITEM} bytes"),
                    );
                }
            }
        }
        // Resolve who the request is about: named, or the caller's own account. A name with an
        // account is replaced by the account's own name for its uid (see users::canonical), so
        // that every name of one account meets the same enrollment and throttle.
        let (name, target_uid) = match target {
            None => (String::new(), None),
            Some(Some(name)) => {
                if let Err(why) = users::validate_name(&name) {
                    return error(ErrorKind::BadRequest, why);
                }
                match users::canonical(&name) {
                    Ok(Some((canonical, account_uid))) => (canonical, Some(account_uid)),
                    Ok(None) => (name, None),
                    Err(why) => {
                        self.log.error(&format!(
                            "name service failed for user={}: {why}",
                            audit::field(&name)
                        ));
                        return error(ErrorKind::Internal, "the name service failed; try again");
                    }
                }
            }
            Some(None) => match users::name_of(uid) {
                Some(name) => (name, Some(uid)),
                None => return error(ErrorKind::NoSuchUser, format!("uid {uid} has no user name")),
            },
        };
        // An enrollment belongs to the account it was made for. Logins, and everything a user
        // asks about their own account, meet only that account's; root may still look at and
        // clean up a stale one.
        let login = matches!(operation, Operation::Preflight | Operation::Verify);
        if let (Some(account_uid), true) = (target_uid, login || !caller.admin) {
            if let Some(refusal) = self.check_owner(&name, account_uid, now) {
                return refusal;
            }
        }
        let decision = policy::authorize(caller, operation, target_uid, self.config().self_enroll);
        if let Decision::Deny(why) = decision {
            self.warn_repeated(
                &format!("denied:{uid}"),
                now,
                &format!(
                    "denied op={op} caller_uid={uid} user={} reason={}",
                    audit::field(&name),
                    audit::field(why)
                ),
            );
            return error(ErrorKind::PermissionDenied, why);
        }
        if !caller.admin && operation.changes() && !self.budget.spend(uid, now) {
            self.warn_repeated(
                &format!("budget:{uid}"),
                now,
                &format!(
                    "refused op={op} caller_uid={uid} reason=more than {} changes in a minute",
                    limits::WRITES_PER_MINUTE
                ),
            );
            return error(
                ErrorKind::RateLimited,
                "too many changes asked for in the last minute: wait a minute",
            );
        }
        let needs_code = decision == Decision::AllowWithCode;
        let target_user = (!name.is_empty()).then(|| name.clone());
        match body {
            RequestBody::Ping {} => ResponseBody::Pong {
                daemon_version: env!("CARGO_PKG_VERSION").into(),
            },
            RequestBody::Preflight {
                pam, grace_secs, ..
            } => {
                let device = (grace_secs > 0).then(|| grace_key(&pam, session)).flatten();
                self.preflight(
                    &name,
                    &pam,
                    device.map(|d| (d, grace_secs.min(MAX_GRACE_SECS))),
                    uid,
                    now,
                )
            }
            RequestBody::Verify {
                code,
                pam,
                grace_secs,
                ..
            } => {
                let device = (grace_secs > 0).then(|| grace_key(&pam, session)).flatten();
                self.verify(&name, &code, &pam, device, uid, now)
            }
            RequestBody::Enroll {
                force,
                code,
                params,
                ..
            } => self.enroll(&name, force, code, params, needs_code, uid, now),
            RequestBody::Confirm { code, .. } => self.confirm(&name, &code, target_uid, uid, now),
            RequestBody::Status { .. } => self.status(&name, now),
            RequestBody::BackupCodes { code, .. } => {
                self.regenerate(&name, code, needs_code, uid, now)
            }
            RequestBody::Disable { code, .. } => self.disable(&name, code, needs_code, uid, now),
            RequestBody::List {} => self.list(now),
            RequestBody::Policy {} => self.policy_report(),
            RequestBody::Unlock { .. } => self.unlock(&name, uid, now),
            RequestBody::EmailSet { address, code, .. } => {
                self.email_set(&name, &address, code, needs_code, uid, now)
            }
            RequestBody::EmailConfirm { code, .. } => self.email_confirm(&name, &code, uid, now),
            RequestBody::EmailRemove { code, .. } => {
                self.email_remove(&name, code, needs_code, uid, now)
            }
            RequestBody::SendEmailCode { pam, .. } => {
                if !self.config().enabled {
                    return ResponseBody::Disabled;
                }
                self.send_email_code(&name, &pam, false, uid, now)
            }
            RequestBody::Audit { since_secs, .. } => self.audit_trail(target_user, since_secs, now),
            RequestBody::SealRekey {} => self.seal_rekey(uid, now),
            RequestBody::Import {
                secret,
                params,
                window,
                backup_codes,
                last_used_step,
                force,
                ..
            } => self.import(
                &name,
                Imported {
                    secret,
                    params,
                    window,
                    backup_codes,
                    last_used_step,
                    force,
                },
                target_uid,
                uid,
                now,
            ),
        }
    }

    /// A known account without enrollment: refused when policy says so for everyone
    /// (`unenrolled = "deny"`) or for a group the account belongs to (`require_groups`).
    fn not_enrolled(&self, name: &str) -> ResponseBody {
        let cfg = self.config();
        if cfg.unenrolled == Unenrolled::Deny {
            return ResponseBody::NotEnrolled { required: true };
        }
        match users::in_any_group(name, &cfg.require_groups) {
            Ok(required) => ResponseBody::NotEnrolled { required },
            Err(why) => {
                self.log.error(&format!(
                    "require_groups for user={}: {}; refusing",
                    audit::field(name),
                    audit::field(&why)
                ));
                error(ErrorKind::Internal, "group membership could not be checked")
            }
        }
    }

    /// Before prompting: enrolled users (and names with no account, which must look the same)
    /// are asked for a code; known accounts without enrollment follow `unenrolled`.
    /// Logs and stores a login that met no enrollment: refused or let through by policy.
    /// Recorded once a minute per user and outcome (any local user can ask about their own
    /// unenrolled account thousands of times a second), with the count of those left out.
    fn record_not_enrolled(&self, mut entry: AuditEntry, reply: &ResponseBody) {
        entry.outcome = match reply {
            ResponseBody::NotEnrolled { required: true } => "refused-not-enrolled",
            _ => "ignored-not-enrolled",
        }
        .into();
        let key = format!(
            "{}:{}",
            entry.outcome,
            entry.user.as_deref().unwrap_or_default()
        );
        let Some(left_out) = self.repeated.admit(&key, entry.time) else {
            return;
        };
        if left_out > 0 {
            entry.detail = Some(format!("{left_out} more in the minute before"));
        }
        self.log.info(&format!(
            "login user={} service={} rhost={} tty={} outcome={}{}",
            audit::opt(entry.user.as_deref()),
            audit::opt(entry.service.as_deref()),
            audit::opt(entry.rhost.as_deref()),
            audit::opt(entry.tty.as_deref()),
            entry.outcome,
            limits::omitted(left_out)
        ));
        if let Err(e) = self.store.write(move |tx| tx.audit(&entry)) {
            self.log.error(&format!("audit write failed: {e}"));
        }
    }

    /// A login remembered from the same origin within `grace_secs` (and the user not locked).
    fn remembered(
        &self,
        name: &str,
        pam: &PamItems,
        (device, grace_secs): &(Device, u64),
        uid: u32,
        now: u64,
    ) -> Option<ResponseBody> {
        let (service, origin) = device;
        let grace_secs = *grace_secs;
        let cfg = self.config().throttle;
        let (at, state) = self
            .store
            .read(|tx| Ok((tx.remembered_at(name, service, origin)?, tx.throttle(name)?)))
            .ok()?;
        let at = at?;
        let fresh = at <= now && now < at.saturating_add(grace_secs);
        if !fresh || throttle::gate(&cfg, state, now) == Gate::Locked {
            return None;
        }
        let entry = AuditEntry {
            time: now,
            event: "login".into(),
            user: Some(name.to_string()),
            outcome: "accepted".into(),
            method: Some("remembered".into()),
            service: pam.service.clone(),
            rhost: pam.rhost.clone(),
            tty: pam.tty.clone(),
            caller_uid: Some(uid),
            detail: Some(format!("code given {} s ago", now - at)),
        };
        // Accepted only once the acceptance is on record. A user asking about their own
        // account (a screen locker) is recorded once a minute per device: they could ask in
        // a loop.
        let admin = uid == 0 || uid == self.daemon_uid;
        let record = admin
            || self
                .repeated
                .admit(&format!("remembered:{name}:{service}:{origin}"), now)
                .is_some();
        if record {
            if let Err(e) = self.store.write(move |tx| tx.audit(&entry)) {
                self.log.error(&format!("audit write failed: {e}"));
                return None;
            }
        }
        if record {
            self.log.info(&format!(
                "verify user={} service={} rhost={} tty={} caller_uid={uid} outcome=accepted method=remembered",
                audit::field(name),
                audit::opt(pam.service.as_deref()),
                audit::opt(pam.rhost.as_deref()),
                audit::opt(pam.tty.as_deref()),
            ));
        }
        Some(ResponseBody::Accepted {
            method: Method::Remembered,
            backup_codes_left: None,
        })
    }

    /// `grace`: the device and how long a login from it is remembered (module argument grace=).
    fn preflight(
        &self,
        name: &str,
        pam: &PamItems,
        grace: Option<(Device, u64)>,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        if !self.config().enabled {
            return ResponseBody::Disabled;
        }
        match self.store.read(|tx| Ok(tx.user(name)?.is_some())) {
            Ok(true) if grace.is_some() => grace
                .as_ref()
                .and_then(|g| self.remembered(name, pam, g, uid, now))
                .unwrap_or(ResponseBody::Prompt),
            Ok(true) => ResponseBody::Prompt,
            Ok(false) if users::uid_of(name).is_some() => {
                let cfg = self.config();
                if cfg.email_codes && cfg.email_auto {
                    match self.store.read(|tx| tx.email(name)) {
                        Ok(Some(e)) if e.verified => {
                            return self.send_email_code(name, pam, true, uid, now)
                        }
                        Ok(_) => {}
                        Err(e) => return self.store_failed("preflight", name, &e),
                    }
                }
                let reply = self.not_enrolled(name);
                let base = AuditEntry {
                    time: now,
                    event: "login".into(),
                    user: Some(name.to_string()),
                    service: pam.service.clone(),
                    rhost: pam.rhost.clone(),
                    tty: pam.tty.clone(),
                    caller_uid: Some(uid),
                    ..Default::default()
                };
                self.record_not_enrolled(base, &reply);
                reply
            }
            Ok(false) => ResponseBody::Prompt,
            Err(e) => self.store_failed("preflight", name, &e),
        }
    }

    fn store_failed(&self, op: &str, name: &str, e: &StoreError) -> ResponseBody {
        self.log
            .error(&format!("{op} user={} failed: {e}", audit::field(name)));
        storage_error()
    }

    /// The check a login makes; also used when a user proves themselves to change settings.
    fn verify(
        &self,
        name: &str,
        code: &SecretText,
        pam: &PamItems,
        remember: Option<Device>,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        if !self.config().enabled {
            return ResponseBody::Disabled;
        }
        self.verify_enabled(name, code, pam, remember, uid, now)
    }

    /// `verify` without the on/off switch.
    fn verify_enabled(
        &self,
        name: &str,
        code: &SecretText,
        pam: &PamItems,
        grace: Option<Device>,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let base = AuditEntry {
            time: now,
            event: "login".into(),
            user: Some(name.to_string()),
            service: pam.service.clone(),
            rhost: pam.rhost.clone(),
            tty: pam.tty.clone(),
            caller_uid: Some(uid),
            ..Default::default()
        };
        let quiet = self.quiet.quiet(name, now);
        let login = LoginBase {
            entry: base.clone(),
            quiet,
        };
        let outcome = match self.evaluate(name, code.expose(), now, login, grace) {
            Ok(Some(outcome)) => outcome,
            Ok(None) => {
                let reply = self.not_enrolled(name);
                self.record_not_enrolled(base, &reply);
                return reply;
            }
            Err(e) => return self.store_failed("verify", name, &e),
        };
        let (result, reply) = match outcome {
            Outcome::Accepted { method, left } => (
                match method {
                    Method::Totp => "accepted method=totp".to_string(),
                    Method::Remembered => "accepted method=remembered".to_string(),
                    Method::Email => "accepted method=email".to_string(),
                    Method::BackupCode => {
                        format!("accepted method=backup-code left={}", left.unwrap_or(0))
                    }
                },
                ResponseBody::Accepted {
                    method,
                    backup_codes_left: left,
                },
            ),
            Outcome::Wrong => ("rejected reason=wrong-code".into(), ResponseBody::Rejected),
            Outcome::Replayed => ("rejected reason=replayed".into(), ResponseBody::Rejected),
            Outcome::NowLocked => (
                "rejected reason=wrong-code locked=yes".into(),
                ResponseBody::Rejected,
            ),
            Outcome::Throttled { until } => (
                format!("throttled retry_after={}", until.saturating_sub(now)),
                ResponseBody::Throttled {
                    retry_after_secs: until.saturating_sub(now).max(1),
                },
            ),
            Outcome::Locked => ("locked".into(), ResponseBody::Locked),
        };
        let mut line = format!(
            "verify user={} service={} rhost={} tty={} caller_uid={uid} outcome={result}",
            audit::field(name),
            audit::opt(pam.service.as_deref()),
            audit::opt(pam.rhost.as_deref()),
            audit::opt(pam.tty.as_deref()),
        );
        if matches!(outcome, Outcome::Throttled { .. } | Outcome::Locked) {
            match self.quiet.note(name, now, quiet) {
                None => return reply,
                Some(0) => {}
                Some(n) => line.push_str(&format!(
                    " ({n} more refusals by the throttle since the last one logged)"
                )),
            }
        }
        match outcome {
            Outcome::Accepted { .. } => self.log.info(&line),
            Outcome::NowLocked => {
                self.log.warn(&line);
                self.log.warn(&format!(
                    "user={} locked after {} consecutive failures",
                    audit::field(name),
                    self.config().throttle.lockout_after
                ));
            }
            _ => self.log.warn(&line),
        }
        reply
    }

    /// `Ok(None)`: a known account without enrollment. Unknown names are evaluated against a
    /// decoy and rejected, at the same cost as a wrong code.
    fn evaluate(
        &self,
        name: &str,
        code: &str,
        now: u64,
        base: LoginBase,
        grace: Option<(String, String)>,
    ) -> Result<Option<Outcome>, StoreError> {
        let snapshot = self.store.read(|tx| {
            Ok((
                tx.user(name)?,
                tx.throttle(name)?,
                tx.mailed_code(name, CodePurpose::Login)?,
                tx.email(name)?.is_some_and(|a| a.verified),
            ))
        })?;
        let (user, state, mailed, verified_address) = snapshot;
        if let Some(u) = &user {
            let current = (now / u.params.period.max(1)) as i64;
            let window = i64::from(u.window.unwrap_or(self.config().window));
            // Once a minute per user: a refused flood must not become a flood of log lines.
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
        let cfg_now = self.config();
        let live_mail = mailed.as_ref().is_some_and(|m| now < m.expires);
        // Enrolled by email: a verified address is this user's factor (email_auto), or a code
        // was mailed and is still live. Every answer then goes through the mailed-code check
        // (gate, failure counted): whatever is typed, it is never "not enrolled".
        let by_email = user.is_none()
            && cfg_now.email_codes
            && (live_mail || (cfg_now.email_auto && verified_address));
        // A live mailed code: a six-digit answer is also checked against it (one hash).
        let email_try = match (mailed, email::normalize_code(code)) {
            (Some(m), Some(typed))
                if cfg_now.email_codes
                    && live_mail
                    && gate_outcome(&cfg_now.throttle, state, now).is_none() =>
            {
                Some(EmailTry {
                    hash: self.hash_backup(Lane::Login, &typed, &m.salt),
                    salt: m.salt,
                })
            }
            // No hash to compare: the answer cannot match, but it still counts as a try.
            (Some(m), _) if by_email => Some(EmailTry {
                hash: None,
                salt: m.salt,
            }),
            (None, _) if by_email => Some(EmailTry {
                hash: None,
                salt: Vec::new(),
            }),
            _ => None,
        };
        let digits = user
            .as_ref()
            .map_or(TotpParams::default().digits, |u| u.params.digits);
        let input = classify(code, digits);
        let window = self.config().window;
        let cfg = self.config().throttle;
        let owned = name.to_string();
        let not_totp = user
            .as_ref()
            .is_none_or(|_| !matches!(input, Input::Totp(_)));
        if let (Some(attempt), true) = (&email_try, not_totp || by_email) {
            // Only the mailed code can match (no enrollment, or not a TOTP-shaped answer).
            let attempt = EmailTry {
                salt: attempt.salt.clone(),
                hash: attempt.hash.clone(),
            };
            let outcome = self.store.write(move |tx| {
                let outcome = verify_email_in_tx(tx, &owned, &attempt, now, &cfg)?;
                record_login(tx, &base, outcome)?;
                remember_in_tx(tx, &owned, outcome, grace.as_ref(), now)?;
                Ok(outcome)
            })?;
            return Ok(Some(outcome));
        }
        let Some(user) = user else {
            if users::uid_of(name).is_some() {
                return Ok(None);
            }
            match &input {
                Input::Totp(c) => {
                    let _ = otp::matching_steps(
                        &decoy_secret(),
                        &TotpParams::default(),
                        c,
                        now / 30,
                        window,
                    );
                }
                Input::Backup(c) => {
                    let _ = self.hash_backup(Lane::Login, c, &[0x5a; backup::SALT_BYTES]);
                }
                Input::Garbage => {}
            }
            // The same throttle as for enrolled users, so that the answers (rejected, then
            // throttled, then locked) do not tell the two apart.
            let owned = name.to_string();
            let outcome = self.store.write(move |tx| {
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
            })?;
            return Ok(Some(outcome));
        };
        let outcome = match input {
            Input::Totp(c) => self.store.write(move |tx| {
                let outcome =
                    verify_totp_in_tx(tx, &owned, &c, now, window, &cfg, email_try.as_ref())?;
                record_login(tx, &base, outcome)?;
                remember_in_tx(tx, &owned, outcome, grace.as_ref(), now)?;
                Ok(outcome)
            })?,
            Input::Backup(c) => {
                // Do not spend an Argon2id hash on an attempt the throttle refuses anyway.
                if let Some(blocked) = gate_outcome(&cfg, state, now) {
                    self.store
                        .write(move |tx| record_login(tx, &base, blocked))?;
                    return Ok(Some(blocked));
                }
                let hash = self.hash_backup(Lane::Login, &c, &user.backup_salt);
                self.store.write(move |tx| {
                    let state = tx.throttle(&owned)?;
                    if let Some(blocked) = gate_outcome(&cfg, state, now) {
                        record_login(tx, &base, blocked)?;
                        return Ok(blocked);
                    }
                    let outcome = match hash {
                        Some(h) if tx.consume_backup_code(&owned, &h, now)? => {
                            tx.clear_throttle(&owned)?;
                            let left = tx.backup_codes_left(&owned)?;
                            Ok(Outcome::Accepted {
                                method: Method::BackupCode,
                                left: Some(left),
                            })
                        }
                        _ => fail_in_tx(tx, &owned, state, now, &cfg, Outcome::Wrong),
                    }?;
                    record_login(tx, &base, outcome)?;
                    remember_in_tx(tx, &owned, outcome, grace.as_ref(), now)?;
                    Ok(outcome)
                })?
            }
            Input::Garbage => self.store.write(move |tx| {
                let state = tx.throttle(&owned)?;
                let outcome = match gate_outcome(&cfg, state, now) {
                    Some(blocked) => blocked,
                    None => fail_in_tx(tx, &owned, state, now, &cfg, Outcome::Wrong)?,
                };
                record_login(tx, &base, outcome)?;
                Ok(outcome)
            })?,
        };
        Ok(Some(outcome))
    }

    /// For self-service changes to an active enrollment: the caller proves possession with a
    /// current code, which is consumed like a login. `None` means proven.
    fn prove(
        &self,
        name: &str,
        code: Option<SecretText>,
        uid: u32,
        now: u64,
    ) -> Option<ResponseBody> {
        let pam = PamItems {
            service: Some("twofold".into()),
            rhost: None,
            tty: None,
            ..Default::default()
        };
        let Some(code) = code else {
            // A user whose only factor is the address proves it with a mailed code: send one.
            let email_only = self
                .store
                .read(|tx| Ok(tx.user(name)?.is_none()))
                .unwrap_or(false);
            if email_only && self.config().email_codes {
                return Some(match self.send_email_code(name, &pam, true, uid, now) {
                    ResponseBody::EmailSent { masked } => error(
                        ErrorKind::CodeRequired,
                        format!(
                            "this changes your second factor: a code was mailed to {masked}; \
                             give it (--code CODE)"
                        ),
                    ),
                    other => other,
                });
            }
            return Some(error(
                ErrorKind::CodeRequired,
                "this changes an active enrollment: give a current code or a backup code",
            ));
        };
        // Not `verify`: proving possession works even while logins are switched off.
        match self.verify_enabled(name, &code, &pam, None, uid, now) {
            ResponseBody::Accepted { .. } => None,
            other => Some(other),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enroll(
        &self,
        name: &str,
        force: bool,
        code: Option<SecretText>,
        params: Option<TotpParams>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let params = params.unwrap_or_default();
        if let Err(why) = enrollable(&params) {
            return error(ErrorKind::BadRequest, why);
        }
        let (enrolled, guarded) = match self.store.read(|tx| {
            let enrolled = tx.user(name)?.is_some();
            Ok((enrolled, enrolled || self.email_factor(tx, name)?))
        }) {
            Ok(x) => x,
            Err(e) => return self.store_failed("enroll", name, &e),
        };
        if enrolled && !force {
            return error(
                ErrorKind::AlreadyEnrolled,
                format!("{name} is already enrolled; use --force to replace the enrollment"),
            );
        }
        // Adding an app to a verified address is adding a factor: it needs the one there is.
        if guarded && needs_code {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        // A key as long as the hash's output (RFC 6238 §5.1's test keys): 20, 32 or 64 bytes.
        let key_bytes = match params.algorithm {
            Algorithm::Sha1 => GENERATED_SECRET_BYTES,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        };
        let mut bytes = vec![0u8; key_bytes];
        if backup::random_bytes(&mut bytes).is_err() {
            return error(
                ErrorKind::Internal,
                "the system random number generator failed",
            );
        }
        let pending = PendingRecord {
            secret: Secret::from_bytes(bytes),
            params,
            created_at: now,
            failed_confirms: 0,
        };
        let issuer = self.config().issuer_or_hostname();
        let uri = OtpAuthUri {
            issuer: Some(issuer.clone()),
            account: name.to_string(),
            secret: pending.secret.clone(),
            params: pending.params,
        };
        let info = EnrollmentInfo {
            user: name.to_string(),
            label: format!("{issuer}:{name}"),
            issuer,
            secret: SecretText::new(pending.secret.to_base32()),
            otpauth_uri: SecretText::new(uri.to_uri()),
            algorithm: pending.params.algorithm,
            digits: pending.params.digits,
            period: pending.params.period,
        };
        let owned = name.to_string();
        let mut entry = admin_entry(now, "enroll", name, "pending", uid);
        entry.detail =
            enrolled.then(|| "replaces the active enrollment once confirmed".to_string());
        if let Err(e) = self.store.write(move |tx| {
            tx.put_pending(&owned, &pending)?;
            tx.audit(&entry)
        }) {
            return self.store_failed("enroll", name, &e);
        }
        self.log.info(&format!(
            "enroll user={} caller_uid={uid} outcome=pending replacing={}",
            audit::field(name),
            if enrolled { "yes" } else { "no" }
        ));
        ResponseBody::Enrollment(info)
    }

    /// `account`: the uid of the account `name` is, recorded with the enrollment.
    fn confirm(
        &self,
        name: &str,
        code: &SecretText,
        account: Option<u32>,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let pending = match self.store.read(|tx| tx.pending(name)) {
            Ok(Some(p)) => p,
            Ok(None) => {
                return error(
                    ErrorKind::NoPendingEnrollment,
                    "no enrollment is waiting for confirmation; run 'twofold enroll' first",
                )
            }
            Err(e) => return self.store_failed("confirm", name, &e),
        };
        let owned = name.to_string();
        if now > pending.created_at.saturating_add(self.config().pending_ttl) {
            let _ = self.store.write(move |tx| tx.delete_pending(&owned));
            return error(
                ErrorKind::NoPendingEnrollment,
                "the pending enrollment expired; run 'twofold enroll' again",
            );
        }
        let steps = match otp::normalize_code(code.expose(), pending.params.digits) {
            Some(c) => otp::matching_steps(
                &pending.secret,
                &pending.params,
                &c,
                pending.params.step(now),
                self.config().window,
            ),
            None => Vec::new(),
        };
        let Some(step) = steps.into_iter().max() else {
            let last_try = pending.failed_confirms + 1 >= MAX_FAILED_CONFIRMS;
            let entry = admin_entry(
                now,
                "confirm",
                name,
                if last_try { "discarded" } else { "rejected" },
                uid,
            );
            let result = self.store.write(move |tx| {
                if last_try {
                    tx.delete_pending(&owned)?;
                } else {
                    tx.count_failed_confirm(&owned)?;
                }
                tx.audit(&entry)
            });
            if let Err(e) = result {
                return self.store_failed("confirm", name, &e);
            }
            self.log.warn(&format!(
                "confirm user={} caller_uid={uid} outcome=rejected",
                audit::field(name)
            ));
            if last_try {
                return error(
                    ErrorKind::NoPendingEnrollment,
                    "too many wrong codes; the pending enrollment was discarded: run 'twofold enroll' again",
                );
            }
            return ResponseBody::Rejected;
        };
        let FreshCodes {
            codes,
            hashes,
            salt,
        } = match self.fresh_backup_codes() {
            Ok(x) => x,
            Err(reply) => return *reply,
        };
        let record = UserRecord {
            name: name.to_string(),
            secret: pending.secret.clone(),
            params: pending.params,
            enrolled_at: now,
            // The confirming code is spent: it cannot also open a login.
            last_step: i64::try_from(step).unwrap_or(i64::MAX),
            last_success: None,
            backup_salt: salt,
            window: None,
            uid: account,
        };
        let expected = pending.secret;
        let entry = admin_entry(now, "confirm", name, "enrolled", uid);
        let activated = self.store.write(move |tx| {
            // A second confirm racing this one finds the pending enrollment gone.
            match tx.pending(&record.name)? {
                Some(p) if p.secret == expected => {
                    tx.activate(&record, &hashes)?;
                    tx.audit(&entry)?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        });
        match activated {
            Ok(true) => {
                self.log.info(&format!(
                    "confirm user={} caller_uid={uid} outcome=enrolled",
                    audit::field(name)
                ));
                ResponseBody::BackupCodes {
                    user: name.to_string(),
                    codes,
                }
            }
            Ok(false) => error(
                ErrorKind::NoPendingEnrollment,
                "the pending enrollment changed meanwhile; run 'twofold enroll' again",
            ),
            Err(e) => self.store_failed("confirm", name, &e),
        }
    }

    /// New backup codes and their hashes (one Argon2id each: the slow part of enrollment).
    fn fresh_backup_codes(&self) -> Result<FreshCodes, Box<ResponseBody>> {
        let (codes, salt) = backup::generate(self.config().backup_codes as usize)
            .map_err(|e| Box::new(error(ErrorKind::Internal, e.to_string())))?;
        let hashes = codes
            .iter()
            .map(|c| {
                backup::normalize(c.expose()).and_then(|n| self.hash_backup(Lane::Bulk, &n, &salt))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Box::new(error(ErrorKind::Internal, "hashing backup codes failed")))?;
        Ok(FreshCodes {
            codes,
            hashes,
            salt,
        })
    }

    fn regenerate(
        &self,
        name: &str,
        code: Option<SecretText>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        match self.store.read(|tx| Ok(tx.user(name)?.is_some())) {
            Ok(true) => {}
            Ok(false) => return ResponseBody::NotEnrolled { required: false },
            Err(e) => return self.store_failed("backup-codes", name, &e),
        }
        if needs_code {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let FreshCodes {
            codes,
            hashes,
            salt,
        } = match self.fresh_backup_codes() {
            Ok(x) => x,
            Err(reply) => return *reply,
        };
        let owned = name.to_string();
        let entry = admin_entry(now, "backup-codes", name, "replaced", uid);
        let done = self.store.write(move |tx| {
            if tx.user(&owned)?.is_none() {
                return Ok(false);
            }
            tx.replace_backup_codes(&owned, &salt, &hashes)?;
            tx.audit(&entry)?;
            Ok(true)
        });
        match done {
            Ok(true) => {
                self.log.info(&format!(
                    "backup-codes user={} caller_uid={uid} outcome=replaced",
                    audit::field(name)
                ));
                ResponseBody::BackupCodes {
                    user: name.to_string(),
                    codes,
                }
            }
            Ok(false) => ResponseBody::NotEnrolled { required: false },
            Err(e) => self.store_failed("backup-codes", name, &e),
        }
    }

    fn disable(
        &self,
        name: &str,
        code: Option<SecretText>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let (enrolled, pending) = match self
            .store
            .read(|tx| Ok((tx.user(name)?.is_some(), tx.pending(name)?.is_some())))
        {
            Ok(x) => x,
            Err(e) => return self.store_failed("disable", name, &e),
        };
        if !enrolled && !pending {
            return ResponseBody::NotEnrolled { required: false };
        }
        if enrolled && needs_code {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let owned = name.to_string();
        let entry = admin_entry(
            now,
            "disable",
            name,
            if enrolled { "removed" } else { "cancelled" },
            uid,
        );
        let proven = enrolled || !needs_code;
        let removed = self.store.write(move |tx| {
            // Decided again inside the transaction: a confirmation landing after the snapshot
            // made an enrollment that this unproven request must not remove.
            if !proven && tx.user(&owned)?.is_some() {
                return Ok(false);
            }
            tx.delete_user(&owned)?;
            tx.audit(&entry)?;
            Ok(true)
        });
        match removed {
            Ok(false) => error(
                ErrorKind::CodeRequired,
                "an enrollment was confirmed meanwhile: give a current code or a backup code",
            ),
            Ok(true) => {
                self.log.info(&format!(
                    "disable user={} caller_uid={uid} outcome=removed",
                    audit::field(name)
                ));
                ResponseBody::Done {
                    message: if enrolled {
                        format!("two-factor enrollment of {name} removed")
                    } else {
                        format!("pending enrollment of {name} cancelled")
                    },
                }
            }
            Err(e) => self.store_failed("disable", name, &e),
        }
    }

    /// Whether a verified address is one of `name`'s factors (email codes switched on).
    fn email_factor(&self, tx: &dyn Tx, name: &str) -> Result<bool, StoreError> {
        Ok(self.config().email_codes && tx.email(name)?.is_some_and(|e| e.verified))
    }

    fn status_in(&self, tx: &dyn Tx, name: &str, now: u64) -> Result<UserStatus, StoreError> {
        let user = tx.user(name)?;
        let state = tx.throttle(name)?;
        let (throttled_until, locked) = match throttle::gate(&self.config().throttle, state, now) {
            Gate::Open => (None, false),
            Gate::Wait { until } => (Some(until), false),
            Gate::Locked => (None, true),
        };
        Ok(UserStatus {
            user: name.to_string(),
            enrolled: user.is_some(),
            pending: tx
                .pending(name)?
                .is_some_and(|p| now <= p.created_at.saturating_add(self.config().pending_ttl)),
            backup_codes_left: if user.is_some() {
                tx.backup_codes_left(name)?
            } else {
                0
            },
            enrolled_at: user.as_ref().map(|u| u.enrolled_at),
            last_success: user.as_ref().and_then(|u| u.last_success),
            failures: state.failures,
            throttled_until,
            locked,
            email: tx.email(name)?.map(|e| email::mask(&e.address)),
            email_verified: tx.email(name)?.is_some_and(|e| e.verified),
        })
    }

    fn status(&self, name: &str, now: u64) -> ResponseBody {
        match self.store.read(|tx| self.status_in(tx, name, now)) {
            Ok(s) => ResponseBody::Status(s),
            Err(e) => self.store_failed("status", name, &e),
        }
    }

    fn list(&self, now: u64) -> ResponseBody {
        let result = self.store.read(|tx| {
            let mut names = tx.user_names()?;
            names.extend(tx.pending_names()?);
            names.sort();
            names.dedup();
            names
                .iter()
                .map(|n| self.status_in(tx, n, now))
                .collect::<Result<Vec<_>, _>>()
        });
        match result {
            Ok(users) => ResponseBody::Users { users },
            Err(e) => self.store_failed("list", "-", &e),
        }
    }

    /// Makes an enrollment from elsewhere active at once (no pending step: the user's app
    /// already has the key). Replaces an existing one only with `force`.
    fn import(
        &self,
        name: &str,
        import: Imported,
        account: Option<u32>,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let secret = match Secret::from_base32(import.secret.expose()) {
            Ok(s) => s,
            Err(e) => {
                return error(
                    ErrorKind::BadRequest,
                    format!("the imported key is refused: {e}"),
                )
            }
        };
        if let Err(why) = import.params.validate() {
            return error(ErrorKind::BadRequest, why);
        }
        if import.window.is_some_and(|w| w > crate::import::MAX_WINDOW) {
            return error(
                ErrorKind::BadRequest,
                format!("window must be 0 to {}", crate::import::MAX_WINDOW),
            );
        }
        if import.backup_codes.len() > 100 {
            return error(ErrorKind::BadRequest, "more than 100 backup codes");
        }
        let normalized = match import
            .backup_codes
            .iter()
            .map(|c| backup::normalize(c.expose()))
            .collect::<Option<Vec<_>>>()
        {
            Some(n) => n,
            None => {
                return error(
                    ErrorKind::BadRequest,
                    "a backup code is neither 8 digits nor 16 base32 characters",
                )
            }
        };
        match self.store.read(|tx| Ok(tx.user(name)?.is_some())) {
            Ok(true) if !import.force => {
                return error(
                    ErrorKind::AlreadyEnrolled,
                    format!("{name} is already enrolled; use --force to replace the enrollment"),
                )
            }
            Ok(_) => {}
            Err(e) => return self.store_failed("import", name, &e),
        }
        let mut salt = vec![0u8; backup::SALT_BYTES];
        if backup::random_bytes(&mut salt).is_err() {
            return error(
                ErrorKind::Internal,
                "the system random number generator failed",
            );
        }
        let Some(hashes) = normalized
            .iter()
            .map(|c| self.hash_backup(Lane::Bulk, c, &salt))
            .collect::<Option<Vec<_>>>()
        else {
            return error(ErrorKind::Internal, "hashing backup codes failed");
        };
        let record = UserRecord {
            name: name.to_string(),
            secret,
            params: import.params,
            enrolled_at: now,
            last_step: import
                .last_used_step
                .map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX)),
            last_success: None,
            backup_salt: salt,
            window: import.window,
            uid: account,
        };
        let mut entry = admin_entry(now, "import", name, "enrolled", uid);
        entry.detail = Some(format!(
            "{} {} digits {} s window {} backup codes {}",
            record.params.algorithm,
            record.params.digits,
            record.params.period,
            record.window.map_or("default".into(), |w| format!("±{w}")),
            hashes.len()
        ));
        let message = format!(
            "{name} imported: {}",
            entry.detail.as_deref().unwrap_or_default()
        );
        self.apply_admin(entry, move |tx| tx.activate(&record, &hashes), message)
    }

    /// The newest entries of the trail (all users, or one), oldest first.
    fn audit_trail(&self, user: Option<String>, since_secs: Option<u64>, now: u64) -> ResponseBody {
        const LIMIT: u32 = 10_000;
        let since = since_secs.map_or(0, |s| now.saturating_sub(s));
        match self
            .store
            .read(|tx| tx.audit_entries(user.as_deref(), since, LIMIT))
        {
            Ok((entries, omitted)) => ResponseBody::Audit { entries, omitted },
            Err(e) => self.store_failed("audit", user.as_deref().unwrap_or("-"), &e),
        }
    }

    /// Hourly housekeeping: audit entries older than the retention, expired pending
    /// enrollments, and failure counts of names without enrollment untouched for a day (the
    /// throttle of names that are nobody's must not grow the database without bound).
    pub fn housekeeping(&self, now: u64) {
        let cfg = self.config();
        let audit_before = now.saturating_sub(cfg.audit_days.saturating_mul(86_400));
        let pending_before = now.saturating_sub(cfg.pending_ttl);
        let lockout = cfg.throttle.lockout_after;
        let max_entries = cfg.audit_max_entries;
        let result = self.store.write(move |tx| {
            Ok((
                tx.prune_audit(audit_before)? + tx.prune_audit_beyond(max_entries)?,
                tx.prune_pending(pending_before)?,
                tx.prune_throttle(now.saturating_sub(86_400), lockout)?,
                tx.prune_grace(now.saturating_sub(MAX_GRACE_SECS))?,
                // A day: past every code's life (email_code_ttl) and every resend limit.
                tx.prune_mailed_codes(now.saturating_sub(86_400))?,
            ))
        });
        match result {
            Ok((0, 0, 0, _, _)) => {}
            Ok((audit, pending, throttle, _, _)) => self.log.info(&format!(
                "housekeeping: removed {audit} audit entries (older than {} days or beyond the newest {}), {pending} expired pending enrollments, {throttle} stale failure counts",
                cfg.audit_days, cfg.audit_max_entries
            )),
            Err(e) => self.log.error(&format!("housekeeping failed: {e}")),
        }
    }

    /// A configuration file SIGHUP could not use: logged and kept in the trail.
    pub fn reload_refused(&self, why: &str, now: u64) {
        self.log.error(&format!(
            "reload refused, the previous policy stays in force: {why}"
        ));
        let entry = AuditEntry {
            time: now,
            event: "policy-reload".into(),
            outcome: "refused".into(),
            detail: Some(why.chars().take(300).collect()),
            ..Default::default()
        };
        if let Err(e) = self.store.write(move |tx| tx.audit(&entry)) {
            self.log.error(&format!("audit write failed: {e}"));
        }
    }

    fn policy_report(&self) -> ResponseBody {
        let cfg = self.config();
        let enrolled: std::collections::BTreeSet<String> =
            match self.store.read(|tx| tx.user_names()) {
                Ok(names) => names.into_iter().collect(),
                Err(e) => return self.store_failed("policy", "-", &e),
            };
        let accounts = crate::doctor::local_accounts(
            &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
        );
        let mut report = PolicyReport {
            enabled: cfg.enabled,
            unenrolled: cfg.unenrolled.name().into(),
            self_enroll: cfg.self_enroll,
            window: cfg.window,
            accounts: accounts.len() as u32,
            ..Default::default()
        };
        for name in &accounts {
            if !cfg.enabled {
                report.pass_without_code.push(name.clone());
            } else if enrolled.contains(name) {
                report.asked_for_code.push(name.clone());
            } else if matches!(
                self.not_enrolled(name),
                ResponseBody::NotEnrolled { required: true }
            ) {
                report.refused_until_enrolled.push(name.clone());
            } else {
                report.pass_without_code.push(name.clone());
            }
        }
        report.other_enrolled = enrolled.iter().filter(|n| !accounts.contains(n)).count() as u32;
        for group in &cfg.require_groups {
            let members: Vec<&String> = accounts
                .iter()
                .filter(|a| users::in_any_group(a, std::slice::from_ref(group)).unwrap_or(false))
                .collect();
            report.require_groups.push(GroupReport {
                group: group.clone(),
                exists: nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .is_some(),
                members: members.len() as u32,
                not_enrolled: members.iter().filter(|m| !enrolled.contains(**m)).count() as u32,
            });
        }
        ResponseBody::Policy(report)
    }

    fn mailer(&self, cfg: &Config) -> Result<Arc<dyn Mailer>, String> {
        match &self.mailer.0 {
            Some(m) => Ok(m.clone()),
            None => email::from_config(cfg).map(Arc::from),
        }
    }

    /// Mails a fresh code for `purpose` to `address` and stores its hash (and, for
    /// verification, the address) once the relay has taken the message: a code that never
    /// left cannot be used. The send is reserved first, in the writer: one mail per
    /// email_resend_secs for each purpose (a verification mail does not hold up the first login
    /// code), at most MAX_PER_HOUR of all kinds, failed sends included, however many requests
    /// arrive at once. `Err` is the reply.
    fn mail_code(
        &self,
        name: &str,
        address: &str,
        purpose: CodePurpose,
        pam: &PamItems,
        uid: u32,
        now: u64,
    ) -> Result<(), Box<ResponseBody>> {
        let cfg = self.config();
        let mut salt = vec![0u8; backup::SALT_BYTES];
        backup::random_bytes(&mut salt)
            .map_err(|e| Box::new(error(ErrorKind::Internal, e.to_string())))?;
        let owned = name.to_string();
        let reservation = MailedCode {
            hash: vec![0; 32],
            salt: salt.clone(),
            sent_at: now,
            expires: 0,
            tries: 0,
        };
        let resend = cfg.email_resend_secs;
        let reserved = self
            .store
            .write(move |tx| {
                let previous = tx.mailed_code(&owned, purpose)?;
                let too_soon = previous
                    .is_some_and(|p| p.sent_at <= now && now < p.sent_at.saturating_add(resend));
                if too_soon {
                    return Ok(Err(
                        "a code was mailed moments ago: use it, or wait a minute before asking again",
                    ));
                }
                if tx.mails_sent_since(&owned, now.saturating_sub(3599))? >= email::MAX_PER_HOUR {
                    return Ok(Err(
                        "ten codes were mailed in the last hour: wait before asking again",
                    ));
                }
                tx.put_mailed_code(&owned, purpose, &reservation)?;
                Ok(Ok(()))
            })
            .map_err(|e| Box::new(self.store_failed("email", name, &e)))?;
        if let Err(why) = reserved {
            self.warn_repeated(
                &format!("mail-limit:{name}"),
                now,
                &format!(
                    "email user={} caller_uid={uid} outcome=refused reason=rate-limit",
                    audit::field(name)
                ),
            );
            return Err(Box::new(error(ErrorKind::RateLimited, why)));
        }
        let code = email::generate_code()
            .map_err(|e| Box::new(error(ErrorKind::Internal, e.to_string())))?;
        let hash = self
            .hash_backup(Lane::Login, &code, &salt)
            .ok_or_else(|| Box::new(error(ErrorKind::Internal, "hashing the code failed")))?;
        let issuer = cfg.issuer_or_hostname();
        let minutes = cfg.email_code_ttl.div_ceil(60);
        let (subject, intro, what) = match purpose {
            CodePurpose::Login => (
                format!("{issuer}: your login code"),
                format!("Your {issuer} login code for {name} is"),
                "login code",
            ),
            CodePurpose::Verify => (
                format!("{issuer}: confirm your email address"),
                format!("To confirm this address for {name} on {issuer}, enter"),
                "address verification code",
            ),
        };
        let body = zeroize::Zeroizing::new(format!(
            "{intro}\n\n    {}\n\nIt is valid for {minutes} minutes and works once.\n\
             If you did not ask for it, someone may know your password: tell your administrator.\n",
            email::display_code(&code)
        ));
        let masked = email::mask(address);
        let sent = self
            .mailer(&cfg)
            .and_then(|m| m.send(address, &subject, &body));
        let mut entry = AuditEntry {
            time: now,
            event: "email".into(),
            user: Some(name.to_string()),
            outcome: "sent".into(),
            service: pam.service.clone(),
            rhost: pam.rhost.clone(),
            tty: pam.tty.clone(),
            caller_uid: Some(uid),
            detail: Some(format!("{what} to {masked}")),
            ..Default::default()
        };
        if let Err(why) = sent {
            self.log.error(&format!(
                "email user={} to={} caller_uid={uid} outcome=failed reason={}",
                audit::field(name),
                audit::field(&masked),
                audit::field(&why)
            ));
            entry.outcome = "failed".into();
            entry.detail = Some(format!("{what} to {masked}: {why}"));
            if let Err(e) = self.store.write(move |tx| tx.audit(&entry)) {
                self.log.error(&format!("audit write failed: {e}"));
            }
            return Err(Box::new(error(
                ErrorKind::MailFailed,
                "the code could not be sent by email (the reason is in twofoldd's log)",
            )));
        }
        let record = MailedCode {
            hash: hash.as_bytes().to_vec(),
            salt,
            sent_at: now,
            expires: now.saturating_add(cfg.email_code_ttl),
            tries: 0,
        };
        let owned = name.to_string();
        let address = address.to_string();
        self.store
            .write(move |tx| {
                // Still our reservation (a later one replaced it only past the resend limit).
                let ours = tx
                    .mailed_code(&owned, purpose)?
                    .is_some_and(|c| c.salt == record.salt);
                if ours {
                    if purpose == CodePurpose::Verify {
                        tx.put_email(&owned, &address)?;
                    }
                    tx.put_mailed_code(&owned, purpose, &record)?;
                }
                tx.audit(&entry)
            })
            .map_err(|e| Box::new(self.store_failed("email", name, &e)))?;
        self.log.info(&format!(
            "email user={} to={} caller_uid={uid} outcome=sent purpose={}",
            audit::field(name),
            audit::field(&masked),
            match purpose {
                CodePurpose::Login => "login",
                CodePurpose::Verify => "verify",
            }
        ));
        Ok(())
    }

    /// At login: a code to the verified address. `reuse`: a live code already mailed is
    /// announced again rather than refused by the resend limit (preflight with email_auto).
    fn send_email_code(
        &self,
        name: &str,
        pam: &PamItems,
        reuse: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let cfg = self.config();
        if !cfg.email_codes {
            self.log.warn(&format!(
                "send_email_code user={} caller_uid={uid} outcome=rejected reason=email-codes-off",
                audit::field(name)
            ));
            return ResponseBody::Rejected;
        }
        let read = self.store.read(|tx| {
            Ok((
                tx.email(name)?,
                tx.throttle(name)?,
                tx.mailed_code(name, CodePurpose::Login)?,
            ))
        });
        let (address, state, live) = match read {
            Ok(x) => x,
            Err(e) => return self.store_failed("send_email_code", name, &e),
        };
        match throttle::gate(&cfg.throttle, state, now) {
            Gate::Open => {}
            Gate::Wait { until } => {
                return ResponseBody::Throttled {
                    retry_after_secs: until.saturating_sub(now).max(1),
                }
            }
            Gate::Locked => return ResponseBody::Locked,
        }
        let Some(address) = address.filter(|a| a.verified) else {
            self.log.warn(&format!(
                "send_email_code user={} caller_uid={uid} outcome=rejected reason=no-verified-address",
                audit::field(name)
            ));
            return ResponseBody::Rejected;
        };
        let masked = email::mask(&address.address);
        if reuse && live.is_some_and(|c| now < c.expires && now < c.sent_at.saturating_add(60)) {
            return ResponseBody::EmailSent { masked };
        }
        match self.mail_code(name, &address.address, CodePurpose::Login, pam, uid, now) {
            Ok(()) => ResponseBody::EmailSent { masked },
            Err(reply) => *reply,
        }
    }

    fn email_set(
        &self,
        name: &str,
        address: &str,
        code: Option<SecretText>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        if !self.config().email_codes {
            return error(
                ErrorKind::BadRequest,
                "email codes are switched off on this host (email_codes in twofold.toml)",
            );
        }
        if let Err(why) = email::validate_address(address) {
            return error(ErrorKind::BadRequest, why);
        }
        if users::uid_of(name).is_none() {
            return error(
                ErrorKind::NoSuchUser,
                format!("{name} is not a local account"),
            );
        }
        let guarded = match self
            .store
            .read(|tx| Ok(tx.user(name)?.is_some() || self.email_factor(tx, name)?))
        {
            Ok(g) => g,
            Err(e) => return self.store_failed("email set", name, &e),
        };
        if needs_code && guarded {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let pam = PamItems {
            service: Some("twofold".into()),
            ..Default::default()
        };
        match self.mail_code(name, address, CodePurpose::Verify, &pam, uid, now) {
            Ok(()) => ResponseBody::EmailSent {
                masked: email::mask(address),
            },
            Err(reply) => *reply,
        }
    }

    fn email_confirm(&self, name: &str, code: &SecretText, uid: u32, now: u64) -> ResponseBody {
        let mailed = match self
            .store
            .read(|tx| tx.mailed_code(name, CodePurpose::Verify))
        {
            Ok(m) => m.filter(|m| now < m.expires),
            Err(e) => return self.store_failed("email confirm", name, &e),
        };
        let Some(mailed) = mailed else {
            return error(
                ErrorKind::NoPendingEnrollment,
                "no address is waiting for its code (or the code expired): run 'twofold email set ADDRESS'",
            );
        };
        let hash = email::normalize_code(code.expose())
            .and_then(|c| self.hash_backup(Lane::Login, &c, &mailed.salt));
        let owned = name.to_string();
        let salt = mailed.salt.clone();
        let mut entry = admin_entry(now, "email-confirm", name, "verified", uid);
        let result = self.store.write(move |tx| {
            let Some(m) = tx.mailed_code(&owned, CodePurpose::Verify)? else {
                return Ok(None);
            };
            if m.salt != salt || now >= m.expires {
                return Ok(None);
            }
            let ok = hash.as_ref().is_some_and(|h| {
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    h.as_bytes(),
                    m.hash.as_slice(),
                ))
            });
            if ok {
                tx.set_email_verified(&owned)?;
            } else if m.tries + 1 >= email::MAX_TRIES {
                tx.delete_mailed_code(&owned, CodePurpose::Verify)?;
                entry.outcome = "discarded".into();
            } else {
                tx.count_mailed_code_try(&owned, CodePurpose::Verify)?;
                entry.outcome = "rejected".into();
            }
            tx.audit(&entry)?;
            Ok(Some((ok, m.tries + 1 >= email::MAX_TRIES)))
        });
        match result {
            Ok(Some((true, _))) => {
                self.log.info(&format!(
                    "email-confirm user={} caller_uid={uid} outcome=verified",
                    audit::field(name)
                ));
                ResponseBody::Done {
                    message: format!("email address of {name} verified"),
                }
            }
            Ok(Some((false, dead))) => {
                self.log.warn(&format!(
                    "email-confirm user={} caller_uid={uid} outcome=rejected",
                    audit::field(name)
                ));
                if dead {
                    error(
                        ErrorKind::NoPendingEnrollment,
                        "too many wrong codes; run 'twofold email set ADDRESS' again",
                    )
                } else {
                    ResponseBody::Rejected
                }
            }
            Ok(None) => error(
                ErrorKind::NoPendingEnrollment,
                "the code changed meanwhile; use the newest mail",
            ),
            Err(e) => self.store_failed("email confirm", name, &e),
        }
    }

    fn email_remove(
        &self,
        name: &str,
        code: Option<SecretText>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let (address, enrolled) = match self
            .store
            .read(|tx| Ok((tx.email(name)?, tx.user(name)?.is_some())))
        {
            Ok(x) => x,
            Err(e) => return self.store_failed("email remove", name, &e),
        };
        let Some(address) = address else {
            return error(
                ErrorKind::BadRequest,
                format!("{name} has no email address registered"),
            );
        };
        if needs_code && (address.verified || enrolled) {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let owned = name.to_string();
        self.apply_admin(
            admin_entry(now, "email-remove", name, "removed", uid),
            move |tx| tx.delete_email(&owned).map(drop),
            format!("email address of {name} removed"),
        )
    }

    /// An administrative change, its audit entry and its log line: all of it, or an error and
    /// none of it.
    /// `twofold seal rekey`: a new key file, every secret re-encrypted under it in one
    /// transaction, then the file put in place. A crash between the commit and the rename
    /// leaves the new key at `FILE.new`, which twofoldd finds and promotes at its next start.
    fn seal_rekey(&self, uid: u32, now: u64) -> ResponseBody {
        let Some(path) = self.config().seal_key_file.clone() else {
            return error(
                ErrorKind::BadRequest,
                "secrets are not sealed: set seal_key_file and restart twofoldd first",
            );
        };
        let _one_at_a_time = self.rekeying.lock().unwrap_or_else(|p| p.into_inner());
        let pending = seal::pending_path(&path);
        if pending.exists() {
            // Left by an earlier rekey: if the database already uses it (its rename failed),
            // it is the only copy of the key and goes in place first; otherwise it never
            // committed and opens nothing.
            let owner = nix::unistd::geteuid().as_raw();
            let opens = seal::read_key(&pending, owner)
                .map(|k| self.store.opens_with(&seal::Sealer::from_key(&k)));
            match opens {
                Ok(Ok(true)) => {
                    if let Err(why) = seal::promote_pending(&path) {
                        self.log.error(&format!("seal rekey: {why}"));
                        return error(ErrorKind::Internal, why);
                    }
                    self.log.warn(
                        "seal rekey: the key of an earlier rekey was not in place; it is now",
                    );
                }
                Ok(Err(e)) => return self.store_failed("seal rekey", "-", &e),
                Ok(Ok(false)) | Err(_) => {
                    let _ = std::fs::remove_file(&pending);
                }
            }
        }
        let key = match seal::Sealer::generate_key()
            .and_then(|k| seal::write_key(&pending, &k).map(|_| k))
        {
            Ok(k) => k,
            Err(why) => {
                self.log.error(&format!("seal rekey: {why}"));
                return error(ErrorKind::Internal, why);
            }
        };
        let count = match self.store.rekey(seal::Sealer::from_key(&key)) {
            Ok(n) => n,
            Err(StoreError::Unavailable) => {
                // Whether it committed is unknown: FILE.new stays, and the next start (or rekey)
                // puts it in place if the database uses it.
                self.log.error(&format!(
                    "seal rekey: the database writer did not answer; {} is kept",
                    pending.display()
                ));
                return storage_error();
            }
            Err(e) => {
                let _ = std::fs::remove_file(&pending);
                self.log
                    .error(&format!("seal rekey failed, the old key stays: {e}"));
                return storage_error();
            }
        };
        if let Err(why) = seal::promote_pending(&path) {
            self.log.error(&format!(
                "seal rekey: the database uses the new key, but {why}; it is in {} and \
                 twofoldd will put it in place at its next start",
                pending.display()
            ));
            return error(ErrorKind::Internal, why);
        }
        let mut entry = admin_entry(now, "seal-rekey", "-", "rekeyed", uid);
        entry.user = None;
        entry.detail = Some(format!("{count} secrets"));
        if let Err(e) = self.store.write(move |tx| tx.audit(&entry)) {
            self.log.error(&format!("audit write failed: {e}"));
        }
        self.log
            .info(&format!("seal rekey caller_uid={uid} secrets={count}"));
        ResponseBody::Done {
            message: format!(
                "{count} secrets re-encrypted under a new key in {}",
                path.display()
            ),
        }
    }

    fn apply_admin(
        &self,
        entry: AuditEntry,
        change: impl FnOnce(&dyn Tx) -> Result<(), StoreError> + Send + 'static,
        message: String,
    ) -> ResponseBody {
        let name = entry.user.clone().unwrap_or_default();
        let line = format!(
            "{} user={} caller_uid={} outcome={}{}",
            entry.event,
            audit::field(&name),
            entry.caller_uid.map_or("-".into(), |u| u.to_string()),
            entry.outcome,
            entry
                .detail
                .as_deref()
                .map_or(String::new(), |d| format!(" {}", audit::text(d))),
        );
        let op = entry.event.clone();
        match self.store.write(move |tx| {
            change(tx)?;
            tx.audit(&entry)
        }) {
            Ok(()) => {
                self.log.info(&line);
                ResponseBody::Done { message }
            }
            Err(e) => self.store_failed(&op, &name, &e),
        }
    }

    fn unlock(&self, name: &str, uid: u32, now: u64) -> ResponseBody {
        let owned = name.to_string();
        self.apply_admin(
            admin_entry(now, "unlock", name, "cleared", uid),
            move |tx| tx.clear_throttle(&owned),
            format!("{name} unlocked: failure count cleared"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine over a real SQLite file in a temp dir, with the clock under the test's control.
    fn engine(extra: &str) -> (Engine, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let config = Config::parse(&format!("issuer = \"t\"\n{extra}")).unwrap();
        (Engine::new(store, config, Arc::new(Logger::Stderr)), dir)
    }

    const T0: u64 = 1_800_000_000; // a step boundary: 1_800_000_000 / 30 = 60_000_000

    /// Enrolls `name` at `now`, confirming with the code of step(now); returns the secret.
    fn enrolled(e: &Engine, name: &str, now: u64) -> Secret {
        let ResponseBody::Enrollment(info) = e.handle(
            0,
            RequestBody::Enroll {
                user: Some(name.into()),
                force: false,
                code: None,
                params: None,
            },
            now,
        ) else {
            panic!("enroll failed")
        };
        let secret = Secret::from_base32(info.secret.expose()).unwrap();
        let code = otp::totp_at(&secret, &TotpParams::default(), now);
        let reply = e.handle(
            0,
            RequestBody::Confirm {
                user: Some(name.into()),
                code: SecretText::new(code),
            },
            now,
        );
        assert!(
            matches!(reply, ResponseBody::BackupCodes { .. }),
            "{reply:?}"
        );
        secret
    }

    fn verify(e: &Engine, name: &str, code: &str, now: u64) -> ResponseBody {
        e.handle(
            0,
            RequestBody::Verify {
                user: name.into(),
                code: SecretText::new(code),
                pam: PamItems::default(),
                grace_secs: 0,
            },
            now,
        )
    }

    fn code_at_step(secret: &Secret, step: u64) -> String {
        otp::totp_for_step(secret, &TotpParams::default(), step)
    }

    #[test]
    fn window_edges_through_the_engine() {
        let (e, _dir) = engine("[throttle]\nfree_failures = 100\nlockout_after = 0");
        // Enrolled long ago so that the high-water mark is below every step tried here.
        let secret = enrolled(&e, "w", T0 - 3600);
        let now = T0 + 1_000 * 30 + 10;
        let t = now / 30;
        for (step, ok) in [
            (t - 2, false),
            (t - 1, true),
            (t, true),
            (t + 1, true),
            (t + 2, false),
        ] {
            let reply = verify(&e, "w", &code_at_step(&secret, step), now);
            assert_eq!(
                matches!(reply, ResponseBody::Accepted { .. }),
                ok,
                "step offset {}",
                step as i64 - t as i64
            );
        }
    }

    #[test]
    fn replay_is_by_step_not_by_code() {
        let (e, _dir) = engine("");
        let secret = enrolled(&e, "r", T0);
        let t = T0 / 30;
        // The confirming code (step t) cannot open a login.
        assert!(matches!(
            verify(&e, "r", &code_at_step(&secret, t), T0 + 5),
            ResponseBody::Rejected
        ));
        assert!(matches!(
            verify(&e, "r", &code_at_step(&secret, t + 2), T0 + 60),
            ResponseBody::Accepted { .. }
        ));
        // Step t+1 was never used and is inside the window, but below the high-water mark.
        assert!(matches!(
            verify(&e, "r", &code_at_step(&secret, t + 1), T0 + 60),
            ResponseBody::Rejected
        ));
        assert!(matches!(
            verify(&e, "r", &code_at_step(&secret, t + 3), T0 + 61),
            ResponseBody::Accepted { .. }
        ));
    }

    #[test]
    fn clock_rollback_cannot_reenable_old_codes() {
        let (e, _dir) = engine("");
        let secret = enrolled(&e, "c", T0);
        let t = T0 / 30;
        assert!(matches!(
            verify(&e, "c", &code_at_step(&secret, t + 1), T0 + 30),
            ResponseBody::Accepted { .. }
        ));
        // The clock jumps back an hour: codes of that time are valid by the window, but old.
        let back = T0 - 3600;
        assert!(matches!(
            verify(&e, "c", &code_at_step(&secret, back / 30), back),
            ResponseBody::Rejected
        ));
    }

    #[test]
    fn throttle_schedule_through_the_engine() {
        let (e, _dir) = engine("");
        let secret = enrolled(&e, "th", T0);
        for i in 0..5 {
            assert!(matches!(
                verify(&e, "th", "000000", T0 + i),
                ResponseBody::Rejected
            ));
        }
        // Sixth at once: throttled for 30 s from the last failure, not evaluated.
        let good = code_at_step(&secret, (T0 + 40) / 30);
        assert!(matches!(
            verify(&e, "th", &good, T0 + 5),
            ResponseBody::Throttled {
                retry_after_secs: 29
            }
        ));
        // After the wait the right code is accepted and the count is reset.
        assert!(matches!(
            verify(&e, "th", &good, T0 + 40),
            ResponseBody::Accepted { .. }
        ));
        let ResponseBody::Status(s) = e.handle(
            0,
            RequestBody::Status {
                user: Some("th".into()),
            },
            T0 + 41,
        ) else {
            panic!()
        };
        assert_eq!(s.failures, 0);
    }

    #[test]
    fn garbage_and_overlong_input_count_as_failures_without_panicking() {
        // No free failures and no delay: every input is evaluated, and each must count.
        let (e, _dir) = engine(
            "[throttle]\nfree_failures = 0\nbase_delay = 0\nmax_delay = 0\nlockout_after = 0",
        );
        enrolled(&e, "g", T0);
        let junk = [
            "",
            "12345",
            "abc",
            &"9".repeat(10_000),
            "１２３４５６",
            "\u{0}\u{1b}",
        ];
        for (i, input) in junk.iter().enumerate() {
            assert!(
                matches!(verify(&e, "g", input, T0), ResponseBody::Rejected),
                "{i}"
            );
        }
        let ResponseBody::Status(s) = e.handle(
            0,
            RequestBody::Status {
                user: Some("g".into()),
            },
            T0,
        ) else {
            panic!("no status")
        };
        assert_eq!(s.failures as usize, junk.len());
    }

    #[test]
    fn pending_enrollment_expires_and_dies_after_wrong_codes() {
        let (e, _dir) = engine("pending_ttl = 600");
        let reply = e.handle(
            0,
            RequestBody::Enroll {
                user: Some("p".into()),
                force: false,
                code: None,
                params: None,
            },
            T0,
        );
        assert!(matches!(reply, ResponseBody::Enrollment(_)));
        let late = e.handle(
            0,
            RequestBody::Confirm {
                user: Some("p".into()),
                code: SecretText::new("123456"),
            },
            T0 + 601,
        );
        assert!(
            matches!(
                late,
                ResponseBody::Error {
                    kind: ErrorKind::NoPendingEnrollment,
                    ..
                }
            ),
            "{late:?}"
        );
        e.handle(
            0,
            RequestBody::Enroll {
                user: Some("p".into()),
                force: false,
                code: None,
                params: None,
            },
            T0,
        );
        for _ in 0..4 {
            let r = e.handle(
                0,
                RequestBody::Confirm {
                    user: Some("p".into()),
                    code: SecretText::new("000000"),
                },
                T0,
            );
            assert!(matches!(r, ResponseBody::Rejected), "{r:?}");
        }
        let r = e.handle(
            0,
            RequestBody::Confirm {
                user: Some("p".into()),
                code: SecretText::new("000000"),
            },
            T0,
        );
        assert!(
            matches!(
                r,
                ResponseBody::Error {
                    kind: ErrorKind::NoPendingEnrollment,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn switched_off_means_disabled_for_logins() {
        let (e, _dir) = engine("enabled = false");
        let r = e.handle(
            0,
            RequestBody::Preflight {
                user: "root".into(),
                pam: PamItems::default(),
                grace_secs: 0,
            },
            T0,
        );
        assert!(matches!(r, ResponseBody::Disabled));
        assert!(matches!(
            verify(&e, "root", "123456", T0),
            ResponseBody::Disabled
        ));
    }

    #[test]
    fn audit_entries_are_pruned_by_age() {
        let (e, _dir) = engine("audit_days = 1");
        enrolled(&e, "old", T0);
        let count = |now| match e.handle(
            0,
            RequestBody::Audit {
                user: None,
                since_secs: None,
            },
            now,
        ) {
            ResponseBody::Audit { entries, .. } => entries.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(count(T0), 2, "enroll and confirm");
        e.housekeeping(T0 + 86_400);
        assert_eq!(count(T0 + 86_400), 2, "a day old is kept");
        e.housekeeping(T0 + 86_401);
        assert_eq!(count(T0 + 86_401), 0);
    }

    #[test]
    fn housekeeping_forgets_stale_counts_of_nobody_and_expired_pendings() {
        let (e, _dir) = engine("");
        enrolled(&e, "kept", T0);
        for name in ["kept", "ghost"] {
            assert!(matches!(
                verify(&e, name, "000000", T0),
                ResponseBody::Rejected
            ));
        }
        e.handle(
            0,
            RequestBody::Enroll {
                user: Some("late".into()),
                force: false,
                code: None,
                params: None,
            },
            T0,
        );
        let status = |name: &str, now| match e.handle(
            0,
            RequestBody::Status {
                user: Some(name.into()),
            },
            now,
        ) {
            ResponseBody::Status(s) => s,
            other => panic!("{other:?}"),
        };
        assert!(status("late", T0).pending);
        assert!(
            !status("late", T0 + 901).pending,
            "expired pending enrollments are not shown as pending"
        );
        e.housekeeping(T0 + 86_401);
        assert_eq!(
            status("kept", T0 + 86_401).failures,
            1,
            "an enrolled user's count stays"
        );
        assert_eq!(
            status("ghost", T0 + 86_401).failures,
            0,
            "nobody's stale count goes"
        );
        let ResponseBody::Users { users } = e.handle(0, RequestBody::List {}, T0 + 86_401) else {
            panic!()
        };
        assert!(
            users.iter().all(|u| u.user != "late"),
            "expired pending enrollment removed"
        );
    }

    #[test]
    fn remembered_devices_expire_and_do_not_outlast_a_lock() {
        let (e, _dir) = engine(
            "[throttle]\nfree_failures = 5\nbase_delay = 0\nmax_delay = 0\nlockout_after = 2",
        );
        let secret = enrolled(&e, "g", T0);
        let pam = PamItems {
            service: Some("sshd".into()),
            rhost: Some("192.0.2.1".into()),
            tty: None,
            ..Default::default()
        };
        let pre = |grace, now| {
            e.handle(
                0,
                RequestBody::Preflight {
                    user: "g".into(),
                    pam: pam.clone(),
                    grace_secs: grace,
                },
                now,
            )
        };
        let code = code_at_step(&secret, T0 / 30 + 1);
        let ok = e.handle(
            0,
            RequestBody::Verify {
                user: "g".into(),
                code: SecretText::new(code),
                pam: pam.clone(),
                grace_secs: 60,
            },
            T0 + 30,
        );
        assert!(
            matches!(
                ok,
                ResponseBody::Accepted {
                    method: Method::Totp,
                    ..
                }
            ),
            "{ok:?}"
        );
        assert!(matches!(
            pre(60, T0 + 89),
            ResponseBody::Accepted {
                method: Method::Remembered,
                ..
            }
        ));
        assert!(matches!(pre(60, T0 + 90), ResponseBody::Prompt), "expired");
        assert!(matches!(pre(0, T0 + 31), ResponseBody::Prompt), "grace off");
        assert!(
            matches!(pre(60, T0 + 29), ResponseBody::Prompt),
            "a clock that went back does not extend it"
        );
        // Locked: a remembered device does not get around the lock.
        for _ in 0..2 {
            verify(&e, "g", "000000", T0 + 40);
        }
        assert!(matches!(pre(60, T0 + 41), ResponseBody::Prompt));
    }

    #[test]
    fn at_most_n_hashes_run_at_once() {
        let gate = Arc::new(HashGate::new(2));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
                std::thread::spawn(move || {
                    gate.run(Lane::Login, || {
                        let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    })
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn preflight_hides_which_names_exist() {
        let (e, _dir) = engine("unenrolled = \"deny\"");
        enrolled(&e, "enrolled-name", T0);
        let pre = |n: &str| {
            e.handle(
                0,
                RequestBody::Preflight {
                    user: n.into(),
                    pam: PamItems::default(),
                    grace_secs: 0,
                },
                T0,
            )
        };
        assert!(matches!(pre("enrolled-name"), ResponseBody::Prompt));
        assert!(matches!(
            pre("no-such-account-anywhere"),
            ResponseBody::Prompt
        ));
        assert!(matches!(
            pre("root"),
            ResponseBody::NotEnrolled { required: true }
        ));
    }

    /// Mail that never leaves: kept for the test to read, or refused when `down`.
    #[derive(Default)]
    struct Outbox {
        sent: Mutex<Vec<(String, String)>>,
        down: std::sync::atomic::AtomicBool,
    }

    impl Mailer for Outbox {
        fn send(&self, to: &str, _subject: &str, body: &str) -> Result<(), String> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            self.sent.lock().unwrap().push((to.into(), body.into()));
            Ok(())
        }
    }

    impl Outbox {
        fn count(&self) -> usize {
            self.sent.lock().unwrap().len()
        }
        /// The `123-456` code of the newest mail.
        fn last_code(&self) -> String {
            let sent = self.sent.lock().unwrap();
            let body = &sent.last().unwrap().1;
            body.split_whitespace()
                .find(|w| w.len() == 7 && w.as_bytes()[3] == b'-')
                .unwrap()
                .to_string()
        }
    }

    fn email_engine(extra: &str) -> (Engine, Arc<Outbox>, tempfile::TempDir) {
        let (e, dir) = engine(&format!("email_codes = true\n{extra}"));
        let outbox = Arc::new(Outbox::default());
        (e.with_mailer(outbox.clone()), outbox, dir)
    }

    fn email_set(e: &Engine, name: &str, address: &str, now: u64) -> ResponseBody {
        e.handle(
            0,
            RequestBody::EmailSet {
                user: Some(name.into()),
                address: address.into(),
                code: None,
            },
            now,
        )
    }

    fn email_confirm(e: &Engine, name: &str, code: &str, now: u64) -> ResponseBody {
        e.handle(
            0,
            RequestBody::EmailConfirm {
                user: Some(name.into()),
                code: SecretText::new(code),
            },
            now,
        )
    }

    fn send_code(e: &Engine, name: &str, now: u64) -> ResponseBody {
        e.handle(
            0,
            RequestBody::SendEmailCode {
                user: name.into(),
                pam: PamItems::default(),
            },
            now,
        )
    }

    fn verified(e: &Engine, outbox: &Outbox, name: &str, now: u64) {
        let r = email_set(e, name, "root@example.org", now);
        assert!(
            matches!(r, ResponseBody::EmailSent { ref masked } if masked == "r***@example.org"),
            "{r:?}"
        );
        let r = email_confirm(e, name, &outbox.last_code(), now + 1);
        assert!(matches!(r, ResponseBody::Done { .. }), "{r:?}");
    }

    #[test]
    fn email_codes_log_in_once_and_die_after_five_wrong_tries() {
        let (e, outbox, _dir) = email_engine("[throttle]\nfree_failures = 50");
        enrolled(&e, "root", T0);
        verified(&e, &outbox, "root", T0);
        let ResponseBody::Status(s) = e.handle(
            0,
            RequestBody::Status {
                user: Some("root".into()),
            },
            T0,
        ) else {
            panic!()
        };
        assert_eq!(s.email.as_deref(), Some("r***@example.org"));
        assert!(s.email_verified);
        // Login code: right code (with or without the dash) once.
        let t = T0 + 100;
        assert!(matches!(
            send_code(&e, "root", t),
            ResponseBody::EmailSent { .. }
        ));
        let code = outbox.last_code();
        assert!(matches!(
            verify(&e, "root", "000000", t),
            ResponseBody::Rejected
        ));
        let r = verify(&e, "root", &code, t + 1);
        assert!(
            matches!(
                r,
                ResponseBody::Accepted {
                    method: Method::Email,
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(
            matches!(verify(&e, "root", &code, t + 2), ResponseBody::Rejected),
            "reuse"
        );
        // Resend limit: not within a minute.
        let r = send_code(&e, "root", t + 30);
        assert!(
            matches!(
                r,
                ResponseBody::Error {
                    kind: ErrorKind::RateLimited,
                    ..
                }
            ),
            "{r:?}"
        );
        assert_eq!(outbox.count(), 2);
        let t = t + 61;
        assert!(matches!(
            send_code(&e, "root", t),
            ResponseBody::EmailSent { .. }
        ));
        let code = outbox.last_code().replace('-', "");
        for _ in 0..5 {
            assert!(matches!(
                verify(&e, "root", "111111", t),
                ResponseBody::Rejected
            ));
        }
        assert!(
            matches!(verify(&e, "root", &code, t), ResponseBody::Rejected),
            "dead after five wrong tries"
        );
        // Expired.
        let t = t + 61;
        assert!(matches!(
            send_code(&e, "root", t),
            ResponseBody::EmailSent { .. }
        ));
        let code = outbox.last_code();
        assert!(matches!(
            verify(&e, "root", &code, t + 601),
            ResponseBody::Rejected
        ));
        // Nothing in the trail holds a code.
        let ResponseBody::Audit { entries, .. } = e.handle(
            0,
            RequestBody::Audit {
                user: None,
                since_secs: None,
            },
            t + 700,
        ) else {
            panic!()
        };
        let trail = serde_json::to_string(&entries).unwrap();
        assert!(!trail.contains(&code) && !trail.contains(&code.replace('-', "")));
        assert!(entries
            .iter()
            .any(|a| a.event == "email" && a.outcome == "sent"));
        assert!(entries
            .iter()
            .any(|a| a.method.as_deref() == Some("email") && a.outcome == "accepted"));
        // Housekeeping forgets mailed codes a day later.
        let left = |e: &Engine| {
            e.store
                .read(|tx| tx.mailed_code("root", CodePurpose::Login))
                .unwrap()
        };
        e.housekeeping(t + 86_000);
        assert!(left(&e).is_some());
        e.housekeeping(t + 88_000);
        assert!(left(&e).is_none());
    }

    #[test]
    fn email_relay_down_fails_closed_and_switch_off_rejects() {
        let (e, outbox, _dir) = email_engine("");
        verified(&e, &outbox, "root", T0);
        outbox.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = send_code(&e, "root", T0 + 100);
        assert!(
            matches!(
                r,
                ResponseBody::Error {
                    kind: ErrorKind::MailFailed,
                    ..
                }
            ),
            "{r:?}"
        );
        let r = email_set(&e, "root", "other@example.org", T0 + 200);
        assert!(
            matches!(
                r,
                ResponseBody::Error {
                    kind: ErrorKind::MailFailed,
                    ..
                }
            ),
            "{r:?}"
        );
        let (off, _dir2) = engine("");
        assert!(matches!(
            send_code(&off, "root", T0),
            ResponseBody::Rejected
        ));
    }

    #[test]
    fn email_auto_mails_a_code_to_users_without_an_app() {
        let (e, outbox, _dir) = email_engine("email_auto = true\nunenrolled = \"deny\"");
        verified(&e, &outbox, "root", T0);
        let pre = |now| {
            e.handle(
                0,
                RequestBody::Preflight {
                    user: "root".into(),
                    pam: PamItems::default(),
                    grace_secs: 0,
                },
                now,
            )
        };
        let r = pre(T0 + 100);
        assert!(matches!(r, ResponseBody::EmailSent { .. }), "{r:?}");
        assert!(
            matches!(pre(T0 + 101), ResponseBody::EmailSent { .. }),
            "announced again"
        );
        assert_eq!(outbox.count(), 2, "one verification mail, one login mail");
        let r = verify(&e, "root", &outbox.last_code(), T0 + 102);
        assert!(
            matches!(
                r,
                ResponseBody::Accepted {
                    method: Method::Email,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    /// Finding 1 of the 2026-11 review: under `unenrolled = "allow"`, an email-only user's
    /// login passed with any answer that was not six digits ("not enrolled" -> PAM_IGNORE).
    #[test]
    fn an_email_only_login_is_refused_whatever_is_typed() {
        let (e, outbox, _dir) = email_engine("email_auto = true\n[throttle]\nfree_failures = 50");
        verified(&e, &outbox, "root", T0);
        let pre = e.handle(
            0,
            RequestBody::Preflight {
                user: "root".into(),
                pam: PamItems::default(),
                grace_secs: 0,
            },
            T0 + 100,
        );
        assert!(matches!(pre, ResponseBody::EmailSent { .. }), "{pre:?}");
        let refused = |r: &ResponseBody| matches!(r, ResponseBody::Rejected);
        for answer in ["x", "", "12345", "abcdef", "email", "1234567", "000-000"] {
            let r = verify(&e, "root", answer, T0 + 101);
            assert!(refused(&r), "{answer:?}: {r:?}");
        }
        // Each answer counted as a failure and a try on the mailed code, which died at the
        // fifth: the right code no longer works either.
        let r = verify(&e, "root", &outbox.last_code(), T0 + 102);
        assert!(refused(&r), "{r:?}");
        let ResponseBody::Status(s) = e.handle(
            0,
            RequestBody::Status {
                user: Some("root".into()),
            },
            T0 + 102,
        ) else {
            panic!()
        };
        assert_eq!(s.failures, 8);
        // Long after the code expired: still refused, never "not enrolled".
        let r = verify(&e, "root", "x", T0 + 5_000);
        assert!(refused(&r), "{r:?}");
    }

    #[test]
    fn an_email_only_login_while_throttled_is_throttled() {
        let (e, outbox, _dir) = email_engine("email_auto = true");
        verified(&e, &outbox, "root", T0);
        for _ in 0..5 {
            assert!(matches!(
                verify(&e, "root", "x", T0 + 10),
                ResponseBody::Rejected
            ));
        }
        for answer in ["x", "", "123456"] {
            let r = verify(&e, "root", answer, T0 + 11);
            assert!(
                matches!(r, ResponseBody::Throttled { .. }),
                "{answer:?}: {r:?}"
            );
        }
    }

    /// Finding 2 of the 2026-11 review: an email-only user (a stolen shell) enrolled an app of
    /// its own without proving the address.
    #[test]
    fn adding_an_app_to_a_verified_address_needs_a_mailed_code() {
        let (e, outbox, _dir) = email_engine("email_auto = true");
        let nobody = users::uid_of("nobody").expect("the nobody account");
        let r = email_set(&e, "nobody", "nobody@example.org", T0);
        assert!(matches!(r, ResponseBody::EmailSent { .. }), "{r:?}");
        let r = email_confirm(&e, "nobody", &outbox.last_code(), T0 + 1);
        assert!(matches!(r, ResponseBody::Done { .. }), "{r:?}");
        let enroll = |code: Option<&str>, now| {
            e.handle(
                nobody,
                RequestBody::Enroll {
                    user: None,
                    force: false,
                    code: code.map(SecretText::new),
                    params: None,
                },
                now,
            )
        };
        let mails = outbox.count();
        let r = enroll(None, T0 + 2);
        assert!(
            matches!(&r, ResponseBody::Error { kind: ErrorKind::CodeRequired, message } if message.contains("mailed to n***@example.org")),
            "{r:?}"
        );
        assert_eq!(outbox.count(), mails + 1, "the proof was mailed");
        let r = enroll(Some("000000"), T0 + 3);
        assert!(matches!(r, ResponseBody::Rejected), "{r:?}");
        let r = enroll(Some(&outbox.last_code()), T0 + 4);
        assert!(matches!(r, ResponseBody::Enrollment(_)), "{r:?}");
        // Root needs no proof.
        let r = e.handle(
            0,
            RequestBody::Enroll {
                user: Some("nobody".into()),
                force: false,
                code: None,
                params: None,
            },
            T0 + 5,
        );
        assert!(matches!(r, ResponseBody::Enrollment(_)), "{r:?}");
    }

    /// A relay that takes its time, so that parallel requests overlap while one is sending.
    struct SlowRelay(Outbox);

    impl Mailer for SlowRelay {
        fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
            std::thread::sleep(std::time::Duration::from_millis(100));
            self.0.send(to, subject, body)
        }
    }

    /// Finding 5 of the 2026-11 review: the resend limit was checked in a read snapshot and
    /// the code stored after sending, so 8 parallel requests sent 8 mails; failed sends were
    /// never counted.
    #[test]
    fn parallel_requests_send_one_mail_and_failed_sends_count() {
        let (e, _dir) = engine("email_codes = true");
        let relay = Arc::new(SlowRelay(Outbox::default()));
        let e = e.with_mailer(relay.clone());
        verified(&e, &relay.0, "root", T0);
        let before = relay.0.count();
        let replies: Vec<ResponseBody> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| send_code(&e, "root", T0 + 100)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(relay.0.count(), before + 1, "{replies:?}");
        let sent = replies
            .iter()
            .filter(|r| matches!(r, ResponseBody::EmailSent { .. }))
            .count();
        assert_eq!(sent, 1, "{replies:?}");
        assert!(replies.iter().all(|r| matches!(
            r,
            ResponseBody::EmailSent { .. }
                | ResponseBody::Error {
                    kind: ErrorKind::RateLimited,
                    ..
                }
        )));
        // The relay goes down: each failure counts against the hour's ten.
        relay
            .0
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut failed = 0;
        for i in 1..=20u64 {
            match send_code(&e, "root", T0 + 100 + i * 61) {
                ResponseBody::Error {
                    kind: ErrorKind::MailFailed,
                    ..
                } => failed += 1,
                ResponseBody::Error {
                    kind: ErrorKind::RateLimited,
                    ..
                } => break,
                other => panic!("{other:?}"),
            }
        }
        // Two sent before (verification and the login code above), so eight failures fill it.
        assert_eq!(failed, 8);
        // And a failed send is refused again within the minute, like a sent one.
        let r = send_code(&e, "root", T0 + 100 + 61 * 9 + 1);
        assert!(
            matches!(
                r,
                ResponseBody::Error {
                    kind: ErrorKind::RateLimited,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    /// Finding 8 of the 2026-11 review: a remembered device was a tty name (handed to the next
    /// user within minutes) or whatever PAM_RHOST said (sudo's `Defaults pam_rhost`: this host).
    #[test]
    fn a_remembered_device_is_a_remote_host_or_a_login_session_and_who_asked() {
        let items = |rhost: Option<&str>, tty: Option<&str>, ruser: Option<&str>| PamItems {
            service: Some("sudo".into()),
            rhost: rhost.map(Into::into),
            tty: tty.map(Into::into),
            ruser: ruser.map(Into::into),
        };
        let key = |p: &PamItems, session| grace_key(p, session).map(|(_, origin)| origin);
        let pts = items(None, Some("/dev/pts/3"), Some("alice"));
        assert_eq!(key(&pts, None), None, "a tty alone is no device");
        assert_ne!(
            key(&pts, Some(7)),
            key(&pts, Some(8)),
            "another login, same pts"
        );
        assert_eq!(key(&pts, Some(7)), key(&pts, Some(7)));
        assert_ne!(
            key(&pts, Some(7)),
            key(&items(None, Some("/dev/pts/3"), Some("mallory")), Some(7)),
            "another user asking"
        );
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(
            key(&items(Some(&host), Some("/dev/pts/3"), None), None),
            None,
            "this host's own name is no remote host"
        );
        let remote = items(Some("192.0.2.7"), None, None);
        assert_eq!(key(&remote, None).as_deref(), Some("rhost:192.0.2.7"));
        assert_eq!(key(&remote, Some(9)), key(&remote, None));
        assert_eq!(
            grace_key(&items(Some("192.0.2.7"), None, None), None)
                .unwrap()
                .0,
            "sudo"
        );
    }

    /// From the review's notes: a new address un-verified the old one as soon as its code was
    /// mailed, so under email_auto a user who mistyped it was left without that factor.
    #[test]
    fn a_verified_address_stays_until_the_new_one_is_verified() {
        let (e, outbox, _dir) = email_engine("email_auto = true\nemail_resend_secs = 0");
        verified(&e, &outbox, "root", T0);
        let r = email_set(&e, "root", "new@example.org", T0 + 10);
        assert!(matches!(r, ResponseBody::EmailSent { .. }), "{r:?}");
        let new_code = outbox.last_code();
        let status = |now| match e.handle(
            0,
            RequestBody::Status {
                user: Some("root".into()),
            },
            now,
        ) {
            ResponseBody::Status(s) => s,
            other => panic!("{other:?}"),
        };
        let s = status(T0 + 11);
        assert_eq!(
            (s.email.as_deref(), s.email_verified),
            (Some("r***@example.org"), true)
        );
        let r = send_code(&e, "root", T0 + 12);
        assert!(
            matches!(r, ResponseBody::EmailSent { ref masked } if masked == "r***@example.org"),
            "{r:?}"
        );
        assert_eq!(
            outbox.sent.lock().unwrap().last().unwrap().0,
            "root@example.org"
        );
        let r = email_confirm(&e, "root", &new_code, T0 + 13);
        assert!(matches!(r, ResponseBody::Done { .. }), "{r:?}");
        let s = status(T0 + 14);
        assert_eq!(
            (s.email.as_deref(), s.email_verified),
            (Some("n***@example.org"), true)
        );
    }
}
