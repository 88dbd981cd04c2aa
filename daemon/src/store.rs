//! The store: every byte of SQL in twofold lives in this file.
//!
//! One writer thread owns the only writing connection. Callers hand it closures; it runs as
//! many as are queued inside one `BEGIN IMMEDIATE … COMMIT`, each in its own savepoint, and
//! answers every caller only after the COMMIT has returned (group commit: one fsync for a
//! batch, and nothing is reported done before it is durable). Reads run on a small pool of
//! reader connections against WAL snapshots and never wait for the writer.
//!
//! Policy code sees only the [`Tx`] trait, so another engine (PostgreSQL for fleets) can
//! implement it without touching the verification rules.

use crate::backup::BackupHash;
use crate::seal::Sealer;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use twofold_shared::otp::{Algorithm, TotpParams};
use twofold_shared::secret::Secret;
use twofold_shared::wire::AuditEntry;

/// How many queued write jobs share one commit at most.
const MAX_BATCH: usize = 512;
/// How many write jobs may wait for the writer before callers are told the store is busy.
const QUEUE_DEPTH: usize = 4096;
const READER_POOL: usize = 32;

#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    /// The database was written by a newer twofoldd.
    TooNew {
        found: i64,
        known: i64,
    },
    /// The seal key is missing, wrong, or does not open a secret.
    Seal(String),
    /// The PostgreSQL store failed (unreachable, timed out, refused).
    Remote(String),
    /// The writer thread is gone or its queue is full.
    Unavailable,
    /// Stored data that cannot be read back (bad algorithm name, …).
    Corrupt(String),
    /// A batch could not be started or committed (disk full, read-only file, I/O error).
    Commit(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite(e) => write!(f, "database error: {e}"),
            StoreError::TooNew { found, known } => write!(
                f,
                "database schema version {found} is newer than this twofoldd understands ({known})"
            ),
            StoreError::Unavailable => f.write_str("database writer unavailable"),
            StoreError::Corrupt(what) => write!(f, "database holds invalid data: {what}"),
            StoreError::Commit(why) => write!(f, "database write failed: {why}"),
            StoreError::Seal(why) => write!(f, "sealed secrets: {why}"),
            StoreError::Remote(why) => write!(f, "PostgreSQL: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// An active enrollment.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub name: String,
    pub secret: Secret,
    pub params: TotpParams,
    pub enrolled_at: u64,
    /// Highest time step ever accepted (-1: none yet).
    pub last_step: i64,
    pub last_success: Option<u64>,
    pub backup_salt: Vec<u8>,
    /// Steps accepted either side of now for this user (imported); `None`: the configured one.
    pub window: Option<u32>,
    /// The account's uid when it was enrolled (`None`: a name with no account, or an
    /// enrollment older than the record). A login whose name now resolves to another uid is
    /// refused.
    pub uid: Option<u32>,
}

/// An enrollment waiting for its first code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecord {
    pub secret: Secret,
    pub params: TotpParams,
    pub created_at: u64,
    pub failed_confirms: u32,
}

/// Consecutive failures of one user, across services and restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleRecord {
    pub failures: u32,
    pub last_failure: u64,
}

/// A registered email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailRecord {
    pub address: String,
    pub verified: bool,
}

/// What a mailed code is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePurpose {
    /// Proves the address is the user's (`twofold email set`).
    Verify,
    /// A second factor at login.
    Login,
}

impl CodePurpose {
    pub(crate) fn key(self) -> &'static str {
        match self {
            CodePurpose::Verify => "verify",
            CodePurpose::Login => "login",
        }
    }
}

/// A code that was mailed, stored only as its Argon2id hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailedCode {
    pub hash: Vec<u8>,
    pub salt: Vec<u8>,
    pub sent_at: u64,
    pub expires: u64,
    pub tries: u32,
}

/// What the verification rules need from a store, inside one transaction.
pub trait Tx {
    fn user(&self, name: &str) -> Result<Option<UserRecord>>;
    /// The seal key's check value, if secrets are sealed.
    fn seal_check(&self) -> Result<Option<Vec<u8>>>;
    fn user_names(&self) -> Result<Vec<String>>;
    /// The enrollments stored under `name` or recorded for `uid`: each name and its uid.
    fn enrollments_for(&self, name: &str, uid: u32) -> Result<Vec<(String, Option<u32>)>>;
    /// Records the uid of an enrollment made before uids were recorded.
    fn set_user_uid(&self, name: &str, uid: u32) -> Result<()>;
    /// Names enrolled with no recorded uid.
    fn names_without_uid(&self) -> Result<Vec<String>>;
    fn pending(&self, name: &str) -> Result<Option<PendingRecord>>;
    fn pending_names(&self) -> Result<Vec<String>>;
    fn throttle(&self, name: &str) -> Result<ThrottleRecord>;
    fn backup_codes_left(&self, name: &str) -> Result<u32>;

    /// Raises the user's high-water mark to `step` if it is below it. True when it was.
    fn advance_step(&self, name: &str, step: i64, now: u64) -> Result<bool>;
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
    /// Forgets remembered devices older than `before`.
    fn prune_grace(&self, before: u64) -> Result<usize>;
    /// Deletes pending enrollments created before `before`.
    fn prune_pending(&self, before: u64) -> Result<usize>;
    /// Deletes failure counts, last touched before `before` and short of `lockout`, of names
    /// that have no enrollment.
    fn prune_throttle(&self, before: u64, lockout: u32) -> Result<usize>;

    // ---- Primitives of the rules below: one statement each.

    /// Inserts or replaces the enrollment row (the secret sealed when sealing is on).
    fn put_user(&self, user: &UserRecord) -> Result<()>;
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

    // ---- The rules inside compound writes, written once for every store.

    /// Makes `user` the active enrollment (replacing any) with these backup codes. A new
    /// secret: devices remembered under the old one are asked again, and the pending
    /// enrollment is spent.
    fn activate(&self, user: &UserRecord, backup_codes: &[BackupHash]) -> Result<()> {
        self.put_user(user)?;
        self.replace_backup_codes(&user.name, &user.backup_salt, backup_codes)?;
        self.forget_devices(&user.name)?;
        self.delete_pending(&user.name)
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
        self.delete_backup_codes(name)?;
        self.forget_devices(name)?;
        self.delete_pending(name)?;
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

/// The schema version this twofoldd writes (`PRAGMA user_version` once migrated).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migrations, in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
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
    CREATE INDEX users_by_uid ON users (uid);",
    // 8: a new address waits beside the verified one until it is verified itself
    "ALTER TABLE emails ADD COLUMN pending TEXT;",
];

/// How long a write waits for a lock another process holds on the database (an administrator's
/// `sqlite3` session, a backup tool) before the request is answered "storage busy": well inside
/// the PAM module's default timeout (5 s), so that the login fails closed with the daemon's
/// reason rather than with a timeout.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn configure(conn: &Connection) -> Result<()> {
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

fn migrate(conn: &mut Connection) -> Result<()> {
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

type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// A queued write: run inside the batch transaction, or abandoned when no transaction could
/// be started.
trait WriteJob: Send {
    /// Runs the job; returns whether it succeeded and how to answer its caller after COMMIT.
    fn run(self: Box<Self>, conn: &Connection, seal: Option<&Sealer>) -> (bool, Completion);
    fn abandon(self: Box<Self>, error: StoreError);
    /// A new seal key for every secret: runs in a transaction of its own (see `writer_loop`).
    fn rekey(self: Box<Self>) -> std::result::Result<Rekey, Box<dyn WriteJob>>;
}

/// `Store::rekey` queued for the writer.
struct Rekey {
    new: Arc<Sealer>,
    reply: SyncSender<Result<usize>>,
}

impl WriteJob for Rekey {
    fn run(self: Box<Self>, _: &Connection, _: Option<&Sealer>) -> (bool, Completion) {
        // Never batched: writer_loop takes it out through `rekey` first.
        let reply = self.reply;
        (
            false,
            Box::new(move |_| {
                let _ = reply.send(Err(StoreError::Unavailable));
            }),
        )
    }
    fn abandon(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
    fn rekey(self: Box<Self>) -> std::result::Result<Rekey, Box<dyn WriteJob>> {
        Ok(*self)
    }
}

struct Queued<F, R> {
    f: F,
    reply: SyncSender<Result<R>>,
}

impl<F, R> WriteJob for Queued<F, R>
where
    R: Send + 'static,
    F: FnOnce(&dyn Tx) -> Result<R> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection, seal: Option<&Sealer>) -> (bool, Completion) {
        let Queued { f, reply } = *self;
        let outcome = f(&SqliteTx(conn, seal));
        let ok = outcome.is_ok();
        (
            ok,
            Box::new(move |commit: Result<()>| {
                let _ = reply.send(commit.and(outcome));
            }),
        )
    }

    fn abandon(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }

    fn rekey(self: Box<Self>) -> std::result::Result<Rekey, Box<dyn WriteJob>> {
        Err(self)
    }
}

type Job = Box<dyn WriteJob>;

/// Handle to the database; cheap to clone and share between connection threads. SQLite on
/// this host (the default), or PostgreSQL shared by many hosts (`store = "postgres"`).
#[derive(Clone, Debug)]
pub struct Store(Arc<Backend>);

#[derive(Debug)]
enum Backend {
    Sqlite(Sqlite),
    Postgres(Box<crate::pg::PgStore>),
}

impl Store {
    /// Opens (creating if needed) an SQLite database, runs migrations and starts the writer
    /// thread. The caller sets the umask so that new files are private.
    pub fn open(path: &Path) -> Result<Store> {
        Ok(Store::open_sealed(path, Vec::new())?.0)
    }

    /// `open`, with the seal keys that may open the database's secrets, in order of preference
    /// (the configured key file, then a rekey's pending key). Returns which one did: a
    /// database never sealed is sealed with the first; one sealed before needs a key that
    /// opens it; a sealed database and no key is an error, as is a key that opens nothing.
    pub fn open_sealed(path: &Path, keys: Vec<Sealer>) -> Result<(Store, Option<usize>)> {
        let (s, which) = Sqlite::open_sealed(path, keys)?;
        Ok((Store(Arc::new(Backend::Sqlite(s))), which))
    }

    /// The PostgreSQL store at `url` (see `pg`), with the same seal keys as `open_sealed`.
    pub fn open_postgres(
        url: &str,
        password_file: Option<&Path>,
        keys: Vec<Sealer>,
    ) -> Result<(Store, Option<usize>)> {
        let (p, which) = crate::pg::PgStore::open(url, password_file, keys)?;
        Ok((Store(Arc::new(Backend::Postgres(Box::new(p)))), which))
    }

    /// Runs `f` in a write transaction; returns once committed. If `f` fails, none of its
    /// changes are kept.
    pub fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&dyn Tx) -> Result<R> + Send + 'static,
    {
        match &*self.0 {
            Backend::Sqlite(s) => s.write(f),
            Backend::Postgres(p) => p.write(f),
        }
    }

    /// Runs `f` against a consistent snapshot.
    pub fn read<R>(&self, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        match &*self.0 {
            Backend::Sqlite(s) => s.read(f),
            Backend::Postgres(p) => p.read(f),
        }
    }

    /// Re-encrypts every secret under `new` (see `Sqlite::rekey`).
    pub fn rekey(&self, new: Sealer) -> Result<usize> {
        match &*self.0 {
            Backend::Sqlite(s) => s.rekey(new),
            Backend::Postgres(_) => Err(StoreError::Seal(
                "seal rekey with store = \"postgres\" is not supported yet".into(),
            )),
        }
    }

    /// Whether `key` opens this database's sealed secrets (false when nothing is sealed).
    pub fn opens_with(&self, key: &Sealer) -> Result<bool> {
        let check = self.read(|tx| tx.seal_check())?;
        Ok(check.is_some_and(|c| key.matches(&c)))
    }

    /// Whether secrets are sealed.
    pub fn sealed(&self) -> bool {
        match &*self.0 {
            Backend::Sqlite(s) => s.sealed(),
            Backend::Postgres(p) => p.sealed(),
        }
    }
}

/// The SQLite store: one writer thread (group commit), a pool of readers.
#[derive(Clone)]
struct Sqlite {
    jobs: SyncSender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: Arc<PathBuf>,
    /// The key secrets are sealed with, if any. Readers hold it shared for a whole read; a
    /// rekey holds it exclusively from its commit until the new key is in place.
    seal: SealSlot,
}

type SealSlot = Arc<RwLock<Option<Arc<Sealer>>>>;

impl fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sqlite").field("path", &self.path).finish()
    }
}

impl Sqlite {
    fn open_sealed(path: &Path, keys: Vec<Sealer>) -> Result<(Sqlite, Option<usize>)> {
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

    fn sealed(&self) -> bool {
        self.seal.read().map(|s| s.is_some()).unwrap_or(true)
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

fn writer_loop(conn: Connection, rx: Receiver<Job>, seal: SealSlot) {
    // A rekey met while filling a batch waits for that batch to commit.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let first = match first.rekey() {
            Ok(rekey) => {
                let result = rekey_all(&conn, &seal, &rekey.new);
                let _ = rekey.reply.send(result);
                continue;
            }
            Err(job) => job,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => match job.rekey() {
                    Ok(rekey) => {
                        held = Some(Box::new(rekey));
                        break;
                    }
                    Err(job) => batch.push(job),
                },
                Err(_) => break,
            }
        }
        let guard = seal.read().unwrap_or_else(|p| p.into_inner());
        let sealer = guard.as_deref();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = e.to_string();
            batch
                .into_iter()
                .for_each(|job| job.abandon(StoreError::Commit(msg.clone())));
            continue;
        }
        let mut completions = Vec::with_capacity(batch.len());
        let mut jobs = batch.into_iter();
        let mut broken = None;
        for job in jobs.by_ref() {
            if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                job.abandon(StoreError::Commit(e.to_string()));
                broken = Some(e.to_string());
                break;
            }
            let (ok, complete) = job.run(&conn, sealer);
            if !ok {
                let _ = conn.execute_batch("ROLLBACK TO job");
            }
            let _ = conn.execute_batch("RELEASE job");
            completions.push(complete);
            // SQLite rolls the whole transaction back by itself on some errors (disk full,
            // I/O error, out of memory). Jobs run after that would autocommit one by one while
            // their callers hear "failed": stop here, so nothing is half done.
            if conn.is_autocommit() {
                broken = Some("the transaction was rolled back by the database".into());
                break;
            }
        }
        if let Some(why) = broken {
            jobs.for_each(|job| job.abandon(StoreError::Commit(why.clone())));
            let _ = conn.execute_batch("ROLLBACK");
            completions
                .into_iter()
                .for_each(|c| c(Err(StoreError::Commit(why.clone()))));
            continue;
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => completions.into_iter().for_each(|c| c(Ok(()))),
            Err(e) => {
                // Nothing of this batch is durable: every caller hears so, none hears success.
                let _ = conn.execute_batch("ROLLBACK");
                let msg = e.to_string();
                completions
                    .into_iter()
                    .for_each(|c| c(Err(StoreError::Commit(msg.clone()))));
            }
        }
    }
}

struct SqliteTx<'a>(&'a Connection, Option<&'a Sealer>);

impl SqliteTx<'_> {
    /// A secret as stored: sealed for its row when a key is set.
    fn stored_secret(&self, table: &str, name: &str, secret: &Secret) -> Result<Vec<u8>> {
        match self.1 {
            Some(s) => s
                .seal(table, name, secret.as_bytes())
                .map_err(StoreError::Seal),
            None => Ok(secret.as_bytes().to_vec()),
        }
    }

    fn read_secret(&self, table: &str, name: &str, stored: Vec<u8>) -> Result<Secret> {
        match self.1 {
            Some(s) => s
                .open(table, name, &stored)
                .map(Secret::from_bytes)
                .map_err(StoreError::Seal),
            None => Ok(Secret::from_bytes(stored)),
        }
    }
}

/// Which key opens the database (see `Store::open_sealed`); seals a database never sealed.
fn choose_seal(
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
fn reseal_rows(conn: &Connection, old: Option<&Sealer>, new: &Sealer) -> Result<usize> {
    let mut count = 0;
    for table in ["users", "pending"] {
        let rows: Vec<(String, Vec<u8>)> = conn
            .prepare(&format!("SELECT name, secret FROM {table}"))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (name, stored) in rows {
            let plain = zeroize::Zeroizing::new(match old {
                Some(s) => s.open(table, &name, &stored).map_err(StoreError::Seal)?,
                None => stored,
            });
            let sealed = new.seal(table, &name, &plain).map_err(StoreError::Seal)?;
            conn.execute(
                &format!("UPDATE {table} SET secret = ?1 WHERE name = ?2"),
                params![sealed, name],
            )?;
            count += 1;
        }
    }
    Ok(count)
}

/// The writer's side of `Store::rekey`: readers wait from the commit until the new key is in
/// place, so nobody reads a secret with the wrong key.
fn rekey_all(conn: &Connection, seal: &SealSlot, new: &Arc<Sealer>) -> Result<usize> {
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

pub(crate) fn params_from(algorithm: String, digits: i64, period: i64) -> Result<TotpParams> {
    let algorithm = Algorithm::parse(&algorithm)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown algorithm {algorithm:?}")))?;
    let params = TotpParams {
        algorithm,
        digits: digits as u32,
        period: period as u64,
    };
    params.validate().map_err(StoreError::Corrupt)?;
    Ok(params)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Tx for SqliteTx<'_> {
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
                "SELECT secret, algorithm, digits, period, enrolled_at, last_step, last_success, backup_salt, window, uid
                 FROM users WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Vec<u8>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, Option<i64>>(9)?,
                ))
            })
            .optional()?;
        let Some((
            secret,
            alg,
            digits,
            period,
            enrolled_at,
            last_step,
            last_success,
            salt,
            window,
            uid,
        )) = row
        else {
            return Ok(None);
        };
        Ok(Some(UserRecord {
            name: name.to_string(),
            secret: self.read_secret("users", name, secret)?,
            params: params_from(alg, digits, period)?,
            enrolled_at: enrolled_at.max(0) as u64,
            last_step,
            last_success: last_success.map(|t| t.max(0) as u64),
            backup_salt: salt,
            window: window.map(|w| w.clamp(0, 10) as u32),
            uid: uid.and_then(|u| u32::try_from(u).ok()),
        }))
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

    fn names_without_uid(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT name FROM users WHERE uid IS NULL ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    fn set_user_uid(&self, name: &str, uid: u32) -> Result<()> {
        self.0
            .prepare_cached("UPDATE users SET uid = ?2 WHERE name = ?1")?
            .execute(params![name, uid])?;
        Ok(())
    }

    fn pending(&self, name: &str) -> Result<Option<PendingRecord>> {
        let row = self
            .0
            .prepare_cached(
                "SELECT secret, algorithm, digits, period, created_at, failed_confirms FROM pending WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .optional()?;
        let Some((secret, alg, digits, period, created_at, failed)) = row else {
            return Ok(None);
        };
        Ok(Some(PendingRecord {
            secret: self.read_secret("pending", name, secret)?,
            params: params_from(alg, digits, period)?,
            created_at: created_at.max(0) as u64,
            failed_confirms: failed.clamp(0, i64::from(u32::MAX)) as u32,
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

    fn advance_step(&self, name: &str, step: i64, now: u64) -> Result<bool> {
        let changed = self
            .0
            .prepare_cached(
                "UPDATE users SET last_step = ?2, last_success = ?3 WHERE name = ?1 AND last_step < ?2",
            )?
            .execute(params![name, step, to_i64(now)])?;
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
                "INSERT OR REPLACE INTO pending (name, secret, algorithm, digits, period, created_at, failed_confirms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
            )?
            .execute(params![
                name,
                secret.as_slice(),
                p.params.algorithm.name(),
                i64::from(p.params.digits),
                to_i64(p.params.period),
                to_i64(p.created_at)
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
        let secret = zeroize::Zeroizing::new(self.stored_secret("users", &u.name, &u.secret)?);
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO users
                 (name, secret, algorithm, digits, period, enrolled_at, last_step, last_success, backup_salt, window, uid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                u.name,
                secret.as_slice(),
                u.params.algorithm.name(),
                i64::from(u.params.digits),
                to_i64(u.params.period),
                to_i64(u.enrolled_at),
                u.last_step,
                u.last_success.map(to_i64),
                u.backup_salt,
                u.window,
                u.uid
            ])?;
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
