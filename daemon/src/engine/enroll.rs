//! Enrollment: a pending secret, its confirmation by a first code, and imports from elsewhere.

use super::*;

/// Wrong first codes after which a pending enrollment is discarded.
pub(super) const MAX_FAILED_CONFIRMS: u32 = 5;

/// What an import brings, as sent by the CLI.
pub(super) struct Imported {
    pub(super) secret: SecretText,
    pub(super) params: TotpParams,
    pub(super) window: Option<u32>,
    pub(super) backup_codes: Vec<SecretText>,
    pub(super) last_used_step: Option<u64>,
    pub(super) force: bool,
    pub(super) authenticator: Option<String>,
    pub(super) counter: Option<u64>,
}

impl Imported {
    /// Its kind, and its high-water mark: the last counter a HOTP token used (the one before
    /// its next), or the last time step a TOTP app's codes were used at.
    pub(super) fn kind_and_last(&self) -> (OtpKind, i64) {
        let last = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        match self.counter {
            Some(next) => (OtpKind::Hotp, last(next) - 1),
            None => (OtpKind::Totp, self.last_used_step.map_or(-1, last)),
        }
    }
}

/// What an enrollment may ask for: 6 or 8 digits (what apps show), a step of 15 s to 5 min.
pub(super) fn enrollable(params: &TotpParams) -> Result<(), String> {
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

/// What `twofold enroll` asks for.
pub(super) struct Enrolling {
    pub(super) force: bool,
    pub(super) code: Option<SecretText>,
    pub(super) params: Option<TotpParams>,
    /// The authenticator's name (`None`: `default`).
    pub(super) authenticator: Option<String>,
}

/// A pending enrollment with a fresh key as long as the hash's output (RFC 6238 §5.1's test
/// keys): 20, 32 or 64 bytes.
pub(super) fn new_pending(
    params: TotpParams,
    now: u64,
) -> Result<PendingRecord, Box<ResponseBody>> {
    let key_bytes = match params.algorithm {
        Algorithm::Sha1 => GENERATED_SECRET_BYTES,
        Algorithm::Sha256 => 32,
        Algorithm::Sha512 => 64,
    };
    let mut bytes = vec![0u8; key_bytes];
    if backup::random_bytes(&mut bytes).is_err() {
        return Err(Box::new(error(
            ErrorKind::Internal,
            "the system random number generator failed",
        )));
    }
    Ok(PendingRecord {
        secret: Secret::from_bytes(bytes),
        params,
        created_at: now,
        failed_confirms: 0,
        label: crate::store::DEFAULT_AUTHENTICATOR.to_string(),
    })
}

impl Engine {
    /// What the user's app needs of a pending enrollment: the key, the label, the URI.
    pub(super) fn enrollment_info(&self, name: &str, pending: &PendingRecord) -> EnrollmentInfo {
        let issuer = self.config().issuer_or_hostname();
        let uri = OtpAuthUri {
            counter: None,
            issuer: Some(issuer.clone()),
            account: name.to_string(),
            secret: pending.secret.clone(),
            params: pending.params,
        };
        EnrollmentInfo {
            user: name.to_string(),
            label: format!("{issuer}:{name}"),
            issuer,
            secret: SecretText::new(pending.secret.to_base32()),
            otpauth_uri: SecretText::new(uri.to_uri()),
            algorithm: pending.params.algorithm,
            digits: pending.params.digits,
            period: pending.params.period,
        }
    }

    pub(super) fn enroll(
        &self,
        name: &str,
        request: Enrolling,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let Enrolling {
            force,
            code,
            params,
            authenticator,
        } = request;
        let params = params.unwrap_or_default();
        if let Err(why) = enrollable(&params) {
            return error(ErrorKind::BadRequest, why);
        }
        if let Some(Err(why)) = authenticator
            .as_deref()
            .map(wire::validate_authenticator_name)
        {
            return error(ErrorKind::BadRequest, why);
        }
        let (user, guarded) = match self.store.read(|tx| {
            let user = tx.user(name)?;
            let guarded = user.is_some() || self.email_factor(tx, name)?;
            Ok((user, guarded))
        }) {
            Ok(x) => x,
            Err(e) => return self.store_failed("enroll", name, &e),
        };
        let enrolled = user.is_some();
        let label = authenticator.unwrap_or_else(|| DEFAULT_AUTHENTICATOR.to_string());
        if let Some(refusal) = self.may_add(name, user.as_ref(), &label, force) {
            return refusal;
        }
        // Adding an app to a verified address is adding a factor: it needs the one there is.
        if guarded && needs_code {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let mut pending = match new_pending(params, now) {
            Ok(p) => p,
            Err(reply) => return *reply,
        };
        pending.label = label.clone();
        let info = self.enrollment_info(name, &pending);
        let owned = name.to_string();
        let mut entry = admin_entry(now, "enroll", name, "pending", uid);
        let replaces = user
            .as_ref()
            .is_some_and(|u| u.authenticators.iter().any(|a| a.label == label));
        entry.detail = Some(match (enrolled, replaces) {
            (false, _) => format!("authenticator {label}"),
            (true, true) => format!("replaces authenticator {label} once confirmed"),
            (true, false) => format!("adds authenticator {label} once confirmed"),
        });
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
    pub(super) fn confirm(
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
        // An enrollment with other authenticators gains (or replaces) this one, and keeps its
        // backup codes; otherwise the enrollment is (re)made whole.
        let keeps_others = match self.store.read(|tx| tx.user(name)) {
            Ok(user) => {
                user.is_some_and(|u| u.authenticators.iter().any(|a| a.label != pending.label))
            }
            Err(e) => return self.store_failed("confirm", name, &e),
        };
        if keeps_others {
            return self.confirm_authenticator(name, pending, step, uid, now);
        }
        let entry = admin_entry(now, "confirm", name, "enrolled", uid);
        match self.activate_pending(name, pending, step, account, vec![entry], false, |_| {
            Ok(true)
        }) {
            Ok(Some(codes)) => {
                self.log.info(&format!(
                    "confirm user={} caller_uid={uid} outcome=enrolled",
                    audit::field(name)
                ));
                ResponseBody::BackupCodes {
                    user: name.to_string(),
                    codes,
                }
            }
            Ok(None) => error(
                ErrorKind::NoPendingEnrollment,
                "the pending enrollment changed meanwhile; run 'twofold enroll' again",
            ),
            Err(reply) => *reply,
        }
    }

    /// Makes `pending` (its first code matched at `step`) the active enrollment with fresh
    /// backup codes, if it is still the one waiting and `still` holds, in one transaction with
    /// `entries` on record (and, if an invitation is used up by it, that too). `login`: the
    /// first code also opened a login. `Ok(None)`: it changed meanwhile (a second
    /// confirmation raced this one, the invitation was revoked).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn activate_pending(
        &self,
        name: &str,
        pending: PendingRecord,
        step: u64,
        account: Option<u32>,
        mut entries: Vec<AuditEntry>,
        login: bool,
        still: impl FnOnce(&dyn Tx) -> Result<bool, StoreError> + Send + 'static,
    ) -> Result<Option<Vec<SecretText>>, Box<ResponseBody>> {
        let FreshCodes {
            codes,
            hashes,
            salt,
        } = self.fresh_backup_codes()?;
        let at = entries.first().map_or(0, |e| e.time);
        let mut record = UserRecord::single(
            name,
            pending.secret.clone(),
            pending.params,
            at,
            // The confirming code is spent: it cannot also open a login.
            i64::try_from(step).unwrap_or(i64::MAX),
            salt,
            None,
            account.filter(|_| self.binds_uids()),
        );
        record.authenticators[0].label = pending.label.clone();
        if login {
            record.last_success = Some(at);
            record.authenticators[0].last_used = Some(at);
        }
        let expected = pending.secret;
        let activated = self.store.write(move |tx| match tx.pending(&record.name)? {
            Some(p) if p.secret == expected && still(tx)? => {
                let noted = entries.iter().any(|e| e.event == "invite");
                if let (Some(_), Some(first), false) =
                    (tx.invitation(&record.name)?, entries.first(), noted)
                {
                    entries.push(AuditEntry {
                        event: "invite".into(),
                        outcome: "used".into(),
                        detail: Some("enrolled outside the login prompt".into()),
                        ..first.clone()
                    });
                }
                tx.activate(&record, &hashes)?;
                entries.iter().try_for_each(|e| tx.audit(e))?;
                Ok(true)
            }
            _ => Ok(false),
        });
        match activated {
            Ok(true) => Ok(Some(codes)),
            Ok(false) => Ok(None),
            Err(e) => Err(Box::new(self.store_failed("confirm", name, &e))),
        }
    }

    /// The Argon2id hashes of imported (normalised) codes under `salt`.
    pub(super) fn hash_imported(
        &self,
        normalized: &[zeroize::Zeroizing<String>],
        salt: &[u8],
    ) -> Result<Vec<backup::BackupHash>, Box<ResponseBody>> {
        normalized
            .iter()
            .map(|c| self.hash_backup(Lane::Bulk, c, salt))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Box::new(error(ErrorKind::Internal, "hashing backup codes failed")))
    }

    /// Makes an enrollment from elsewhere active at once (no pending step: the user's app
    /// already has the key). Replaces an existing one only with `force`.
    pub(super) fn import(
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
        if import.window.is_some_and(|w| w > crate::config::MAX_WINDOW) {
            return error(
                ErrorKind::BadRequest,
                format!("window must be 0 to {}", crate::config::MAX_WINDOW),
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
        if let Some(Err(why)) = import
            .authenticator
            .as_deref()
            .map(wire::validate_authenticator_name)
        {
            return error(ErrorKind::BadRequest, why);
        }
        if import.counter.is_some_and(|c| c >= i64::MAX as u64) {
            return error(ErrorKind::BadRequest, "the counter is out of range");
        }
        let existing = match self.store.read(|tx| tx.user(name)) {
            Ok(u) => u,
            Err(e) => return self.store_failed("import", name, &e),
        };
        let mut import = import;
        // The same key imported again (a seed file run twice, with --force) keeps its
        // high-water mark: codes already accepted stay spent.
        let spent = existing.as_ref().and_then(|u| {
            u.authenticators
                .iter()
                .filter(|a| a.secret == secret)
                .map(|a| a.last_step)
                .max()
        });
        if let Some(spent) = spent.and_then(|s| u64::try_from(s).ok()) {
            import.counter = import.counter.map(|c| c.max(spent.saturating_add(1)));
            import.last_used_step = Some(import.last_used_step.map_or(spent, |s| s.max(spent)));
        }
        match (&existing, &import.authenticator) {
            (Some(user), Some(label)) => {
                if let Some(refusal) = self.may_add(name, Some(user), label, import.force) {
                    return refusal;
                }
                let salt = user.backup_salt.clone();
                return self.import_authenticator(
                    name,
                    import,
                    secret,
                    &normalized,
                    salt,
                    uid,
                    now,
                );
            }
            (Some(_), None) if !import.force => {
                return error(
                    ErrorKind::AlreadyEnrolled,
                    format!(
                        "{name} is already enrolled; use --force to replace the enrollment, or \
                         --name NAME to add this one beside it"
                    ),
                )
            }
            _ => {}
        }
        let mut salt = vec![0u8; backup::SALT_BYTES];
        if backup::random_bytes(&mut salt).is_err() {
            return error(
                ErrorKind::Internal,
                "the system random number generator failed",
            );
        }
        let hashes = match self.hash_imported(&normalized, &salt) {
            Ok(h) => h,
            Err(reply) => return *reply,
        };
        let (kind, last) = import.kind_and_last();
        let mut record = UserRecord::single(
            name,
            secret,
            import.params,
            now,
            last,
            salt,
            import.window,
            account.filter(|_| self.binds_uids()),
        );
        record.authenticators[0].kind = kind;
        if let Some(label) = import.authenticator {
            record.authenticators[0].label = label;
        }
        let mut entry = admin_entry(now, "import", name, "enrolled", uid);
        let a = &record.authenticators[0];
        entry.detail = Some(format!(
            "{} backup codes {}",
            super::authenticators::describe(a),
            hashes.len()
        ));
        let message = format!(
            "{name} imported: {}",
            entry.detail.as_deref().unwrap_or_default()
        );
        let used = AuditEntry {
            event: "invite".into(),
            outcome: "used".into(),
            detail: Some("an enrollment was imported".into()),
            ..entry.clone()
        };
        self.apply_admin(
            entry,
            move |tx| {
                if tx.invitation(&record.name)?.is_some() {
                    tx.audit(&used)?;
                }
                tx.activate(&record, &hashes)
            },
            message,
        )
    }
}
