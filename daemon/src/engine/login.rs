//! A login as the PAM module sees it: preflight (prompt, remembered device, not enrolled),
//! verify (the verdict turned into a reply and a log line), and proving possession before a
//! change to one's own factors.

use super::*;
use crate::config::EnrollAtLogin;

/// What the login that asks can do with the preflight's answer.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Asks {
    /// Show an enrollment and ask for its first code.
    pub can_enroll: bool,
    /// Ask one question for password and code.
    pub combined: bool,
}

impl Engine {
    /// A known account without enrollment: refused when policy says so for everyone
    /// (`unenrolled = "deny"`) or for a group the account belongs to (`require_groups`).
    pub(super) fn not_enrolled(&self, name: &str) -> ResponseBody {
        let cfg = self.config();
        if cfg.unenrolled == Unenrolled::Deny {
            return ResponseBody::NotEnrolled {
                required: true,
                reason: None,
            };
        }
        match users::in_any_group(name, &cfg.require_groups) {
            Ok(required) => ResponseBody::NotEnrolled {
                required,
                reason: None,
            },
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

    /// Logs and stores a login that met no enrollment: refused or let through by policy.
    /// Recorded once a minute per user and outcome (any local user can ask about their own
    /// unenrolled account thousands of times a second), with the count of those left out.
    pub(super) fn record_not_enrolled(&self, mut entry: AuditEntry, reply: &ResponseBody) {
        entry.outcome = match reply {
            ResponseBody::NotEnrolled { required: true, .. } => "refused-not-enrolled",
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
        // Offline, into the copy: merged into the fleet's trail with the rest.
        let written = match self.login_route() {
            crate::offline::Route::Offline(offline) => {
                entry.event = crate::offline::OFFLINE_LOGIN.into();
                offline.store().write(move |tx| tx.audit(&entry))
            }
            crate::offline::Route::Closed => Err(StoreError::Unavailable),
            crate::offline::Route::Online => self.store.write(move |tx| tx.audit(&entry)),
        };
        if let Err(e) = written {
            self.log.error(&format!("audit write failed: {e}"));
        }
    }

    /// A login remembered from the same origin within `grace_secs` (and the user not locked).
    pub(super) fn remembered(
        &self,
        name: &str,
        pam: &PamItems,
        (device, grace_secs): &(Device, u64),
        uid: u32,
        now: u64,
    ) -> Option<ResponseBody> {
        let (service, origin) = device;
        let grace_secs = *grace_secs;
        // Remembered devices are the fleet's: offline, every login gives a code.
        if self.deciding_offline() {
            return None;
        }
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
            outcome: "accepted".into(),
            method: Some("remembered".into()),
            detail: Some(format!("code given {} s ago", now - at)),
            ..pam_entry(now, "login", name, pam, uid)
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

    /// Before prompting: enrolled users (and names with no account, which must look the same)
    /// are asked for a code; known accounts without enrollment follow `unenrolled`, or enroll
    /// now (`enroll_at_login`, when the login `can_enroll`).
    /// `grace`: the device and how long a login from it is remembered (module argument grace=).
    pub(super) fn preflight(
        &self,
        name: &str,
        pam: &PamItems,
        grace: Option<(Device, u64)>,
        asks: Asks,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let Asks {
            can_enroll,
            combined,
        } = asks;
        // A combined login's prompt says how long the code at the end of the answer is.
        let prompt = |digits: Option<u8>| match combined {
            true => ResponseBody::PromptCombined {
                digits: digits.unwrap_or(6),
            },
            false => ResponseBody::Prompt,
        };
        if !self.config().enabled {
            return ResponseBody::Disabled;
        }
        // One read: whether the account is enrolled and, where a replacement could be shown
        // here, whether root invited one.
        let shows = can_enroll && self.config().enroll_at_login != EnrollAtLogin::Never;
        let look = |tx: &dyn Tx| {
            let digits = tx
                .user(name)?
                .map(|u| u.authenticators.first().map_or(6, |a| a.params.digits));
            let digits = digits.map(|d| u8::try_from(d).unwrap_or(6));
            let enrolled = digits.is_some();
            let replace = enrolled && shows && tx.invitation(name)?.is_some_and(|i| i.replace);
            Ok((digits, replace))
        };
        // Without an invitation to look for, the read is one statement.
        let looked = self.login_read(!shows, now, look);
        if let Ok((Some(_), true)) = looked {
            if let Some(offer) = self.replacement_at_login(name, pam, uid, now) {
                return offer;
            }
        }
        match looked.map(|(digits, _)| digits) {
            Ok(Some(digits)) if grace.is_some() => grace
                .as_ref()
                .and_then(|g| self.remembered(name, pam, g, uid, now))
                .unwrap_or(prompt(Some(digits))),
            Ok(Some(digits)) => prompt(Some(digits)),
            Ok(None) if users::uid_of(name).is_some() => {
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
                let policy = self.not_enrolled(name);
                let reply = self.enrollment_at_login(name, pam, can_enroll, policy, uid, now);
                if matches!(reply, ResponseBody::NotEnrolled { .. }) {
                    self.record_not_enrolled(pam_entry(now, "login", name, pam, uid), &reply);
                }
                reply
            }
            Ok(None) => prompt(None),
            Err(e) => self.store_failed("preflight", name, &e),
        }
    }

    /// The check a login makes; also used when a user proves themselves to change settings.
    pub(super) fn verify(
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
    pub(super) fn verify_enabled(
        &self,
        name: &str,
        code: &SecretText,
        pam: &PamItems,
        grace: Option<Device>,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let base = pam_entry(now, "login", name, pam, uid);
        let quiet = self.quiet.quiet(name, now);
        let login = LoginBase {
            entry: base.clone(),
            quiet,
        };
        let (outcome, by) = match self.evaluate(name, code.expose(), now, login, grace) {
            Ok(Some(verdict)) => verdict,
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
                    Method::Totp => match &by {
                        Some((label, _)) => {
                            format!("accepted method=totp authenticator={}", audit::field(label))
                        }
                        None => "accepted method=totp".to_string(),
                    },
                    Method::Remembered => "accepted method=remembered".to_string(),
                    Method::Email => "accepted method=email".to_string(),
                    Method::BackupCode => {
                        format!("accepted method=backup-code left={}", left.unwrap_or(0))
                    }
                    Method::Bypass => {
                        format!("accepted method=bypass uses_left={}", left.unwrap_or(0))
                    }
                },
                ResponseBody::Accepted {
                    method,
                    backup_codes_left: left.filter(|_| method == Method::BackupCode),
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
        let offline = match self.deciding_offline() {
            true => " offline=yes",
            false => "",
        };
        let mut line = format!(
            "verify user={} service={} rhost={} tty={} caller_uid={uid} outcome={result}{offline}",
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
                self.count_lockout();
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

    /// For self-service changes to an active enrollment: the caller proves possession with a
    /// current code, which is consumed like a login. `None` means proven.
    pub(super) fn prove(
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
}
