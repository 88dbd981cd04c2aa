//! One PostgreSQL transaction: the store's primitives as prepared statements, under the
//! user's advisory lock.

use super::*;
use crate::store::EnrollmentCopy;

pub(crate) struct PgTx<'a> {
    pub(crate) tx: RefCell<Session<'a>>,
    pub(crate) statements: RefCell<&'a mut HashMap<&'static str, Statement>>,
    pub(crate) seal: Option<&'a Sealer>,
    pub(crate) write: bool,
    /// Users whose advisory lock this transaction holds.
    pub(crate) locked: RefCell<HashSet<String>>,
}

/// An enrollment's columns, one row per authenticator (`PgTx::user_from` reads them).
macro_rules! user_columns {
    () => {
        "u.enrolled_at, u.last_success, u.backup_salt, u.uid, a.label, a.secret, a.algorithm,
         a.digits, a.period, a.added_at, a.last_step, a.last_used, a.\"window\", a.kind"
    };
}

const USER_BY_NAME: Sql = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u LEFT JOIN authenticators a ON a.name = u.name
     WHERE u.name = $1 ORDER BY a.added_at, a.label"
);

/// A row for every authenticator (at least one row), with the throttle (14-15), the mailed
/// code (16-20) and the address's verified flag (21) beside the enrollment's columns.
const LOGIN_STATE: Sql = concat!(
    "SELECT ",
    user_columns!(),
    ", t.failures, t.last_failure, m.hash, m.salt, m.sent_at, m.expires, m.tries, e.verified
     FROM (SELECT $1::text AS name) k
     LEFT JOIN users u ON u.name = k.name
     LEFT JOIN authenticators a ON a.name = u.name
     LEFT JOIN throttle t ON t.name = k.name
     LEFT JOIN email_codes m ON m.name = k.name AND m.purpose = $2
     LEFT JOIN emails e ON e.name = k.name
     ORDER BY a.added_at, a.label"
);

/// Audit entries as the JSON array `twofold_decide` inserts.
fn audit_json(entries: &[AuditEntry]) -> String {
    serde_json::Value::Array(
        entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "time": to_i64(e.time), "event": e.event, "user": e.user,
                    "outcome": e.outcome, "method": e.method, "service": e.service,
                    "rhost": e.rhost, "tty": e.tty, "caller_uid": e.caller_uid,
                    "detail": e.detail,
                })
            })
            .collect(),
    )
    .to_string()
}

/// The audit entry in `r`'s first ten columns: time, event, user, outcome, method, service,
/// rhost, tty, caller_uid, detail.
fn audit_entry(r: &Row) -> AuditEntry {
    AuditEntry {
        time: r.get::<_, i64>(0).max(0) as u64,
        event: r.get(1),
        user: r.get(2),
        outcome: r.get(3),
        method: r.get(4),
        service: r.get(5),
        rhost: r.get(6),
        tty: r.get(7),
        caller_uid: r
            .get::<_, Option<i64>>(8)
            .and_then(|u| u32::try_from(u).ok()),
        detail: r.get(9),
    }
}

pub(crate) type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

pub(crate) type Sql = &'static str;

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn count(n: i64) -> u32 {
    n.clamp(0, i64::from(u32::MAX)) as u32
}

impl PgTx<'_> {
    /// The enrollment in `rows` of `user_columns!()` (one per authenticator, in the order
    /// they were added; none: not enrolled).
    fn user_from(&self, name: &str, rows: &[Row]) -> Result<Option<UserRecord>> {
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let authenticators = rows
            .iter()
            .filter(|r| r.get::<_, Option<String>>(4).is_some())
            .map(|r| {
                Ok(Authenticator {
                    label: r.get(4),
                    secret: self.read_secret("users", name, r.get(5))?,
                    params: params_from(r.get(6), r.get(7), r.get(8))?,
                    added_at: r.get::<_, i64>(9).max(0) as u64,
                    last_step: r.get(10),
                    last_used: r.get::<_, Option<i64>>(11).map(|t| t.max(0) as u64),
                    window: r.get::<_, Option<i64>>(12).map(|w| w.clamp(0, 10) as u32),
                    kind: kind_from(r.get(13))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(UserRecord {
            name: name.to_string(),
            enrolled_at: r.get::<_, i64>(0).max(0) as u64,
            last_success: r.get::<_, Option<i64>>(1).map(|t| t.max(0) as u64),
            backup_salt: r.get(2),
            uid: r
                .get::<_, Option<i64>>(3)
                .and_then(|u| u32::try_from(u).ok()),
            authenticators,
        }))
    }

    /// `sql` prepared on this connection, once.
    pub(crate) fn statement(&self, sql: Sql) -> Result<Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.tx.borrow_mut().prepare(sql)?;
        self.statements.borrow_mut().insert(sql, prepared.clone());
        Ok(prepared)
    }

    /// In a write, every statement about a user runs under that user's lock: another host's
    /// transaction about the same user waits for this one to commit.
    pub(crate) fn lock(&self, name: &str) -> Result<()> {
        if !self.write || self.locked.borrow().contains(name) {
            return Ok(());
        }
        let lock = self.statement("SELECT pg_advisory_xact_lock(hashtextextended($1, 7243))")?;
        self.tx.borrow_mut().next()?.run_execute(&lock, &[&name])?;
        self.locked.borrow_mut().insert(name.to_string());
        Ok(())
    }

    pub(crate) fn exec(&self, name: Option<&str>, sql: Sql, params: Params<'_>) -> Result<u64> {
        if let Some(n) = name {
            self.lock(n)?;
        }
        let statement = self.statement(sql)?;
        self.tx.borrow_mut().next()?.run_execute(&statement, params)
    }

    pub(crate) fn one(
        &self,
        name: Option<&str>,
        sql: Sql,
        params: Params<'_>,
    ) -> Result<Option<Row>> {
        if let Some(n) = name {
            self.lock(n)?;
        }
        let statement = self.statement(sql)?;
        let mut rows = self.tx.borrow_mut().next()?.run_query(&statement, params)?;
        if rows.len() > 1 {
            return Err(StoreError::Corrupt(format!(
                "{} rows where one was expected",
                rows.len()
            )));
        }
        Ok(rows.pop())
    }

    pub(crate) fn all(&self, sql: Sql, params: Params<'_>) -> Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        self.tx.borrow_mut().next()?.run_query(&statement, params)
    }

    pub(crate) fn stored_secret(
        &self,
        table: &str,
        name: &str,
        secret: &Secret,
    ) -> Result<Vec<u8>> {
        match self.seal {
            Some(s) => s
                .seal(table, name, secret.as_bytes())
                .map_err(StoreError::Seal),
            None => Ok(secret.as_bytes().to_vec()),
        }
    }

    pub(crate) fn read_secret(&self, table: &str, name: &str, stored: Vec<u8>) -> Result<Secret> {
        match self.seal {
            Some(s) => s
                .open(table, name, &stored)
                .map(Secret::from_bytes)
                .map_err(StoreError::Seal),
            None => Ok(Secret::from_bytes(stored)),
        }
    }
}

impl Tx for PgTx<'_> {
    crate::store::tx::helpdesk_primitives!();

    fn seal_check(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .one(None, "SELECT value FROM meta WHERE key = 'seal_check'", &[])?
            .map(|r| r.get(0)))
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.lock(name)?;
        let rows = self.all(USER_BY_NAME, &[&name])?;
        self.user_from(name, &rows)
    }

    /// Three statements for every enrollment (not three a user: a fleet of 100,000 is read
    /// by each host at every refresh of its outage copy).
    fn enrollment_copies(&self, backup_codes: bool) -> Result<Vec<EnrollmentCopy>> {
        let rows = self.all(
            concat!(
                "SELECT ",
                user_columns!(),
                ", u.name FROM users u LEFT JOIN authenticators a ON a.name = u.name
                 ORDER BY u.name, a.added_at, a.label"
            ),
            &[],
        )?;
        let mut throttles: HashMap<String, ThrottleRecord> = self
            .all("SELECT name, failures, last_failure FROM throttle", &[])?
            .iter()
            .map(|r| {
                let throttle = ThrottleRecord {
                    failures: count(r.get(1)),
                    last_failure: r.get::<_, i64>(2).max(0) as u64,
                };
                (r.get(0), throttle)
            })
            .collect();
        let mut hashes: HashMap<String, Vec<BackupHash>> = HashMap::new();
        if backup_codes {
            let rows = self.all(
                "SELECT name, hash FROM backup_codes ORDER BY name, hash",
                &[],
            )?;
            for r in &rows {
                let hash = crate::store::stored_hash(&r.get::<_, Vec<u8>>(1))?;
                hashes.entry(r.get(0)).or_default().push(hash);
            }
        }
        let mut all = Vec::new();
        for one in rows.chunk_by(|a, b| a.get::<_, &str>(14) == b.get::<_, &str>(14)) {
            let name: String = one[0].get(14);
            if let Some(user) = self.user_from(&name, one)? {
                all.push(EnrollmentCopy {
                    throttle: throttles.remove(&name).unwrap_or_default(),
                    backup_codes: hashes.remove(&name).unwrap_or_default(),
                    user,
                });
            }
        }
        Ok(all)
    }

    /// One statement: the enrollment, throttle, mailed login code and address together.
    fn login_state(&self, name: &str) -> Result<LoginState> {
        self.lock(name)?;
        let rows = self.all(LOGIN_STATE, &[&name, &CodePurpose::Login.key()])?;
        let Some(r) = rows.first() else {
            return Err(StoreError::Corrupt(
                "the login state query returned no row".into(),
            ));
        };
        let enrolled = r.get::<_, Option<i64>>(0).is_some();
        let user = match enrolled {
            true => self.user_from(name, &rows)?,
            false => None,
        };
        Ok(LoginState {
            user,
            throttle: match r.get::<_, Option<i64>>(14) {
                Some(failures) => ThrottleRecord {
                    failures: count(failures),
                    last_failure: r.get::<_, i64>(15).max(0) as u64,
                },
                None => ThrottleRecord::default(),
            },
            mailed: r.get::<_, Option<Vec<u8>>>(16).map(|hash| MailedCode {
                hash,
                salt: r.get(17),
                sent_at: r.get::<_, i64>(18).max(0) as u64,
                expires: r.get::<_, i64>(19).max(0) as u64,
                tries: count(r.get(20)),
            }),
            verified_address: r.get::<_, Option<i64>>(21).is_some_and(|v| v != 0),
        })
    }

    /// One statement: `twofold_decide` (schema version 7) checks and writes under the user's
    /// lock, in the statement's own transaction.
    fn apply_decision(&self, name: &str, d: &LoginDecision) -> Result<bool> {
        let audit = audit_json(&d.audit);
        let mark = d.mark.as_ref();
        let (throttle_op, new_state) = match d.throttle {
            None => (0i32, ThrottleRecord::default()),
            Some(Some(state)) => (1, state),
            Some(None) => (2, ThrottleRecord::default()),
        };
        let remember = d.remember.as_ref();
        let row = self.one(
            None,
            "SELECT twofold_decide($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text::jsonb,
                                   $14::text, $15::text, $16)",
            &[
                &name,
                &i64::from(d.throttle_was.failures),
                &to_i64(d.throttle_was.last_failure),
                &throttle_op,
                &i64::from(new_state.failures),
                &to_i64(new_state.last_failure),
                &mark.map(|m| m.label.as_str()),
                &mark.map(|m| to_i64(m.added_at)),
                &mark.map(|m| m.last_step),
                &mark.map(|m| m.step),
                &mark.map(|m| to_i64(m.now)),
                &d.last_success.map(to_i64),
                &audit,
                &remember.map(|r| r.0.as_str()),
                &remember.map(|r| r.1.as_str()),
                &remember.map(|r| to_i64(r.2)),
            ],
        )?;
        Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
    }

    fn database_bytes(&self) -> Result<u64> {
        let rows = self.all("SELECT pg_database_size(current_database())", &[])?;
        let bytes: i64 = rows.first().map_or(0, |r| r.get(0));
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    fn user_names(&self) -> Result<Vec<String>> {
        Ok(self
            .all("SELECT name FROM users ORDER BY name", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn enrollments_for(&self, name: &str, uid: u32) -> Result<Vec<(String, Option<u32>)>> {
        Ok(self
            .all(
                "SELECT name, uid FROM users WHERE name = $1 OR uid = $2",
                &[&name, &i64::from(uid)],
            )?
            .iter()
            .map(|r| {
                let uid: Option<i64> = r.get(1);
                (r.get(0), uid.and_then(|u| u32::try_from(u).ok()))
            })
            .collect())
    }

    fn recorded_uid(&self, name: &str) -> Result<Option<Option<u32>>> {
        Ok(self
            .one(
                Some(name),
                "SELECT uid FROM users WHERE name = $1",
                &[&name],
            )?
            .map(|r| {
                let uid: Option<i64> = r.get(0);
                uid.and_then(|u| u32::try_from(u).ok())
            }))
    }

    fn names_to_adopt(&self) -> Result<Vec<String>> {
        Ok(self
            .all("SELECT name FROM users WHERE uid = -1 ORDER BY name", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn set_user_uid(&self, name: &str, uid: Option<u32>) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE users SET uid = $2 WHERE name = $1",
            &[&name, &uid.map(i64::from)],
        )?;
        Ok(())
    }

    fn pending(&self, name: &str) -> Result<Option<PendingRecord>> {
        let Some(r) = self.one(
            Some(name),
            "SELECT secret, algorithm, digits, period, created_at, failed_confirms, label
             FROM pending WHERE name = $1",
            &[&name],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(PendingRecord {
            secret: self.read_secret("pending", name, r.get(0))?,
            params: params_from(r.get(1), r.get(2), r.get(3))?,
            created_at: r.get::<_, i64>(4).max(0) as u64,
            failed_confirms: count(r.get(5)),
            label: r.get(6),
        }))
    }

    fn pending_names(&self) -> Result<Vec<String>> {
        Ok(self
            .all("SELECT name FROM pending ORDER BY name", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn throttle(&self, name: &str) -> Result<ThrottleRecord> {
        Ok(self
            .one(
                Some(name),
                "SELECT failures, last_failure FROM throttle WHERE name = $1",
                &[&name],
            )?
            .map(|r| ThrottleRecord {
                failures: count(r.get(0)),
                last_failure: r.get::<_, i64>(1).max(0) as u64,
            })
            .unwrap_or_default())
    }

    fn backup_codes_left(&self, name: &str) -> Result<u32> {
        let n: i64 = self
            .one(
                Some(name),
                "SELECT COUNT(*) FROM backup_codes WHERE name = $1",
                &[&name],
            )?
            .map_or(0, |r| r.get(0));
        Ok(count(n))
    }

    fn backup_hashes(&self, name: &str) -> Result<Vec<BackupHash>> {
        self.lock(name)?;
        self.all(
            "SELECT hash FROM backup_codes WHERE name = $1 ORDER BY hash",
            &[&name],
        )?
        .iter()
        .map(|r| crate::store::stored_hash(&r.get::<_, Vec<u8>>(0)))
        .collect()
    }

    fn advance_step(&self, name: &str, label: &str, step: i64, now: u64) -> Result<bool> {
        let changed = self.exec(
            Some(name),
            "UPDATE authenticators SET last_step = $3, last_used = $4
             WHERE name = $1 AND label = $2 AND last_step < $3",
            &[&name, &label, &step, &to_i64(now)],
        )?;
        Ok(changed == 1)
    }

    fn advance_mark(&self, name: &str, m: &MarkAdvance) -> Result<bool> {
        let changed = self.exec(
            Some(name),
            "UPDATE authenticators SET last_step = $5, last_used = $6
             WHERE name = $1 AND label = $2 AND added_at = $3 AND last_step = $4
               AND last_step < $5",
            &[
                &name,
                &m.label,
                &to_i64(m.added_at),
                &m.last_step,
                &m.step,
                &to_i64(m.now),
            ],
        )?;
        Ok(changed == 1)
    }

    fn delete_backup_code(&self, name: &str, hash: &BackupHash) -> Result<bool> {
        let changed = self.exec(
            Some(name),
            "DELETE FROM backup_codes WHERE name = $1 AND hash = $2",
            &[&name, &hash.as_bytes()],
        )?;
        Ok(changed == 1)
    }

    fn set_last_success(&self, name: &str, now: u64) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE users SET last_success = $2 WHERE name = $1",
            &[&name, &to_i64(now)],
        )?;
        Ok(())
    }

    fn set_throttle(&self, name: &str, state: ThrottleRecord) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO throttle (name, failures, last_failure) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET failures = excluded.failures,
               last_failure = excluded.last_failure",
            &[
                &name,
                &i64::from(state.failures),
                &to_i64(state.last_failure),
            ],
        )?;
        Ok(())
    }

    fn clear_throttle(&self, name: &str) -> Result<()> {
        self.exec(Some(name), "DELETE FROM throttle WHERE name = $1", &[&name])?;
        Ok(())
    }

    fn count_unknown_rejection(&self) -> Result<()> {
        self.exec(
            None,
            "UPDATE counters SET value = value + 1 WHERE name = 'unknown_rejections'",
            &[],
        )?;
        Ok(())
    }

    fn put_pending(&self, name: &str, p: &PendingRecord) -> Result<()> {
        let secret = zeroize::Zeroizing::new(self.stored_secret("pending", name, &p.secret)?);
        self.exec(
            Some(name),
            "INSERT INTO pending (name, secret, algorithm, digits, period, created_at,
               failed_confirms, label) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)
             ON CONFLICT (name) DO UPDATE SET secret = excluded.secret,
               algorithm = excluded.algorithm, digits = excluded.digits,
               period = excluded.period, created_at = excluded.created_at, failed_confirms = 0,
               label = excluded.label",
            &[
                &name,
                &secret.as_slice(),
                &p.params.algorithm.name(),
                &i64::from(p.params.digits),
                &to_i64(p.params.period),
                &to_i64(p.created_at),
                &p.label,
            ],
        )?;
        Ok(())
    }

    fn delete_pending(&self, name: &str) -> Result<()> {
        self.exec(Some(name), "DELETE FROM pending WHERE name = $1", &[&name])?;
        Ok(())
    }

    fn count_failed_confirm(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE pending SET failed_confirms = failed_confirms + 1 WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    fn put_user(&self, u: &UserRecord) -> Result<()> {
        let name = u.name.as_str();
        self.exec(
            Some(name),
            "INSERT INTO users (name, enrolled_at, last_success, backup_salt, uid)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET enrolled_at = excluded.enrolled_at,
               last_success = excluded.last_success, backup_salt = excluded.backup_salt,
               uid = excluded.uid",
            &[
                &name,
                &to_i64(u.enrolled_at),
                &u.last_success.map(to_i64),
                &u.backup_salt,
                &u.uid.map(i64::from),
            ],
        )?;
        Ok(())
    }

    fn put_authenticator(&self, name: &str, a: &Authenticator) -> Result<()> {
        // Bound to the account (not to the authenticator), as on SQLite.
        let secret = zeroize::Zeroizing::new(self.stored_secret("users", name, &a.secret)?);
        self.exec(
            Some(name),
            "INSERT INTO authenticators (name, label, secret, algorithm, digits, period, added_at,
               last_step, last_used, \"window\", kind)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (name, label) DO UPDATE SET secret = excluded.secret,
               algorithm = excluded.algorithm, digits = excluded.digits, period = excluded.period,
               added_at = excluded.added_at, last_step = excluded.last_step,
               last_used = excluded.last_used, \"window\" = excluded.\"window\",
               kind = excluded.kind",
            &[
                &name,
                &a.label,
                &secret.as_slice(),
                &a.params.algorithm.name(),
                &i64::from(a.params.digits),
                &to_i64(a.params.period),
                &to_i64(a.added_at),
                &a.last_step,
                &a.last_used.map(to_i64),
                &a.window.map(i64::from),
                &a.kind.name(),
            ],
        )?;
        Ok(())
    }

    fn delete_authenticator(&self, name: &str, label: &str) -> Result<bool> {
        let removed = self.exec(
            Some(name),
            "DELETE FROM authenticators WHERE name = $1 AND label = $2",
            &[&name, &label],
        )?;
        Ok(removed == 1)
    }

    fn delete_authenticators(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "DELETE FROM authenticators WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    fn forget_devices(&self, name: &str) -> Result<()> {
        self.exec(Some(name), "DELETE FROM grace WHERE name = $1", &[&name])?;
        Ok(())
    }

    fn set_backup_salt(&self, name: &str, salt: &[u8]) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE users SET backup_salt = $2 WHERE name = $1",
            &[&name, &salt],
        )?;
        Ok(())
    }

    fn delete_backup_codes(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "DELETE FROM backup_codes WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    fn insert_backup_code(&self, name: &str, hash: &BackupHash) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO backup_codes (name, hash) VALUES ($1, $2)",
            &[&name, &hash.as_bytes()],
        )?;
        Ok(())
    }

    fn delete_user_row(&self, name: &str) -> Result<bool> {
        let removed = self.exec(Some(name), "DELETE FROM users WHERE name = $1", &[&name])?;
        Ok(removed == 1)
    }

    fn email(&self, name: &str) -> Result<Option<EmailRecord>> {
        Ok(self
            .one(
                Some(name),
                "SELECT address, verified FROM emails WHERE name = $1",
                &[&name],
            )?
            .map(|r| EmailRecord {
                address: r.get(0),
                verified: r.get::<_, i64>(1) != 0,
            }))
    }

    fn upsert_email(&self, name: &str, address: &str) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO emails (name, address, verified) VALUES ($1, $2, 0)
             ON CONFLICT (name) DO UPDATE SET
               pending = CASE WHEN emails.verified = 1 THEN excluded.address ELSE NULL END,
               address = CASE WHEN emails.verified = 1 THEN emails.address
                              ELSE excluded.address END",
            &[&name, &address],
        )?;
        Ok(())
    }

    fn mark_email_verified(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE emails SET address = COALESCE(pending, address), pending = NULL,
             verified = 1 WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    fn delete_email_row(&self, name: &str) -> Result<bool> {
        let removed = self.exec(Some(name), "DELETE FROM emails WHERE name = $1", &[&name])?;
        Ok(removed == 1)
    }

    fn delete_mailed_codes(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "DELETE FROM email_codes WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    fn mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<Option<MailedCode>> {
        Ok(self
            .one(
                Some(name),
                "SELECT hash, salt, sent_at, expires, tries FROM email_codes
                 WHERE name = $1 AND purpose = $2",
                &[&name, &purpose.key()],
            )?
            .map(|r| MailedCode {
                hash: r.get(0),
                salt: r.get(1),
                sent_at: r.get::<_, i64>(2).max(0) as u64,
                expires: r.get::<_, i64>(3).max(0) as u64,
                tries: count(r.get(4)),
            }))
    }

    fn put_mailed_code(&self, name: &str, purpose: CodePurpose, c: &MailedCode) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO email_codes (name, purpose, hash, salt, sent_at, expires, tries)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name, purpose) DO UPDATE SET hash = excluded.hash,
               salt = excluded.salt, sent_at = excluded.sent_at, expires = excluded.expires,
               tries = excluded.tries",
            &[
                &name,
                &purpose.key(),
                &c.hash,
                &c.salt,
                &to_i64(c.sent_at),
                &to_i64(c.expires),
                &i64::from(c.tries),
            ],
        )?;
        Ok(())
    }

    fn delete_mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<()> {
        self.exec(
            Some(name),
            "DELETE FROM email_codes WHERE name = $1 AND purpose = $2",
            &[&name, &purpose.key()],
        )?;
        Ok(())
    }

    fn kill_mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE email_codes SET expires = 0, hash = $3 WHERE name = $1 AND purpose = $2",
            &[&name, &purpose.key(), &vec![0u8; 32]],
        )?;
        Ok(())
    }

    fn count_mailed_code_try(&self, name: &str, purpose: CodePurpose) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE email_codes SET tries = tries + 1 WHERE name = $1 AND purpose = $2",
            &[&name, &purpose.key()],
        )?;
        Ok(())
    }

    fn prune_mailed_codes(&self, before: u64) -> Result<usize> {
        Ok(self.exec(
            None,
            "DELETE FROM email_codes WHERE sent_at < $1 AND expires < $1",
            &[&to_i64(before)],
        )? as usize)
    }

    fn mails_sent_since(&self, name: &str, since: u64) -> Result<u32> {
        let n: i64 = self
            .one(
                Some(name),
                "SELECT COUNT(*) FROM audit WHERE event = 'email' AND \"user\" = $1
                 AND outcome IN ('sent', 'failed') AND time >= $2",
                &[&name, &to_i64(since)],
            )?
            .map_or(0, |r| r.get(0));
        Ok(count(n))
    }

    fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.exec(
            None,
            "INSERT INTO audit (time, event, \"user\", outcome, method, service, rhost, tty,
               caller_uid, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &to_i64(e.time),
                &e.event,
                &e.user,
                &e.outcome,
                &e.method,
                &e.service,
                &e.rhost,
                &e.tty,
                &e.caller_uid.map(i64::from),
                &e.detail,
            ],
        )?;
        Ok(())
    }

    fn remember(&self, name: &str, service: &str, origin: &str, at: u64) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO grace (name, service, origin, at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name, service, origin) DO UPDATE SET at = excluded.at",
            &[&name, &service, &origin, &to_i64(at)],
        )?;
        Ok(())
    }

    fn remembered_at(&self, name: &str, service: &str, origin: &str) -> Result<Option<u64>> {
        Ok(self
            .one(
                Some(name),
                "SELECT at FROM grace WHERE name = $1 AND service = $2 AND origin = $3",
                &[&name, &service, &origin],
            )?
            .map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn audit_entries(
        &self,
        user: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, u64)> {
        let since = to_i64(since);
        let total: i64 = self
            .one(
                None,
                "SELECT COUNT(*) FROM audit WHERE time >= $1 AND ($2::TEXT IS NULL OR \"user\" = $2)",
                &[&since, &user],
            )?
            .map_or(0, |r| r.get(0));
        let mut entries: Vec<AuditEntry> = self
            .all(
                "SELECT time, event, \"user\", outcome, method, service, rhost, tty, caller_uid,
                        detail FROM audit
                 WHERE time >= $1 AND ($2::TEXT IS NULL OR \"user\" = $2)
                 ORDER BY time DESC, id DESC LIMIT $3",
                &[&since, &user, &i64::from(limit)],
            )?
            .iter()
            .map(audit_entry)
            .collect();
        entries.reverse();
        let omitted = (total.max(0) as u64).saturating_sub(entries.len() as u64);
        Ok((entries, omitted))
    }

    fn prune_audit(&self, before: u64) -> Result<usize> {
        Ok(self.exec(
            None,
            "DELETE FROM audit WHERE time < $1",
            &[&to_i64(before)],
        )? as usize)
    }

    fn prune_audit_beyond(&self, keep: u64) -> Result<usize> {
        Ok(self.exec(
            None,
            "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET $1)",
            &[&to_i64(keep)],
        )? as usize)
    }

    fn audit_rows(&self, through: i64) -> Result<Vec<(i64, AuditEntry)>> {
        Ok(self
            .all(
                "SELECT time, event, \"user\", outcome, method, service, rhost, tty, caller_uid,
                        detail, id FROM audit WHERE id <= $1 ORDER BY id",
                &[&through],
            )?
            .iter()
            .map(|r| (r.get(10), audit_entry(r)))
            .collect())
    }

    fn prune_audit_through(&self, through: i64) -> Result<usize> {
        Ok(self.exec(None, "DELETE FROM audit WHERE id <= $1", &[&through])? as usize)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .one(None, "SELECT value FROM meta WHERE key = $1", &[&key])?
            .map(|r| r.get(0)))
    }

    fn put_meta_once(&self, key: &str, value: &[u8]) -> Result<bool> {
        let kept = self.exec(
            None,
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&key, &value],
        )?;
        Ok(kept == 1)
    }

    fn delete_meta(&self, key: &str) -> Result<bool> {
        Ok(self.exec(None, "DELETE FROM meta WHERE key = $1", &[&key])? == 1)
    }

    fn forget_meta(&self, prefix: &str, below: &[u8]) -> Result<usize> {
        Ok(self.exec(
            None,
            "DELETE FROM meta WHERE left(key, length($1::text)) = $1::text AND value < $2",
            &[&prefix, &below],
        )? as usize)
    }

    fn prune_grace(&self, before: u64) -> Result<usize> {
        Ok(self.exec(None, "DELETE FROM grace WHERE at < $1", &[&to_i64(before)])? as usize)
    }

    fn prune_pending(&self, before: u64) -> Result<usize> {
        Ok(self.exec(
            None,
            "DELETE FROM pending WHERE created_at < $1",
            &[&to_i64(before)],
        )? as usize)
    }

    fn prune_throttle(&self, before: u64, lockout: u32) -> Result<usize> {
        let lockout = if lockout == 0 {
            i64::MAX
        } else {
            i64::from(lockout)
        };
        Ok(self.exec(
            None,
            "DELETE FROM throttle WHERE last_failure < $1 AND failures < $2
             AND name NOT IN (SELECT name FROM users)",
            &[&to_i64(before), &lockout],
        )? as usize)
    }
}
