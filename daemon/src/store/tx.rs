//! The store contract: one transaction's primitives, and the rules over them written once.

use super::*;

/// What the verification rules need from a store, inside one transaction.
pub trait Tx {
    fn user(&self, name: &str) -> Result<Option<UserRecord>>;
    /// The seal key's check value, if secrets are sealed.
    fn seal_check(&self) -> Result<Option<Vec<u8>>>;
    fn user_names(&self) -> Result<Vec<String>>;
    /// The database's size on disk, in bytes (for metrics).
    fn database_bytes(&self) -> Result<u64>;
    /// The enrollments stored under `name` or recorded for `uid`: each name and its uid.
    fn enrollments_for(&self, name: &str, uid: u32) -> Result<Vec<(String, Option<u32>)>>;
    /// Records the uid of an enrollment (`None`: its name is no account).
    fn set_user_uid(&self, name: &str, uid: Option<u32>) -> Result<()>;
    /// Enrollments made before uids were recorded, whose account was not looked up yet
    /// (the upgrade marks them uid -1).
    fn names_to_adopt(&self) -> Result<Vec<String>>;
    /// Whether `name` is enrolled (`Some`), and the uid recorded with it.
    fn recorded_uid(&self, name: &str) -> Result<Option<Option<u32>>>;
    fn pending(&self, name: &str) -> Result<Option<PendingRecord>>;
    fn pending_names(&self) -> Result<Vec<String>>;
    fn throttle(&self, name: &str) -> Result<ThrottleRecord>;
    fn backup_codes_left(&self, name: &str) -> Result<u32>;
    /// The hashes of `name`'s unspent backup codes (for the outage copy).
    fn backup_hashes(&self, name: &str) -> Result<Vec<BackupHash>>;

    /// Raises the high-water mark of the user's authenticator `label` to `step` if it is below
    /// it (and marks it used at `now`). True when it was.
    fn advance_step(&self, name: &str, label: &str, step: i64, now: u64) -> Result<bool>;
    /// The compare-and-set of [`MarkAdvance`]. True when it held and the mark moved.
    fn advance_mark(&self, name: &str, mark: &MarkAdvance) -> Result<bool>;
    fn set_throttle(&self, name: &str, state: ThrottleRecord) -> Result<()>;
    fn clear_throttle(&self, name: &str) -> Result<()>;
    /// Counts a rejected attempt for a name with no enrollment: the same write a wrong code
    /// costs an enrolled user, so both take the same time.
    fn count_unknown_rejection(&self) -> Result<()>;
    fn put_pending(&self, name: &str, pending: &PendingRecord) -> Result<()>;
    fn delete_pending(&self, name: &str) -> Result<()>;
    fn count_failed_confirm(&self, name: &str) -> Result<()>;
    fn email(&self, name: &str) -> Result<Option<EmailRecord>>;
    fn mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<Option<MailedCode>>;
    fn put_mailed_code(&self, name: &str, purpose: CodePurpose, code: &MailedCode) -> Result<()>;
    fn delete_mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<()>;
    /// Makes the code unusable but keeps when it was sent (the resend limit counts from it).
    fn kill_mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<()>;
    fn count_mailed_code_try(&self, name: &str, purpose: CodePurpose) -> Result<()>;
    /// Forgets mailed codes sent before `before` (long expired or spent).
    fn prune_mailed_codes(&self, before: u64) -> Result<usize>;
    /// Audit entries of mails sent (or tried: failures count) to `name` since `since`.
    fn mails_sent_since(&self, name: &str, since: u64) -> Result<u32>;
    fn audit(&self, entry: &AuditEntry) -> Result<()>;
    /// Remembers a successful code of `name` for `service` from `origin` at `at`.
    fn remember(&self, name: &str, service: &str, origin: &str, at: u64) -> Result<()>;
    /// When `name` last succeeded with a code for `service` from `origin`.
    fn remembered_at(&self, name: &str, service: &str, origin: &str) -> Result<Option<u64>>;
    /// Matching entries, oldest first, at most `limit` of the newest; and how many were left out.
    fn audit_entries(
        &self,
        user: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, u64)>;
    /// Deletes entries older than `before`; returns how many.
    fn prune_audit(&self, before: u64) -> Result<usize>;
    /// Deletes the oldest entries beyond the newest `keep`; returns how many.
    fn prune_audit_beyond(&self, keep: u64) -> Result<usize>;
    /// Every entry up to row `through`, with its row number, in the order written (row
    /// numbers only grow while rows are kept).
    fn audit_rows(&self, through: i64) -> Result<Vec<(i64, AuditEntry)>>;
    /// Deletes the entries up to row `through`; returns how many.
    fn prune_audit_through(&self, through: i64) -> Result<usize>;
    /// The value kept under `key` among the database's facts about itself (`meta`).
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Keeps `value` under `key` unless a value is there already, committed or being committed
    /// by another transaction (which this one then waits for): true when it was kept.
    fn put_meta_once(&self, key: &str, value: &[u8]) -> Result<bool>;
    /// True when there was one.
    fn delete_meta(&self, key: &str) -> Result<bool>;
    /// Deletes the keys starting with `prefix` whose value is below `below`, compared byte by
    /// byte; returns how many.
    fn forget_meta(&self, prefix: &str, below: &[u8]) -> Result<usize>;
    /// Forgets remembered devices older than `before`.
    fn prune_grace(&self, before: u64) -> Result<usize>;
    /// Deletes pending enrollments created before `before`.
    fn prune_pending(&self, before: u64) -> Result<usize>;
    /// Deletes failure counts, last touched before `before` and short of `lockout`, of names
    /// that have no enrollment.
    fn prune_throttle(&self, before: u64, lockout: u32) -> Result<usize>;

    fn invitation(&self, name: &str) -> Result<Option<Invitation>>;
    /// Every invitation, by name.
    fn invitations(&self) -> Result<Vec<(String, Invitation)>>;
    /// Opens (or replaces) `name`'s invitation.
    fn put_invitation(&self, name: &str, invitation: &Invitation) -> Result<()>;
    /// True when there was one.
    fn delete_invitation(&self, name: &str) -> Result<bool>;
    fn note_invitation_expired(&self, name: &str) -> Result<()>;
    /// Forgets invitations that expired before `before`.
    fn prune_invitations(&self, before: u64) -> Result<usize>;
    fn bypass(&self, name: &str) -> Result<Option<BypassRecord>>;
    /// Issues (or replaces) `name`'s helpdesk code.
    fn put_bypass(&self, name: &str, bypass: &BypassRecord) -> Result<()>;
    /// True when there was one.
    fn delete_bypass(&self, name: &str) -> Result<bool>;
    fn set_bypass_uses(&self, name: &str, uses_left: u32) -> Result<()>;
    /// Forgets helpdesk codes that expired before `before`.
    fn prune_bypass(&self, before: u64) -> Result<usize>;

    // ---- Primitives of the rules below: one statement each.

    /// Inserts or replaces the enrollment's own row (not its authenticators).
    fn put_user(&self, user: &UserRecord) -> Result<()>;
    /// Inserts or replaces one authenticator of `name` (its secret sealed when sealing is on).
    fn put_authenticator(&self, name: &str, authenticator: &Authenticator) -> Result<()>;
    fn delete_authenticators(&self, name: &str) -> Result<()>;
    /// True when there was one.
    fn delete_authenticator(&self, name: &str, label: &str) -> Result<bool>;
    /// True when there was one.
    fn delete_user_row(&self, name: &str) -> Result<bool>;
    fn set_backup_salt(&self, name: &str, salt: &[u8]) -> Result<()>;
    fn delete_backup_codes(&self, name: &str) -> Result<()>;
    fn insert_backup_code(&self, name: &str, hash: &BackupHash) -> Result<()>;
    /// True when there was one.
    fn delete_backup_code(&self, name: &str, hash: &BackupHash) -> Result<bool>;
    fn set_last_success(&self, name: &str, now: u64) -> Result<()>;
    /// Forgets every remembered device of `name`.
    fn forget_devices(&self, name: &str) -> Result<()>;
    /// A first address goes in unverified; while one is verified, a new one waits beside it.
    fn upsert_email(&self, name: &str, address: &str) -> Result<()>;
    /// The waiting address, if any, replaces the verified one; the address is verified.
    fn mark_email_verified(&self, name: &str) -> Result<()>;
    /// True when there was one.
    fn delete_email_row(&self, name: &str) -> Result<bool>;
    /// Every mailed code of `name`, whatever it was for.
    fn delete_mailed_codes(&self, name: &str) -> Result<()>;

    // ---- The rules inside compound writes, written once for every store (a backend may
    // ---- run one as a single statement, meaning the same: PostgreSQL does for the login's).

    /// What a login decides from, read together.
    fn login_state(&self, name: &str) -> Result<LoginState> {
        Ok(LoginState {
            user: self.user(name)?,
            throttle: self.throttle(name)?,
            mailed: self.mailed_code(name, CodePurpose::Login)?,
            verified_address: self.email(name)?.is_some_and(|a| a.verified),
        })
    }

    /// Applies `d` if the facts it was made from still hold (the throttle it saw, the mark it
    /// raises): every write or none. False when they did not (nothing was written).
    fn apply_decision(&self, name: &str, d: &LoginDecision) -> Result<bool> {
        if self.throttle(name)? != d.throttle_was {
            return Ok(false);
        }
        if let Some(mark) = &d.mark {
            if !self.advance_mark(name, mark)? {
                return Ok(false);
            }
        }
        if let Some(at) = d.last_success {
            self.set_last_success(name, at)?;
        }
        match d.throttle {
            Some(Some(state)) => self.set_throttle(name, state)?,
            Some(None) => self.clear_throttle(name)?,
            None => {}
        }
        d.audit.iter().try_for_each(|e| self.audit(e))?;
        if let Some((service, origin, at)) = &d.remember {
            self.remember(name, service, origin, *at)?;
        }
        Ok(true)
    }

    /// `name`'s enrollment with its throttle and (when `backup_codes`) its backup-code
    /// hashes, as outage mode's copy holds it (`None`: not enrolled).
    fn enrollment_copy(&self, name: &str, backup_codes: bool) -> Result<Option<EnrollmentCopy>> {
        let Some(user) = self.user(name)? else {
            return Ok(None);
        };
        Ok(Some(EnrollmentCopy {
            throttle: self.throttle(name)?,
            backup_codes: match backup_codes {
                true => self.backup_hashes(name)?,
                false => Vec::new(),
            },
            user,
        }))
    }

    /// [`Tx::enrollment_copy`] of every enrollment, by name (PostgreSQL reads them in three
    /// statements, not three a user).
    fn enrollment_copies(&self, backup_codes: bool) -> Result<Vec<EnrollmentCopy>> {
        let mut all = Vec::new();
        for name in self.user_names()? {
            all.extend(self.enrollment_copy(&name, backup_codes)?);
        }
        Ok(all)
    }

    /// Makes `user` the active enrollment (replacing any) with these backup codes. A new
    /// secret: devices remembered under the old one are asked again, and the pending
    /// enrollment is spent.
    fn activate(&self, user: &UserRecord, backup_codes: &[BackupHash]) -> Result<()> {
        self.put_user(user)?;
        self.delete_authenticators(&user.name)?;
        user.authenticators
            .iter()
            .try_for_each(|a| self.put_authenticator(&user.name, a))?;
        self.replace_backup_codes(&user.name, &user.backup_salt, backup_codes)?;
        self.forget_devices(&user.name)?;
        self.delete_pending(&user.name)?;
        // The invitation was to enroll: done. A helpdesk code stood in for the old factor.
        self.delete_invitation(&user.name)?;
        self.delete_bypass(&user.name)?;
        Ok(())
    }

    /// Spends one use of `name`'s helpdesk code; the last use removes it. Returns the uses
    /// left.
    fn spend_bypass(&self, name: &str, record: &BypassRecord) -> Result<u32> {
        let left = record.uses_left.saturating_sub(1);
        if left == 0 {
            self.delete_bypass(name)?;
        } else {
            self.set_bypass_uses(name, left)?;
        }
        Ok(left)
    }

    /// Adds (or replaces) one authenticator of an enrollment and spends the pending enrollment
    /// it came from. A replaced one takes the devices remembered under it along.
    fn add_authenticator(&self, name: &str, a: &Authenticator, replaces: bool) -> Result<()> {
        self.put_authenticator(name, a)?;
        if replaces {
            self.forget_devices(name)?;
        }
        self.delete_pending(name)
    }

    /// Removes one authenticator; remembered devices are forgotten, as when re-enrolling.
    fn remove_authenticator(&self, name: &str, label: &str) -> Result<bool> {
        let removed = self.delete_authenticator(name, label)?;
        self.forget_devices(name)?;
        Ok(removed)
    }

    fn replace_backup_codes(&self, name: &str, salt: &[u8], codes: &[BackupHash]) -> Result<()> {
        self.set_backup_salt(name, salt)?;
        self.delete_backup_codes(name)?;
        codes
            .iter()
            .try_for_each(|code| self.insert_backup_code(name, code))
    }

    /// Removes the enrollment, its backup codes, its remembered devices and any pending
    /// enrollment. True if enrolled.
    fn delete_user(&self, name: &str) -> Result<bool> {
        let removed = self.delete_user_row(name)?;
        self.delete_authenticators(name)?;
        self.delete_backup_codes(name)?;
        self.forget_devices(name)?;
        self.delete_pending(name)?;
        self.delete_bypass(name)?;
        Ok(removed)
    }

    /// Spends the backup code with this hash. True when one existed (the login's time is
    /// then the user's last success).
    fn consume_backup_code(&self, name: &str, hash: &BackupHash, now: u64) -> Result<bool> {
        let spent = self.delete_backup_code(name, hash)?;
        if spent {
            self.set_last_success(name, now)?;
        }
        Ok(spent)
    }

    /// Registers `address`, unverified. A verified address stays in force until the new one
    /// is verified (a mistyped one must not leave the user without that factor). A live login
    /// code dies.
    fn put_email(&self, name: &str, address: &str) -> Result<()> {
        self.upsert_email(name, address)?;
        self.delete_mailed_code(name, CodePurpose::Login)
    }

    /// The registered address (a new one waiting for its code, if any) is now verified; the
    /// verification code is spent, but its time still counts for the resend limit.
    fn set_email_verified(&self, name: &str) -> Result<()> {
        self.mark_email_verified(name)?;
        self.kill_mailed_code(name, CodePurpose::Verify)
    }

    /// Forgets the address and every mailed code.
    fn delete_email(&self, name: &str) -> Result<bool> {
        let removed = self.delete_email_row(name)?;
        self.delete_mailed_codes(name)?;
        Ok(removed)
    }
}

/// The invitation and helpdesk-code primitives of `Tx`, for a backend whose own `impl` has the
/// statements behind them (`invitation_row`, `delete_by_name(Table::…)`, …): one list for
/// every backend.
macro_rules! helpdesk_primitives {
    () => {
        fn invitation(&self, name: &str) -> Result<Option<Invitation>> {
            self.invitation_row(name)
        }
        fn invitations(&self) -> Result<Vec<(String, Invitation)>> {
            self.invitation_rows()
        }
        fn put_invitation(&self, name: &str, invitation: &Invitation) -> Result<()> {
            self.put_invitation_row(name, invitation)
        }
        fn delete_invitation(&self, name: &str) -> Result<bool> {
            self.delete_by_name(Table::Invitations, name)
        }
        fn note_invitation_expired(&self, name: &str) -> Result<()> {
            self.note_invitation_expired_row(name)
        }
        fn prune_invitations(&self, before: u64) -> Result<usize> {
            self.prune_expired(Table::Invitations, before)
        }
        fn bypass(&self, name: &str) -> Result<Option<BypassRecord>> {
            self.bypass_row(name)
        }
        fn put_bypass(&self, name: &str, bypass: &BypassRecord) -> Result<()> {
            self.put_bypass_row(name, bypass)
        }
        fn delete_bypass(&self, name: &str) -> Result<bool> {
            self.delete_by_name(Table::Bypass, name)
        }
        fn set_bypass_uses(&self, name: &str, uses_left: u32) -> Result<()> {
            self.set_bypass_uses_row(name, uses_left)
        }
        fn prune_bypass(&self, before: u64) -> Result<usize> {
            self.prune_expired(Table::Bypass, before)
        }
    };
}
pub(crate) use helpdesk_primitives;
