//! One SQLite transaction: the store's primitives as SQL statements.

use super::helpdesk::Table;
use super::*;

pub(crate) struct SqliteTx<'a>(pub(crate) &'a Connection, pub(crate) Option<&'a Sealer>);

impl SqliteTx<'_> {
    /// The account's authenticators, in the order they were added.
    fn authenticator_rows(&self, name: &str) -> Result<Vec<Authenticator>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT label, secret, algorithm, digits, period, added_at, last_step, last_used, window,
                    kind
             FROM authenticators WHERE name = ?1 ORDER BY added_at, label",
        )?;
        let rows = stmt
            .query_map([name], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, String>(9)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(
                |(label, secret, alg, digits, period, added_at, last_step, used, window, kind)| {
                    Ok(Authenticator {
                        label,
                        secret: self.read_secret("users", name, secret)?,
                        params: params_from(alg, digits, period)?,
                        added_at: added_at.max(0) as u64,
                        last_step,
                        last_used: used.map(|t| t.max(0) as u64),
                        window: window.map(|w| w.clamp(0, 10) as u32),
                        kind: kind_from(&kind)?,
                    })
                },
            )
            .collect()
    }

    /// A secret as stored: sealed for its row when a key is set.
    pub(crate) fn stored_secret(
        &self,
        table: &str,
        name: &str,
        secret: &Secret,
    ) -> Result<Vec<u8>> {
        match self.1 {
            Some(s) => s
                .seal(table, name, secret.as_bytes())
                .map_err(StoreError::Seal),
            None => Ok(secret.as_bytes().to_vec()),
        }
    }

    pub(crate) fn read_secret(&self, table: &str, name: &str, stored: Vec<u8>) -> Result<Secret> {
        match self.1 {
            Some(s) => s
                .open(table, name, &stored)
                .map(Secret::from_bytes)
                .map_err(StoreError::Seal),
            None => Ok(Secret::from_bytes(stored)),
        }
    }
}

/// The audit entry in `r`'s first ten columns: time, event, user, outcome, method, service,
/// rhost, tty, caller_uid, detail.
fn audit_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        time: r.get::<_, i64>(0)?.max(0) as u64,
        event: r.get(1)?,
        user: r.get(2)?,
        outcome: r.get(3)?,
        method: r.get(4)?,
        service: r.get(5)?,
        rhost: r.get(6)?,
        tty: r.get(7)?,
        caller_uid: r.get(8)?,
        detail: r.get(9)?,
    })
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Tx for SqliteTx<'_> {
    crate::store::tx::helpdesk_primitives!();

    fn seal_check(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .0
            .query_row("SELECT value FROM meta WHERE key = 'seal_check'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let row = self
            .0
            .prepare_cached(
                "SELECT enrolled_at, last_success, backup_salt, uid FROM users WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .optional()?;
        let Some((enrolled_at, last_success, salt, uid)) = row else {
            return Ok(None);
        };
        Ok(Some(UserRecord {
            name: name.to_string(),
            enrolled_at: enrolled_at.max(0) as u64,
            last_success: last_success.map(|t| t.max(0) as u64),
            backup_salt: salt,
            uid: uid.and_then(|u| u32::try_from(u).ok()),
            authenticators: self.authenticator_rows(name)?,
        }))
    }

    fn database_bytes(&self) -> Result<u64> {
        let pages: i64 = self.0.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = self.0.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(u64::try_from(pages.saturating_mul(size)).unwrap_or(0))
    }

    fn user_names(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT name FROM users ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    fn enrollments_for(&self, name: &str, uid: u32) -> Result<Vec<(String, Option<u32>)>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT name, uid FROM users WHERE name = ?1 OR uid = ?2")?;
        let rows = stmt
            .query_map(params![name, uid], |r| {
                Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<(String, Option<i64>)>>>()?;
        Ok(rows
            .into_iter()
            .map(|(n, u)| (n, u.and_then(|u| u32::try_from(u).ok())))
            .collect())
    }

    fn recorded_uid(&self, name: &str) -> Result<Option<Option<u32>>> {
        let uid = self
            .0
            .prepare_cached("SELECT uid FROM users WHERE name = ?1")?
            .query_row([name], |r| r.get::<_, Option<i64>>(0))
            .optional()?;
        Ok(uid.map(|u| u.and_then(|u| u32::try_from(u).ok())))
    }

    fn names_to_adopt(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT name FROM users WHERE uid = -1 ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    fn set_user_uid(&self, name: &str, uid: Option<u32>) -> Result<()> {
        self.0
            .prepare_cached("UPDATE users SET uid = ?2 WHERE name = ?1")?
            .execute(params![name, uid])?;
        Ok(())
    }

    fn pending(&self, name: &str) -> Result<Option<PendingRecord>> {
        let row = self
            .0
            .prepare_cached(
                "SELECT secret, algorithm, digits, period, created_at, failed_confirms, label
                 FROM pending WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .optional()?;
        let Some((secret, alg, digits, period, created_at, failed, label)) = row else {
            return Ok(None);
        };
        Ok(Some(PendingRecord {
            secret: self.read_secret("pending", name, secret)?,
            params: params_from(alg, digits, period)?,
            created_at: created_at.max(0) as u64,
            failed_confirms: failed.clamp(0, i64::from(u32::MAX)) as u32,
            label,
        }))
    }

    fn pending_names(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT name FROM pending ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    fn throttle(&self, name: &str) -> Result<ThrottleRecord> {
        let row = self
            .0
            .prepare_cached("SELECT failures, last_failure FROM throttle WHERE name = ?1")?
            .query_row([name], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?;
        Ok(row
            .map(|(f, t)| ThrottleRecord {
                failures: f.clamp(0, i64::from(u32::MAX)) as u32,
                last_failure: t.max(0) as u64,
            })
            .unwrap_or_default())
    }

    fn backup_codes_left(&self, name: &str) -> Result<u32> {
        let n: i64 = self
            .0
            .prepare_cached("SELECT COUNT(*) FROM backup_codes WHERE name = ?1")?
            .query_row([name], |r| r.get(0))?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    fn backup_hashes(&self, name: &str) -> Result<Vec<BackupHash>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT hash FROM backup_codes WHERE name = ?1 ORDER BY hash")?;
        let rows = stmt
            .query_map([name], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.iter().map(|h| stored_hash(h)).collect()
    }

    fn advance_step(&self, name: &str, label: &str, step: i64, now: u64) -> Result<bool> {
        let changed = self
            .0
            .prepare_cached(
                "UPDATE authenticators SET last_step = ?3, last_used = ?4
                 WHERE name = ?1 AND label = ?2 AND last_step < ?3",
            )?
            .execute(params![name, label, step, to_i64(now)])?;
        Ok(changed == 1)
    }

    fn advance_mark(&self, name: &str, m: &MarkAdvance) -> Result<bool> {
        let changed = self
            .0
            .prepare_cached(
                "UPDATE authenticators SET last_step = ?5, last_used = ?6
                 WHERE name = ?1 AND label = ?2 AND added_at = ?3 AND last_step = ?4
                   AND last_step < ?5",
            )?
            .execute(params![
                name,
                m.label,
                to_i64(m.added_at),
                m.last_step,
                m.step,
                to_i64(m.now)
            ])?;
        Ok(changed == 1)
    }

    fn delete_backup_code(&self, name: &str, hash: &BackupHash) -> Result<bool> {
        let changed = self
            .0
            .prepare_cached("DELETE FROM backup_codes WHERE name = ?1 AND hash = ?2")?
            .execute(params![name, hash.as_bytes()])?;
        Ok(changed == 1)
    }

    fn set_last_success(&self, name: &str, now: u64) -> Result<()> {
        self.0
            .prepare_cached("UPDATE users SET last_success = ?2 WHERE name = ?1")?
            .execute(params![name, to_i64(now)])?;
        Ok(())
    }

    fn set_throttle(&self, name: &str, state: ThrottleRecord) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO throttle (name, failures, last_failure) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET failures = excluded.failures, last_failure = excluded.last_failure",
            )?
            .execute(params![name, i64::from(state.failures), to_i64(state.last_failure)])?;
        Ok(())
    }

    fn clear_throttle(&self, name: &str) -> Result<()> {
        self.0
            .prepare_cached("DELETE FROM throttle WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    fn count_unknown_rejection(&self) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE counters SET value = value + 1 WHERE name = 'unknown_rejections'",
            )?
            .execute([])?;
        Ok(())
    }

    fn put_pending(&self, name: &str, p: &PendingRecord) -> Result<()> {
        let secret = zeroize::Zeroizing::new(self.stored_secret("pending", name, &p.secret)?);
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO pending
                 (name, secret, algorithm, digits, period, created_at, failed_confirms, label)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
            )?
            .execute(params![
                name,
                secret.as_slice(),
                p.params.algorithm.name(),
                i64::from(p.params.digits),
                to_i64(p.params.period),
                to_i64(p.created_at),
                p.label
            ])?;
        Ok(())
    }

    fn delete_pending(&self, name: &str) -> Result<()> {
        self.0
            .prepare_cached("DELETE FROM pending WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    fn count_failed_confirm(&self, name: &str) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE pending SET failed_confirms = failed_confirms + 1 WHERE name = ?1",
            )?
            .execute([name])?;
        Ok(())
    }

    fn put_user(&self, u: &UserRecord) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO users (name, enrolled_at, last_success, backup_salt, uid)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                u.name,
                to_i64(u.enrolled_at),
                u.last_success.map(to_i64),
                u.backup_salt,
                u.uid
            ])?;
        Ok(())
    }

    fn put_authenticator(&self, name: &str, a: &Authenticator) -> Result<()> {
        // Bound to the account (not to the authenticator): a secret moved to another account
        // does not open; one of the same account's authenticators is no one else's.
        let secret = zeroize::Zeroizing::new(self.stored_secret("users", name, &a.secret)?);
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO authenticators
                 (name, label, secret, algorithm, digits, period, added_at, last_step, last_used, window,
                  kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                name,
                a.label,
                secret.as_slice(),
                a.params.algorithm.name(),
                i64::from(a.params.digits),
                to_i64(a.params.period),
                to_i64(a.added_at),
                a.last_step,
                a.last_used.map(to_i64),
                a.window,
                a.kind.name()
            ])?;
        Ok(())
    }

    fn delete_authenticator(&self, name: &str, label: &str) -> Result<bool> {
        let removed = self
            .0
            .prepare_cached("DELETE FROM authenticators WHERE name = ?1 AND label = ?2")?
            .execute(params![name, label])?;
        Ok(removed == 1)
    }

    fn delete_authenticators(&self, name: &str) -> Result<()> {
        self.0
            .prepare_cached("DELETE FROM authenticators WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    fn forget_devices(&self, name: &str) -> Result<()> {
        self.0
            .prepare_cached("DELETE FROM grace WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    fn set_backup_salt(&self, name: &str, salt: &[u8]) -> Result<()> {
        self.0
            .prepare_cached("UPDATE users SET backup_salt = ?2 WHERE name = ?1")?
            .execute(params![name, salt])?;
        Ok(())
    }

    fn delete_backup_codes(&self, name: &str) -> Result<()> {
        self.0
            .prepare_cached("DELETE FROM backup_codes WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    fn insert_backup_code(&self, name: &str, hash: &BackupHash) -> Result<()> {
        self.0
            .prepare_cached("INSERT INTO backup_codes (name, hash) VALUES (?1, ?2)")?
            .execute(params![name, hash.as_bytes()])?;
        Ok(())
    }

    fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO audit (time, event, user, outcome, method, service, rhost, tty, caller_uid, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                to_i64(e.time),
                e.event,
                e.user,
                e.outcome,
                e.method,
                e.service,
                e.rhost,
                e.tty,
                e.caller_uid,
                e.detail
            ])?;
        Ok(())
    }

    fn audit_entries(
        &self,
        user: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, u64)> {
        let total: i64 = self
            .0
            .prepare_cached(
                "SELECT COUNT(*) FROM audit WHERE time >= ?1 AND (?2 IS NULL OR user = ?2)",
            )?
            .query_row(params![to_i64(since), user], |r| r.get(0))?;
        let mut stmt = self.0.prepare_cached(
            "SELECT time, event, user, outcome, method, service, rhost, tty, caller_uid, detail FROM audit
             WHERE time >= ?1 AND (?2 IS NULL OR user = ?2) ORDER BY time DESC, id DESC LIMIT ?3",
        )?;
        let mut entries = stmt
            .query_map(params![to_i64(since), user, i64::from(limit)], |r| {
                audit_entry(r)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        entries.reverse();
        let omitted = (total.max(0) as u64).saturating_sub(entries.len() as u64);
        Ok((entries, omitted))
    }

    fn prune_audit(&self, before: u64) -> Result<usize> {
        Ok(self
            .0
            .prepare_cached("DELETE FROM audit WHERE time < ?1")?
            .execute([to_i64(before)])?)
    }

    fn prune_audit_beyond(&self, keep: u64) -> Result<usize> {
        Ok(self
            .0
            .prepare_cached(
                "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            )?
            .execute([to_i64(keep)])?)
    }

    fn audit_rows(&self, through: i64) -> Result<Vec<(i64, AuditEntry)>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT time, event, user, outcome, method, service, rhost, tty, caller_uid, detail, id
             FROM audit WHERE id <= ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([through], |r| Ok((r.get(10)?, audit_entry(r)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn prune_audit_through(&self, through: i64) -> Result<usize> {
        Ok(self
            .0
            .prepare_cached("DELETE FROM audit WHERE id <= ?1")?
            .execute([through])?)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .0
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    fn put_meta_once(&self, key: &str, value: &[u8]) -> Result<bool> {
        let kept = self
            .0
            .prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
            .execute(params![key, value])?;
        Ok(kept == 1)
    }

    fn delete_meta(&self, key: &str) -> Result<bool> {
        let gone = self
            .0
            .prepare_cached("DELETE FROM meta WHERE key = ?1")?
            .execute([key])?;
        Ok(gone == 1)
    }

    fn forget_meta(&self, prefix: &str, below: &[u8]) -> Result<usize> {
        Ok(self
            .0
            .prepare_cached(
                "DELETE FROM meta WHERE substr(key, 1, length(?1)) = ?1 AND value < ?2",
            )?
            .execute(params![prefix, below])?)
    }

    fn remember(&self, name: &str, service: &str, origin: &str, at: u64) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO grace (name, service, origin, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name, service, origin) DO UPDATE SET at = excluded.at",
            )?
            .execute(params![name, service, origin, to_i64(at)])?;
        Ok(())
    }

    fn remembered_at(&self, name: &str, service: &str, origin: &str) -> Result<Option<u64>> {
        let at = self
            .0
            .prepare_cached(
                "SELECT at FROM grace WHERE name = ?1 AND service = ?2 AND origin = ?3",
            )?
            .query_row(params![name, service, origin], |r| r.get::<_, i64>(0))
            .optional()?;
        Ok(at.map(|t| t.max(0) as u64))
    }

    fn prune_grace(&self, before: u64) -> Result<usize> {
        Ok(self
            .0
            .prepare_cached("DELETE FROM grace WHERE at < ?1")?
            .execute([to_i64(before)])?)
    }

    fn prune_pending(&self, before: u64) -> Result<usize> {
        Ok(self
            .0
            .prepare_cached("DELETE FROM pending WHERE created_at < ?1")?
            .execute([to_i64(before)])?)
    }

    fn prune_throttle(&self, before: u64, lockout: u32) -> Result<usize> {
        let lockout = if lockout == 0 {
            i64::MAX
        } else {
            i64::from(lockout)
        };
        Ok(self
            .0
            .prepare_cached(
                "DELETE FROM throttle WHERE last_failure < ?1 AND failures < ?2
                 AND name NOT IN (SELECT name FROM users)",
            )?
            .execute(params![to_i64(before), lockout])?)
    }

    fn email(&self, name: &str) -> Result<Option<EmailRecord>> {
        Ok(self
            .0
            .prepare_cached("SELECT address, verified FROM emails WHERE name = ?1")?
            .query_row([name], |r| {
                Ok(EmailRecord {
                    address: r.get(0)?,
                    verified: r.get::<_, i64>(1)? != 0,
                })
            })
            .optional()?)
    }

    fn upsert_email(&self, name: &str, address: &str) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO emails (name, address, verified) VALUES (?1, ?2, 0)
                 ON CONFLICT (name) DO UPDATE SET
                   pending = CASE WHEN verified = 1 THEN excluded.address ELSE NULL END,
                   address = CASE WHEN verified = 1 THEN address ELSE excluded.address END",
            )?
            .execute(params![name, address])?;
        Ok(())
    }

    fn mark_email_verified(&self, name: &str) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE emails SET address = COALESCE(pending, address), pending = NULL,
                 verified = 1 WHERE name = ?1",
            )?
            .execute([name])?;
        Ok(())
    }

    fn delete_email_row(&self, name: &str) -> Result<bool> {
        let removed = self
            .0
            .prepare_cached("DELETE FROM emails WHERE name = ?1")?
            .execute([name])?;
        Ok(removed == 1)
    }

    fn delete_mailed_codes(&self, name: &str) -> Result<()> {
        self.0
            .prepare_cached("DELETE FROM email_codes WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    fn mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<Option<MailedCode>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT hash, salt, sent_at, expires, tries FROM email_codes
                 WHERE name = ?1 AND purpose = ?2",
            )?
            .query_row(params![name, purpose.key()], |r| {
                Ok(MailedCode {
                    hash: r.get(0)?,
                    salt: r.get(1)?,
                    sent_at: r.get::<_, i64>(2)?.max(0) as u64,
                    expires: r.get::<_, i64>(3)?.max(0) as u64,
                    tries: r.get::<_, i64>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
                })
            })
            .optional()?)
    }

    fn put_mailed_code(&self, name: &str, purpose: CodePurpose, c: &MailedCode) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO email_codes (name, purpose, hash, salt, sent_at, expires, tries)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name, purpose) DO UPDATE SET hash = excluded.hash,
                   salt = excluded.salt, sent_at = excluded.sent_at, expires = excluded.expires,
                   tries = excluded.tries",
            )?
            .execute(params![
                name,
                purpose.key(),
                c.hash,
                c.salt,
                to_i64(c.sent_at),
                to_i64(c.expires),
                i64::from(c.tries)
            ])?;
        Ok(())
    }

    fn delete_mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<()> {
        self.0
            .prepare_cached("DELETE FROM email_codes WHERE name = ?1 AND purpose = ?2")?
            .execute(params![name, purpose.key()])?;
        Ok(())
    }

    fn kill_mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE email_codes SET expires = 0, hash = zeroblob(32) WHERE name = ?1 AND purpose = ?2",
            )?
            .execute(params![name, purpose.key()])?;
        Ok(())
    }

    fn count_mailed_code_try(&self, name: &str, purpose: CodePurpose) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE email_codes SET tries = tries + 1 WHERE name = ?1 AND purpose = ?2",
            )?
            .execute(params![name, purpose.key()])?;
        Ok(())
    }

    fn prune_mailed_codes(&self, before: u64) -> Result<usize> {
        Ok(self
            .0
            .prepare_cached("DELETE FROM email_codes WHERE sent_at < ?1 AND expires < ?1")?
            .execute([to_i64(before)])?)
    }

    fn mails_sent_since(&self, name: &str, since: u64) -> Result<u32> {
        let n: i64 = self
            .0
            .prepare_cached(
                "SELECT COUNT(*) FROM audit WHERE event = 'email' AND user = ?1
                 AND outcome IN ('sent', 'failed') AND time >= ?2",
            )?
            .query_row(params![name, to_i64(since)], |r| r.get(0))?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    fn delete_user_row(&self, name: &str) -> Result<bool> {
        let removed = self
            .0
            .prepare_cached("DELETE FROM users WHERE name = ?1")?
            .execute([name])?;
        Ok(removed == 1)
    }
}
