//! Every operation of the protocol, over the store; the verification rules are in
//! `verdict.rs` (ARCHITECTURE.md §3), the routing in `route.rs` (§7).
//! Time is a parameter: the server reads the clock once per request and passes `now`.

mod account;
mod admin;
mod authenticators;
mod backup_codes;
mod enroll;
mod helpdesk;
mod invite;
mod login;
mod mail;
mod outage;
mod route;
mod stats;
#[cfg(test)]
mod tests;
mod verdict;

use crate::audit::{self, Logger};
use crate::backup;
use crate::config::{Config, Unenrolled};
use crate::email::{self, Mailer};
use crate::limits::{self, Budget, Coalesce, HashGate, Lane};
use crate::policy::{self, Caller, Decision, Operation};
use crate::seal;
use crate::store::{
    Authenticator, CodePurpose, LoginDecision, LoginState, MailedCode, MarkAdvance, PendingRecord,
    Store, StoreError, ThrottleRecord, Tx, UserRecord, DEFAULT_AUTHENTICATOR,
};
use crate::throttle::{self, Gate};
use crate::users;
use backup_codes::*;
use enroll::*;
use helpdesk::*;
use std::sync::{Arc, Mutex, RwLock};
use twofold_shared::otp::{self, Algorithm, OtpKind, TotpParams};
use twofold_shared::secret::{Secret, GENERATED_SECRET_BYTES};
use twofold_shared::uri::OtpAuthUri;
use twofold_shared::wire::{
    self, AuditEntry, EnrollmentInfo, ErrorKind, GroupReport, Method, PamItems, PolicyReport,
    Request, RequestBody, ResponseBody, SecretText, UserStatus, MAX_CODE, MAX_GRACE_SECS, MAX_ITEM,
    PROTOCOL_VERSION,
};
use verdict::*;

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
    /// What has been decided since the start, for `twofold metrics`.
    metrics: crate::metrics::Metrics,
    /// Outage mode (`offline = "cached"`): this host's copy of the fleet and whether the
    /// fleet answers.
    offline: Option<Arc<crate::offline::Cache>>,
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

/// An audit entry for an event of a PAM service (a login, a mail asked for at a prompt):
/// who, from where, asked by which uid.
fn pam_entry(now: u64, event: &str, name: &str, pam: &PamItems, uid: u32) -> AuditEntry {
    AuditEntry {
        time: now,
        event: event.into(),
        user: Some(name.to_string()),
        service: pam.service.clone(),
        rhost: pam.rhost.clone(),
        tty: pam.tty.clone(),
        caller_uid: Some(uid),
        ..Default::default()
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
            metrics: crate::metrics::Metrics::new(crate::clock::now()),
            offline: None,
        }
    }

    /// Sends mail through `mailer` instead of the configured transport (tests).
    #[cfg(test)]
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

    /// Puts a new policy in force (SIGHUP). What twofoldd opened at start (the socket, the
    /// store and its database or URL, the seal key, the connection limits) stays as it is
    /// until a restart; changes to the first three are logged as such.
    pub fn reload(&self, mut new: Config, now: u64) {
        let old = self.config();
        if new.socket != old.socket
            || new.database != old.database
            || new.seal_key_file != old.seal_key_file
            || new.offline != old.offline
            || new.offline_cache != old.offline_cache
        {
            self.log.warn(
                "reload: socket, database, seal_key_file, offline and offline_cache changes \
                 take effect only at restart",
            );
        }
        new.socket = old.socket.clone();
        new.database = old.database.clone();
        new.seal_key_file = old.seal_key_file.clone();
        new.offline = old.offline;
        new.offline_cache = old.offline_cache.clone();
        self.log.info(&format!(
            "policy reloaded: enabled={} unenrolled={} require_groups={} window={} self_enroll={} enroll_at_login={}",
            new.enabled,
            new.unenrolled.name(),
            audit::field(&new.require_groups.join(",")),
            new.window,
            new.self_enroll,
            new.enroll_at_login.name()
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

    /// Decodes one request frame and answers it. `pid`: the caller's process, whose audit
    /// session (read only when a remembered device is asked about) is its login's (see
    /// [`grace_key`]).
    pub fn handle_payload(
        &self,
        uid: u32,
        pid: Option<i32>,
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
            Ok(request) => self.handle_from(uid, pid, request.body, now),
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

    /// Answers one request. A login that is refused is answered no sooner than
    /// [`REFUSAL_TIME`] after it arrived, whoever it was for: a name with no account costs a
    /// name-service miss, an enrolled one a database write, and the difference must not tell
    /// an attacker which names exist or are enrolled.
    #[cfg(test)]
    pub fn handle(&self, uid: u32, body: RequestBody, now: u64) -> ResponseBody {
        self.handle_from(uid, None, body, now)
    }

    /// [`Engine::handle`] for a caller whose process is known.
    pub fn handle_from(
        &self,
        uid: u32,
        pid: Option<i32>,
        body: RequestBody,
        now: u64,
    ) -> ResponseBody {
        let started = std::time::Instant::now();
        let login = matches!(
            body,
            RequestBody::Verify { .. } | RequestBody::ConfirmLogin { .. }
        );
        let reply = self.answer(uid, pid, body, now);
        if login && !matches!(reply, ResponseBody::Accepted { .. }) {
            if let Some(rest) = REFUSAL_TIME.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        reply
    }

    fn store_failed(&self, op: &str, name: &str, e: &StoreError) -> ResponseBody {
        self.log
            .error(&format!("{op} user={} failed: {e}", audit::field(name)));
        storage_error()
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
        match self.expire_invitations(now) {
            Ok(0) => {}
            Ok(n) => self.log.info(&format!(
                "housekeeping: {n} invitation(s) to enroll expired"
            )),
            Err(e) => self.log.error(&format!("housekeeping failed: {e}")),
        }
    }

    /// An administrative change, its audit entry and its log line: all of it, or an error and
    /// none of it.
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
}
