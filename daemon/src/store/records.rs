//! What the store holds, as the rules see it, and how it fails.

use super::*;

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
    /// The PostgreSQL store failed (refused, a statement failed).
    Remote(String),
    /// The PostgreSQL store did not answer: no connection, a connection lost, a statement
    /// or lock cut short by the timeout, a server shutting down.
    Unreachable(String),
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
            StoreError::Unreachable(why) => write!(f, "PostgreSQL does not answer: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// The shared database did not answer (what outage mode decides without it on).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Unreachable(_))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// An active enrollment: the account's, and its authenticators.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub name: String,
    pub enrolled_at: u64,
    pub last_success: Option<u64>,
    pub backup_salt: Vec<u8>,
    /// The account's uid when it was enrolled (`None`: a name with no account, or an
    /// enrollment older than the record). A login whose name now resolves to another uid is
    /// refused.
    pub uid: Option<u32>,
    /// At least one; the first enrollment's is named [`DEFAULT_AUTHENTICATOR`].
    pub authenticators: Vec<Authenticator>,
}

/// The name of an enrollment's first authenticator (and of every enrollment made before
/// there could be several).
pub const DEFAULT_AUTHENTICATOR: &str = "default";

/// One app (or token) that makes the account's codes.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// Its name, unique for the account.
    pub label: String,
    pub secret: Secret,
    pub params: TotpParams,
    pub added_at: u64,
    /// Highest time step ever accepted from it (-1: none yet).
    pub last_step: i64,
    pub last_used: Option<u64>,
    /// Steps accepted either side of now (imported); `None`: the configured one.
    pub window: Option<u32>,
    /// TOTP, or HOTP: then `last_step` is the last counter accepted (-1: none yet) and the
    /// next `hotp_window` counters after it are looked at.
    pub kind: OtpKind,
}

impl UserRecord {
    /// An enrollment of one authenticator, named `default`.
    #[allow(clippy::too_many_arguments)]
    pub fn single(
        name: &str,
        secret: Secret,
        params: TotpParams,
        enrolled_at: u64,
        last_step: i64,
        backup_salt: Vec<u8>,
        window: Option<u32>,
        uid: Option<u32>,
    ) -> UserRecord {
        UserRecord {
            name: name.to_string(),
            enrolled_at,
            last_success: None,
            backup_salt,
            uid,
            authenticators: vec![Authenticator {
                label: DEFAULT_AUTHENTICATOR.to_string(),
                secret,
                params,
                added_at: enrolled_at,
                last_step,
                last_used: None,
                window,
                kind: OtpKind::Totp,
            }],
        }
    }
}

/// An enrollment waiting for its first code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecord {
    pub secret: Secret,
    pub params: TotpParams,
    pub created_at: u64,
    pub failed_confirms: u32,
    /// The name the authenticator gets once confirmed.
    pub label: String,
}

/// One enrollment as outage mode's copy of the fleet holds it.
#[derive(Debug, Clone)]
pub struct EnrollmentCopy {
    pub user: UserRecord,
    pub throttle: ThrottleRecord,
    /// Empty unless the copy keeps backup codes (`offline_backup_codes`).
    pub backup_codes: Vec<BackupHash>,
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

/// An administrator's invitation to enroll at the login prompt (`twofold invite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invitation {
    pub created_at: u64,
    pub expires_at: u64,
    /// For an enrolled account: the new enrollment replaces the old once confirmed.
    pub replace: bool,
    /// Its expiry is on record in the audit trail.
    pub expiry_noted: bool,
}

/// A helpdesk code (`twofold bypass`), stored only as its Argon2id hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BypassRecord {
    pub hash: Vec<u8>,
    pub salt: Vec<u8>,
    pub created_at: u64,
    pub expires_at: u64,
    pub uses_left: u32,
}

/// An authenticator's kind as stored.
pub(crate) fn kind_from(kind: &str) -> Result<OtpKind> {
    OtpKind::parse(kind).ok_or_else(|| StoreError::Corrupt(format!("unknown kind {kind:?}")))
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

/// What a login decision reads about a name, in one go (`Tx::login_state`): the enrollment,
/// the throttle, the live mailed login code, and whether a verified address exists.
#[derive(Debug, Clone)]
pub struct LoginState {
    pub user: Option<UserRecord>,
    pub throttle: ThrottleRecord,
    pub mailed: Option<MailedCode>,
    pub verified_address: bool,
}

/// A login decision made from a [`LoginState`], as the writes it makes and the facts it was
/// made from (`Tx::apply_decision`): applied whole if those still hold, else not at all (the
/// caller reads again and decides again). This is what lets a fleet's store decide in one
/// round trip without a lock held across the decision.
#[derive(Debug, Clone, Default)]
pub struct LoginDecision {
    /// The throttle the decision saw; the decision stands only while it is still so.
    pub throttle_was: ThrottleRecord,
    /// The new throttle: `None` keeps it, `Some(None)` clears it.
    pub throttle: Option<Option<ThrottleRecord>>,
    /// An accepted code: the authenticator's mark moves, if nobody moved it since.
    pub mark: Option<MarkAdvance>,
    /// The account's last success, when accepted.
    pub last_success: Option<u64>,
    pub audit: Vec<AuditEntry>,
    /// The device remembered: service, origin, when.
    pub remember: Option<(String, String, u64)>,
}

/// The high-water mark of authenticator `label` (added at `added_at`, mark `last_step` when
/// read) raised to `step` at `now`: a compare-and-set, so a code is spent exactly once and
/// never against an authenticator that was replaced meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkAdvance {
    pub label: String,
    pub added_at: u64,
    pub last_step: i64,
    pub step: i64,
    pub now: u64,
}

/// A backup-code hash read back from a store.
pub(crate) fn stored_hash(bytes: &[u8]) -> Result<BackupHash> {
    BackupHash::from_stored(bytes)
        .ok_or_else(|| StoreError::Corrupt("a backup-code hash of the wrong length".into()))
}
