//! The SQLite store: a host's own file (WAL, synchronous=FULL), its migrations, opening and
//! sealing it.

mod helpdesk;
mod tx;
mod writer;

use super::*;
use tx::*;
use writer::*;

/// How many queued write jobs share one commit at most.
pub(crate) const MAX_BATCH: usize = 512;

/// How many write jobs may wait for the writer before callers are told the store is busy.
pub(crate) const QUEUE_DEPTH: usize = 4096;

pub(crate) const READER_POOL: usize = 32;

/// The schema version this twofoldd writes (`PRAGMA user_version` once migrated).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migrations, in order; `PRAGMA user_version` records how many have run.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    "CREATE TABLE users (
        name TEXT PRIMARY KEY NOT NULL,
        secret BLOB NOT NULL,
        algorithm TEXT NOT NULL,
        digits INTEGER NOT NULL,
        period INTEGER NOT NULL,
        enrolled_at INTEGER NOT NULL,
        last_step INTEGER NOT NULL,
        last_success INTEGER,
        backup_salt BLOB NOT NULL
    );
    CREATE TABLE backup_codes (
        name TEXT NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (name, hash)
    ) WITHOUT ROWID;
    CREATE TABLE pending (
        name TEXT PRIMARY KEY NOT NULL,
        secret BLOB NOT NULL,
        algorithm TEXT NOT NULL,
        digits INTEGER NOT NULL,
        period INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        failed_confirms INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE throttle (
        name TEXT PRIMARY KEY NOT NULL,
        failures INTEGER NOT NULL,
        last_failure INTEGER NOT NULL
    );
    CREATE TABLE counters (
        name TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('unknown_rejections', 0);",
    // 2: the audit trail
    "CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        event TEXT NOT NULL,
        user TEXT,
        outcome TEXT NOT NULL,
        method TEXT,
        service TEXT,
        rhost TEXT,
        tty TEXT,
        caller_uid INTEGER,
        detail TEXT
    );
    CREATE INDEX audit_by_time ON audit (time);
    CREATE INDEX audit_by_user ON audit (user, time);",
    // 3: "remember this device"
    "CREATE TABLE grace (
        name TEXT NOT NULL,
        service TEXT NOT NULL,
        origin TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (name, service, origin)
    ) WITHOUT ROWID;",
    // 4: a window of its own for imported enrollments
    "ALTER TABLE users ADD COLUMN window INTEGER;",
    // 5: email codes
    "CREATE TABLE emails (
        name TEXT PRIMARY KEY NOT NULL,
        address TEXT NOT NULL,
        verified INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE email_codes (
        name TEXT NOT NULL,
        purpose TEXT NOT NULL,
        hash BLOB NOT NULL,
        salt BLOB NOT NULL,
        sent_at INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (name, purpose)
    ) WITHOUT ROWID;
    CREATE INDEX audit_by_event ON audit (event, user, time);",
    // 6: facts about the database itself (the seal key's check value)
    "CREATE TABLE meta (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL
    ) WITHOUT ROWID;",
    // 7: an enrollment belongs to an account: its uid
    "ALTER TABLE users ADD COLUMN uid INTEGER;
    UPDATE users SET uid = -1;
    CREATE INDEX users_by_uid ON users (uid);",
    // 8: a new address waits beside the verified one until it is verified itself
    "ALTER TABLE emails ADD COLUMN pending TEXT;",
    // 9: invitations to enroll at the login prompt, helpdesk codes
    "CREATE TABLE invitations (
        name TEXT PRIMARY KEY NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        replace INTEGER NOT NULL DEFAULT 0,
        expiry_noted INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE bypass_codes (
        name TEXT PRIMARY KEY NOT NULL,
        hash BLOB NOT NULL,
        salt BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        uses_left INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 10: an enrollment's authenticators, each with its own key and high-water mark; every
    // enrollment so far becomes its authenticator `default`
    "CREATE TABLE authenticators (
        name TEXT NOT NULL,
        label TEXT NOT NULL,
        secret BLOB NOT NULL,
        algorithm TEXT NOT NULL,
        digits INTEGER NOT NULL,
        period INTEGER NOT NULL,
        added_at INTEGER NOT NULL,
        last_step INTEGER NOT NULL,
        last_used INTEGER,
        window INTEGER,
        PRIMARY KEY (name, label)
    ) WITHOUT ROWID;
    INSERT INTO authenticators
        (name, label, secret, algorithm, digits, period, added_at, last_step, last_used, window)
        SELECT name, 'default', secret, algorithm, digits, period, enrolled_at, last_step,
               last_success, window
        FROM users;
    ALTER TABLE users DROP COLUMN secret;
    ALTER TABLE users DROP COLUMN algorithm;
    ALTER TABLE users DROP COLUMN digits;
    ALTER TABLE users DROP COLUMN period;
    ALTER TABLE users DROP COLUMN last_step;
    ALTER TABLE users DROP COLUMN window;
    ALTER TABLE pending ADD COLUMN label TEXT NOT NULL DEFAULT 'default';",
    // 11: counter-based (HOTP) authenticators beside time-based ones
    "ALTER TABLE authenticators ADD COLUMN kind TEXT NOT NULL DEFAULT 'totp';",
];

/// How long a write waits for a lock another process holds on the database (an administrator's
/// `sqlite3` session, a backup tool) before the request is answered "storage busy": well inside
/// the PAM module's default timeout (5 s), so that the login fails closed with the daemon's
/// reason rather than with a timeout.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(LOCK_WAIT)?;
    // WAL: readers never block the writer. synchronous=FULL: a COMMIT that returned is on disk.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted and overwritten rows are zeroed, not left in free space: an old secret (before
    // sealing, or under a replaced key) must not linger in the file.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(())
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// The SQLite store: one writer thread (group commit), a pool of readers.
#[derive(Clone)]
pub(crate) struct Sqlite {
    pub(crate) jobs: SyncSender<Job>,
    pub(crate) readers: Arc<Mutex<Vec<Connection>>>,
    pub(crate) path: Arc<PathBuf>,
    /// The key secrets are sealed with, if any. Readers hold it shared for a whole read; a
    /// rekey holds it exclusively from its commit until the new key is in place.
    pub(crate) seal: SealSlot,
}

pub(crate) type SealSlot = Arc<RwLock<Option<Arc<Sealer>>>>;

impl fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sqlite").field("path", &self.path).finish()
    }
}

impl Sqlite {
    pub(crate) fn open_sealed(path: &Path, keys: Vec<Sealer>) -> Result<(Sqlite, Option<usize>)> {
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn)?;
        // Reads the whole schema: a corrupt file fails here, at start-up, not at a login.
        conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
            .and_then(|s| {
                if s == "ok" {
                    Ok(())
                } else {
                    Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                        Some(s),
                    ))
                }
            })?;
        migrate(&mut conn)?;
        let (sealer, which) = choose_seal(&mut conn, keys)?;
        let seal: SealSlot = Arc::new(RwLock::new(sealer.map(Arc::new)));
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let writer_seal = seal.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_seal))
            .map_err(|_| StoreError::Unavailable)?;
        let store = Sqlite {
            jobs: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: Arc::new(path.to_path_buf()),
            seal,
        };
        Ok((store, which))
    }

    /// Re-encrypts every secret under `new`, in one transaction of its own; from its commit on,
    /// every read and write uses `new`. Returns how many secrets were re-encrypted.
    pub fn rekey(&self, new: Sealer) -> Result<usize> {
        let (reply, reply_rx) = mpsc::sync_channel::<Result<usize>>(1);
        let job: Job = Box::new(Rekey {
            new: Arc::new(new),
            reply,
        });
        self.jobs
            .try_send(job)
            .map_err(|_| StoreError::Unavailable)?;
        reply_rx.recv().map_err(|_| StoreError::Unavailable)?
    }

    /// Runs `f` in a write transaction shared with other queued jobs; returns once committed.
    /// If `f` fails, only its own changes are rolled back.
    pub fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&dyn Tx) -> Result<R> + Send + 'static,
    {
        let (reply, reply_rx) = mpsc::sync_channel::<Result<R>>(1);
        let job: Job = Box::new(Queued { f, reply });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                return Err(StoreError::Unavailable)
            }
        }
        reply_rx.recv().map_err(|_| StoreError::Unavailable)?
    }

    /// Runs `f` against a consistent snapshot on a reader connection.
    pub fn read<R>(&self, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        let pooled = self.readers.lock().ok().and_then(|mut pool| pool.pop());
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    self.path.as_path(),
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(LOCK_WAIT)?;
                c
            }
        };
        let seal = self.seal.read().map_err(|_| StoreError::Unavailable)?;
        conn.execute_batch("BEGIN")?;
        let result = f(&SqliteTx(&conn, seal.as_deref()));
        let end = conn.execute_batch("COMMIT");
        if end.is_ok() {
            if let Ok(mut pool) = self.readers.lock() {
                if pool.len() < READER_POOL {
                    pool.push(conn);
                }
            }
        }
        let value = result?;
        end?;
        Ok(value)
    }
}

/// Which key opens the database (see `Store::open_sealed`); seals a database never sealed.
pub(crate) fn choose_seal(
    conn: &mut Connection,
    keys: Vec<Sealer>,
) -> Result<(Option<Sealer>, Option<usize>)> {
    let check: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'seal_check'", [], |r| {
            r.get(0)
        })
        .optional()?;
    match check {
        None if keys.is_empty() => Ok((None, None)),
        Some(_) if keys.is_empty() => Err(StoreError::Seal(
            "the database's secrets are sealed, and no seal_key_file is configured; set it to \
             the key that sealed them"
                .into(),
        )),
        Some(check) => {
            let i = keys.iter().position(|k| k.matches(&check)).ok_or_else(|| {
                StoreError::Seal(
                    "the seal key does not open this database (a different key file?)".into(),
                )
            })?;
            Ok((keys.into_iter().nth(i), Some(i)))
        }
        None => {
            let key = keys.into_iter().next().ok_or(StoreError::Unavailable)?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            reseal_rows(&tx, None, &key)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('seal_check', ?1)",
                [key.check_value().map_err(StoreError::Seal)?],
            )?;
            tx.commit()?;
            // The unsealed versions of the pages may still sit in the write-ahead log.
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok((Some(key), Some(0)))
        }
    }
}

/// Rewrites every stored secret: opened with `old` (or taken as is when `None`), sealed with
/// `new`. Returns how many.
pub(crate) fn reseal_rows(conn: &Connection, old: Option<&Sealer>, new: &Sealer) -> Result<usize> {
    let mut count = 0;
    // Authenticators' secrets are bound to their account (the binding `users` is the one they
    // had when an enrollment had one secret); pending ones to theirs.
    for (table, binding, label) in [
        ("authenticators", "users", "label"),
        ("pending", "pending", "''"),
    ] {
        let rows: Vec<(String, String, Vec<u8>)> = conn
            .prepare(&format!("SELECT name, {label}, secret FROM {table}"))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (name, label, stored) in rows {
            let plain = zeroize::Zeroizing::new(match old {
                Some(s) => s.open(binding, &name, &stored).map_err(StoreError::Seal)?,
                None => stored,
            });
            let sealed = new.seal(binding, &name, &plain).map_err(StoreError::Seal)?;
            let update = if table == "pending" {
                "UPDATE pending SET secret = ?1 WHERE name = ?2 AND ?3 = ''"
            } else {
                "UPDATE authenticators SET secret = ?1 WHERE name = ?2 AND label = ?3"
            };
            conn.execute(update, params![sealed, name, label])?;
            count += 1;
        }
    }
    Ok(count)
}

/// The writer's side of `Store::rekey`: readers wait from the commit until the new key is in
/// place, so nobody reads a secret with the wrong key.
pub(crate) fn rekey_all(conn: &Connection, seal: &SealSlot, new: &Arc<Sealer>) -> Result<usize> {
    let old = seal
        .read()
        .map_err(|_| StoreError::Unavailable)?
        .clone()
        .ok_or_else(|| StoreError::Seal("secrets are not sealed".into()))?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = reseal_rows(conn, Some(&old), new).and_then(|n| {
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('seal_check', ?1)",
            [new.check_value().map_err(StoreError::Seal)?],
        )?;
        Ok(n)
    });
    let n = match done {
        Ok(n) => n,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    };
    {
        // Readers wait from just before the commit until the new key is in place: none reads a
        // secret under the wrong key, and logins stall only for the commit itself.
        let mut slot = seal.write().map_err(|_| StoreError::Unavailable)?;
        if let Err(e) = conn.execute_batch("COMMIT") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        *slot = Some(new.clone());
    }
    // Secrets under the old key may still sit in the write-ahead log (a reader still on an old
    // snapshot only makes this checkpoint partial).
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(n)
}
