//! The protocol between twofoldd and its clients.
//!
//! One request per connection. A frame is a u32 big-endian length followed by that many bytes
//! of JSON. Every request and every response carries the protocol version `v`.

use crate::otp::{Algorithm, OtpKind, TotpParams};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt;
use std::io::{self, Read, Write};
use zeroize::Zeroizing;

pub const PROTOCOL_VERSION: u32 = 1;
/// Requests (and the answers the PAM module reads) larger than this are refused before
/// anything is allocated for them.
pub const MAX_FRAME: usize = 64 * 1024;
/// Answers the CLI accepts from the (root-verified) daemon: `list` and `audit` of a large host
/// exceed 64 KiB.
pub const MAX_LARGE_FRAME: usize = 32 * 1024 * 1024;
/// Longest user name accepted anywhere (bytes).
pub const MAX_NAME: usize = 256;
/// Longest PAM item (service, rhost, tty) carried for the audit log (bytes).
pub const MAX_ITEM: usize = 256;
/// Longest "remember this device" period a client may ask for: 7 days.
pub const MAX_GRACE_SECS: u64 = 7 * 86_400;
/// How long the PAM module waits for twofoldd by default (module argument `timeout=`).
pub const PAM_TIMEOUT_SECS: u64 = 5;
/// How long twofoldd waits for the mail relay (or sendmail). A login by mail waits for it, so
/// it stays well inside the module's default wait: a slow relay fails the send ("Could not
/// send the code by email."), not the whole login with "service unavailable".
pub const MAIL_TIMEOUT_SECS: u64 = 3;
const _: () = assert!(MAIL_TIMEOUT_SECS + 2 <= PAM_TIMEOUT_SECS);
/// Longest code or backup code a client may send (bytes).
pub const MAX_CODE: usize = 64;

/// The rule for user names on the wire (they are hostile input): 1..=MAX_NAME bytes, no
/// control characters, no whitespace, no `:` (the label separator in otpauth URIs), no `/`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty user name".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("user name longer than {MAX_NAME} bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == ':' || c == '/' || is_invisible(c))
    {
        return Err(
            "user name contains a control or invisible character, a space, ':' or '/'".into(),
        );
    }
    Ok(())
}

/// Bidi controls and zero-width characters: not control characters, but they make a name look
/// like another in logs and terminals.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{feff}')
}

/// Text that must never be printed: codes, secrets, otpauth URIs, backup codes.
/// `Debug` shows `[redacted]`; the memory is zeroed on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    pub fn new(text: impl Into<String>) -> Self {
        SecretText(Zeroizing::new(text.into()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Who a request is about. `None` means the caller's own account.
pub type Target = Option<String>;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    pub body: RequestBody,
}

/// What a client asks for. PAM items are optional and only ever used for the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RequestBody {
    /// Protocol and daemon version.
    Ping {},
    /// Asked by the PAM module before prompting: must this login be asked for a code? With
    /// `grace_secs`, a login of the same user and service from the same remote host (or tty)
    /// within that many seconds of a successful code is accepted without one.
    Preflight {
        user: String,
        #[serde(default)]
        pam: PamItems,
        #[serde(default)]
        grace_secs: u64,
        /// The login can show an enrollment (a QR code, the key) and ask for its first code:
        /// an invited account without a factor is then enrolled in the login itself.
        #[serde(default, skip_serializing_if = "is_false")]
        can_enroll: bool,
        /// The login asks one question for password and code together (module argument
        /// `forward_pass`, `use_first_pass`, `try_first_pass`): the answer to prompt is
        /// [`ResponseBody::PromptCombined`], which says how many digits the code has.
        #[serde(default, skip_serializing_if = "is_false")]
        combined: bool,
    },
    /// At the login prompt: the first code of the enrollment the preflight showed. A right
    /// code activates it and accepts the login.
    ConfirmLogin {
        user: String,
        code: SecretText,
        #[serde(default)]
        pam: PamItems,
    },
    /// Check (and consume) a TOTP code or a backup code, exactly as a login does. With
    /// `grace_secs`, a success is remembered for later preflights.
    Verify {
        user: String,
        code: SecretText,
        #[serde(default)]
        pam: PamItems,
        #[serde(default)]
        grace_secs: u64,
    },
    /// Start a pending enrollment; replaces an active one only with `force`.
    Enroll {
        user: Target,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        code: Option<SecretText>,
        /// Algorithm, digits and step; `None`: SHA-1, 6 digits, 30 s (what every app reads).
        #[serde(default)]
        params: Option<TotpParams>,
        /// The authenticator's name: a new one is added to an enrolled account (one of that
        /// name is replaced only with `force`); `None`: `default`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authenticator: Option<String>,
    },
    /// The account's authenticators (never their secrets).
    Authenticators {
        user: Target,
    },
    /// Remove one authenticator; the last one goes only with `disable`.
    RemoveAuthenticator {
        user: Target,
        authenticator: String,
        #[serde(default)]
        code: Option<SecretText>,
    },
    /// Activate the pending enrollment with a first code from the app.
    Confirm {
        user: Target,
        code: SecretText,
    },
    Status {
        user: Target,
    },
    /// Replace every backup code.
    BackupCodes {
        user: Target,
        #[serde(default)]
        code: Option<SecretText>,
    },
    /// Remove the enrollment.
    Disable {
        user: Target,
        #[serde(default)]
        code: Option<SecretText>,
    },
    List {},
    Unlock {
        user: String,
    },
    /// The policy in force and whom each rule affects.
    Policy {},
    /// What twofoldd has decided since it started and the store's state, as Prometheus text
    /// (root).
    Metrics {},
    /// Take over an enrollment made elsewhere (google-authenticator-libpam), keeping the
    /// user's secret, parameters and single-use codes.
    Import {
        user: String,
        secret: SecretText,
        params: TotpParams,
        #[serde(default)]
        window: Option<u32>,
        #[serde(default)]
        backup_codes: Vec<SecretText>,
        /// The highest time step already used where the enrollment came from.
        #[serde(default)]
        last_used_step: Option<u64>,
        #[serde(default)]
        force: bool,
        /// Add it as an authenticator of this name to an enrolled account (its scratch codes
        /// join the backup codes) instead of replacing the enrollment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authenticator: Option<String>,
        /// A counter-based (HOTP) token: the counter of the next code it will show.
        /// `None`: time-based (TOTP).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        counter: Option<u64>,
    },
    /// Register an email address: a verification code is mailed to it.
    EmailSet {
        user: Target,
        address: String,
        /// A current code, when the caller changes their own second factor.
        #[serde(default)]
        code: Option<SecretText>,
    },
    /// Mark the registered address verified with the code mailed to it.
    EmailConfirm {
        user: Target,
        code: SecretText,
    },
    /// Forget the address.
    EmailRemove {
        user: Target,
        #[serde(default)]
        code: Option<SecretText>,
    },
    /// Re-encrypt every sealed secret under a new key (root; `seal_key_file` set).
    SealRekey {},
    /// At login: mail a one-time code to the user's verified address.
    SendEmailCode {
        user: String,
        #[serde(default)]
        pam: PamItems,
    },
    /// Let an account enroll at its next login, for `for_secs` (root). With `replace`, an
    /// enrolled account (a lost phone): its factor keeps working until the new one is confirmed.
    Invite {
        user: String,
        #[serde(default)]
        for_secs: Option<u64>,
        #[serde(default)]
        replace: bool,
    },
    /// Every open (or recently expired) invitation (root).
    InviteList {},
    InviteRevoke {
        user: String,
    },
    /// A helpdesk code: logs the user in `uses` times within `for_secs` without their phone
    /// (root). Replaces any earlier one.
    Bypass {
        user: String,
        #[serde(default)]
        for_secs: Option<u64>,
        #[serde(default)]
        uses: Option<u32>,
    },
    /// Bring a counter-based (HOTP) token that was pressed beyond the look-ahead back in step:
    /// two consecutive codes it shows now (root).
    Resync {
        user: String,
        /// Which of the account's HOTP authenticators; `None`: whichever the codes fit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authenticator: Option<String>,
        first: SecretText,
        second: SecretText,
    },
    BypassRevoke {
        user: String,
    },
    /// The audit trail, newest last; optionally one user's, and only the last `since_secs`.
    Audit {
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        since_secs: Option<u64>,
    },
}

impl RequestBody {
    pub fn into_request(self) -> Request {
        Request {
            v: PROTOCOL_VERSION,
            body: self,
        }
    }

    /// The operation's name, for logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            RequestBody::Ping {} => "ping",
            RequestBody::Preflight { .. } => "preflight",
            RequestBody::Verify { .. } => "verify",
            RequestBody::Enroll { .. } => "enroll",
            RequestBody::Authenticators { .. } => "authenticators",
            RequestBody::RemoveAuthenticator { .. } => "remove_authenticator",
            RequestBody::Confirm { .. } => "confirm",
            RequestBody::Status { .. } => "status",
            RequestBody::BackupCodes { .. } => "backup_codes",
            RequestBody::Disable { .. } => "disable",
            RequestBody::List {} => "list",
            RequestBody::Unlock { .. } => "unlock",
            RequestBody::Policy {} => "policy",
            RequestBody::Metrics {} => "metrics",
            RequestBody::Audit { .. } => "audit",
            RequestBody::Import { .. } => "import",
            RequestBody::EmailSet { .. } => "email_set",
            RequestBody::EmailConfirm { .. } => "email_confirm",
            RequestBody::EmailRemove { .. } => "email_remove",
            RequestBody::SendEmailCode { .. } => "send_email_code",
            RequestBody::SealRekey {} => "seal_rekey",
            RequestBody::ConfirmLogin { .. } => "confirm_login",
            RequestBody::Invite { .. } => "invite",
            RequestBody::InviteList {} => "invite_list",
            RequestBody::InviteRevoke { .. } => "invite_revoke",
            RequestBody::Bypass { .. } => "bypass",
            RequestBody::BypassRevoke { .. } => "bypass_revoke",
            RequestBody::Resync { .. } => "resync",
        }
    }
}

/// The PAM items of a login, carried for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PamItems {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub rhost: Option<String>,
    #[serde(default)]
    pub tty: Option<String>,
    /// PAM_RUSER: who asked (sudo and su set it to the invoking user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruser: Option<String>,
    /// The PAM application's audit session (`/proc/self/sessionid`), as the module reads it.
    /// twofoldd takes it only from root's processes (sudo, su, login): under its hardened unit
    /// it cannot read another process's /proc entry itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub v: u32,
    pub body: ResponseBody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Totp,
    BackupCode,
    /// No code: a recent success of the same user, service and origin ("remember this device").
    Remembered,
    /// A one-time code mailed to the user's verified address.
    Email,
    /// A helpdesk code issued by root (`twofold bypass`).
    Bypass,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseBody {
    Pong {
        daemon_version: String,
    },
    /// Preflight: ask the user for a code.
    Prompt,
    /// Preflight of a `combined` login: ask for password and code in one answer, whose last
    /// `digits` characters are the code (the account's first authenticator's length; 6 for
    /// names without an enrollment).
    PromptCombined {
        digits: u8,
    },
    /// A code was mailed to the (masked) address: ask the user for it.
    EmailSent {
        masked: String,
    },
    Accepted {
        method: Method,
        /// Backup codes left after this one, when a backup code was used.
        #[serde(default)]
        backup_codes_left: Option<u32>,
    },
    /// Wrong code, replayed code, or no such user: indistinguishable on purpose.
    Rejected,
    Throttled {
        retry_after_secs: u64,
    },
    Locked,
    /// The user has no active enrollment; `required` says whether policy refuses the login.
    NotEnrolled {
        required: bool,
        /// Why, and what to do, when enrollment at the login prompt was not possible.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The administrator switched two-factor off for this host.
    Disabled,
    Enrollment(EnrollmentInfo),
    /// Preflight: this account enrolls now, in the login's conversation.
    EnrollAtLogin(LoginEnrollment),
    /// ConfirmLogin: the first code was right; the enrollment is active and the login accepted.
    EnrolledAtLogin {
        codes: Vec<SecretText>,
    },
    Invitations {
        invitations: Vec<InvitationInfo>,
    },
    Authenticators {
        user: String,
        authenticators: Vec<AuthenticatorInfo>,
    },
    /// A helpdesk code, shown once.
    BypassCode {
        user: String,
        code: SecretText,
        expires_at: u64,
        uses: u32,
    },
    BackupCodes {
        user: String,
        codes: Vec<SecretText>,
    },
    Status(UserStatus),
    Users {
        users: Vec<UserStatus>,
    },
    Done {
        message: String,
    },
    Policy(PolicyReport),
    /// Prometheus text exposition (format 0.0.4).
    Metrics {
        text: String,
    },
    Audit {
        entries: Vec<AuditEntry>,
        /// Older matching entries left out (the answer holds at most the newest 10,000).
        omitted: u64,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentInfo {
    pub user: String,
    pub issuer: String,
    /// `ISSUER:NAME`, as the app will show it.
    pub label: String,
    pub secret: SecretText,
    pub otpauth_uri: SecretText,
    pub algorithm: Algorithm,
    pub digits: u32,
    pub period: u64,
}

/// An enrollment shown in the login's conversation: what `twofold enroll` shows, and the QR
/// code as text lines in both polarities (`qr` reads on a dark terminal, `qr_inverted` on a
/// light one; no colour escapes, which OpenSSH would not pass).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginEnrollment {
    pub info: EnrollmentInfo,
    pub qr: SecretText,
    pub qr_inverted: SecretText,
}

/// One of an account's authenticators, as `twofold authenticators` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticatorInfo {
    pub name: String,
    pub added_at: u64,
    pub last_used: Option<u64>,
    pub algorithm: Algorithm,
    pub digits: u32,
    pub period: u64,
    #[serde(default)]
    pub kind: OtpKind,
    /// A counter-based token's next counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<u64>,
}

/// The rule for authenticator names: 1 to 32 letters, digits, `-` or `_`.
pub fn validate_authenticator_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("an authenticator's name is 1 to 32 letters, digits, '-' or '_'".into())
    }
}

/// An administrator's invitation to enroll at the login prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvitationInfo {
    pub user: String,
    pub created_at: u64,
    pub expires_at: u64,
    /// For an enrolled account: the new enrollment replaces the old one once confirmed.
    pub replace: bool,
    pub expired: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserStatus {
    pub user: String,
    pub enrolled: bool,
    pub pending: bool,
    pub backup_codes_left: u32,
    pub enrolled_at: Option<u64>,
    pub last_success: Option<u64>,
    pub failures: u32,
    /// Unix time before which attempts are refused unevaluated.
    pub throttled_until: Option<u64>,
    pub locked: bool,
    /// The registered email address, masked (`a***@example.org`).
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    /// An open invitation to enroll at the login prompt, until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invited_until: Option<u64>,
    /// A helpdesk code works until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_until: Option<u64>,
    /// How many authenticators the enrollment has.
    #[serde(default)]
    pub authenticators: u32,
}

/// One line of the audit trail. Never holds a code or a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub time: u64,
    /// enroll, confirm, login, lockout, unlock, disable, backup-codes, policy-reload, …
    pub event: String,
    pub user: Option<String>,
    pub outcome: String,
    /// totp, backup-code, email or remembered, for logins that got as far as a method.
    pub method: Option<String>,
    pub service: Option<String>,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    /// The uid of the process that asked (the PAM host, the CLI user).
    pub caller_uid: Option<u32>,
    pub detail: Option<String>,
}

/// The policy in force, and how many local accounts each rule affects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyReport {
    pub enabled: bool,
    /// `allow` or `deny`.
    pub unenrolled: String,
    pub self_enroll: bool,
    /// `never`, `invited` or `always`.
    #[serde(default)]
    pub enroll_at_login: String,
    pub window: u32,
    pub require_groups: Vec<GroupReport>,
    /// Local login accounts considered (root and uids 1000–59999 with a login shell).
    pub accounts: u32,
    /// Accounts asked for a code at login (enrolled).
    pub asked_for_code: Vec<String>,
    /// Accounts refused until they enroll.
    pub refused_until_enrolled: Vec<String>,
    /// Accounts that log in without a code (not enrolled, not required).
    pub pass_without_code: Vec<String>,
    /// Enrollments of names that are not local accounts (directory users, or stale).
    pub other_enrolled: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupReport {
    pub group: String,
    pub exists: bool,
    pub members: u32,
    pub not_enrolled: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed frame, bad JSON, unknown operation or field, bad name.
    BadRequest,
    VersionMismatch,
    PermissionDenied,
    /// The operation needs a current code or backup code (`--code`).
    CodeRequired,
    NoPendingEnrollment,
    AlreadyEnrolled,
    NoSuchUser,
    /// Too many connections at once.
    Busy,
    /// Too many emails asked for: wait and try again.
    RateLimited,
    /// The mail relay (or sendmail) refused or could not be reached: nothing was sent.
    MailFailed,
    /// The store failed (disk full, read-only, corrupt): nothing was changed.
    Storage,
    Internal,
}

// ---------------------------------------------------------------------------------------------
// Framing

#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection before sending anything.
    Closed,
    /// The connection ended inside a frame.
    Truncated,
    Empty,
    /// The frame's length and the limit it exceeds.
    TooLarge(u64, usize),
    TimedOut,
    Io(io::Error),
    /// Valid frame, but not the JSON we expect.
    Json(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => f.write_str("connection closed before a frame arrived"),
            FrameError::Truncated => f.write_str("connection closed in the middle of a frame"),
            FrameError::Empty => f.write_str("zero-length frame"),
            FrameError::TooLarge(n, limit) => {
                write!(f, "frame of {n} bytes exceeds the {limit}-byte limit")
            }
            FrameError::TimedOut => f.write_str("timed out"),
            FrameError::Io(e) => write!(f, "I/O error: {e}"),
            FrameError::Json(e) => write!(f, "malformed message: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

pub(crate) fn io_to_frame(e: io::Error, partial: bool) -> FrameError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof if partial => FrameError::Truncated,
        io::ErrorKind::UnexpectedEof => FrameError::Closed,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FrameError::TimedOut,
        _ => FrameError::Io(e),
    }
}

/// Reads `buf.len()` bytes; distinguishes EOF before the first byte from EOF after it.
fn read_full(r: &mut impl Read, buf: &mut [u8], already_partial: bool) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(if filled == 0 && !already_partial {
                    FrameError::Closed
                } else {
                    FrameError::Truncated
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_to_frame(e, filled > 0 || already_partial)),
        }
    }
    Ok(())
}

/// Reads one frame's payload of at most [`MAX_FRAME`] bytes.
pub fn read_frame(r: &mut impl Read) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    read_frame_limited(r, MAX_FRAME)
}

/// Reads one frame's payload of at most `limit` bytes. The length is checked before the
/// buffer is allocated.
pub fn read_frame_limited(
    r: &mut impl Read,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    read_full(r, &mut header, false)?;
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > limit {
        return Err(FrameError::TooLarge(len as u64, limit));
    }
    // Zeroizing: requests carry codes.
    let mut payload = Zeroizing::new(vec![0u8; len]);
    read_full(r, &mut payload, true)?;
    Ok(payload)
}

/// Serialises `msg` and writes it as one frame of at most [`MAX_FRAME`] bytes.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    write_frame_limited(w, msg, MAX_FRAME)
}

/// Serialises `msg` and writes it as one frame of at most `limit` bytes (a single write call
/// when possible).
pub fn write_frame_limited<T: Serialize>(
    w: &mut impl Write,
    msg: &T,
    limit: usize,
) -> Result<(), FrameError> {
    let frame = encode_frame(msg, limit)?;
    w.write_all(&frame).map_err(|e| io_to_frame(e, true))?;
    w.flush().map_err(|e| io_to_frame(e, true))
}

/// `msg` as one frame (length and JSON) of at most `limit` bytes, zeroed on drop.
pub fn encode_frame<T: Serialize>(msg: &T, limit: usize) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let json =
        Zeroizing::new(serde_json::to_vec(msg).map_err(|e| FrameError::Json(e.to_string()))?);
    if json.len() > limit {
        return Err(FrameError::TooLarge(json.len() as u64, limit));
    }
    let mut frame = Zeroizing::new(Vec::with_capacity(4 + json.len()));
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    Ok(frame)
}

/// Parses a frame payload. serde_json's messages name positions and fields, never values.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::Json(describe_json_error(&e)))
}

/// serde_json's messages can quote the offending value ("invalid type: string \"123456\""),
/// and values may be codes. Keep only messages that name fields or operations, never values.
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let head = text.split(", expected").next().unwrap_or("");
    if head.starts_with("unknown variant")
        || head.starts_with("unknown field")
        || head.starts_with("missing field")
    {
        let head: String = head.chars().take(120).collect();
        format!("{head} at line {} column {}", e.line(), e.column())
    } else {
        let what = match e.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected value",
            serde_json::error::Category::Eof => "JSON ends early",
        };
        format!("{what} at line {} column {}", e.line(), e.column())
    }
}

/// Reads just the version of a request, so that a client of another version gets a clear
/// "version mismatch" rather than a parse error about fields it could not know.
pub fn peek_version(payload: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u32,
    }
    serde_json::from_slice::<Versioned>(payload)
        .ok()
        .map(|x| x.v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn frame_bytes(len: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn round_trip() {
        let req = RequestBody::Verify {
            user: "alice".into(),
            code: SecretText::new("123456"),
            pam: PamItems {
                service: Some("sshd".into()),
                rhost: None,
                tty: None,
                ..Default::default()
            },
            grace_secs: 0,
        }
        .into_request();
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let payload = read_frame(&mut Cursor::new(buf)).unwrap();
        assert_eq!(peek_version(&payload), Some(PROTOCOL_VERSION));
        let back: Request = decode(&payload).unwrap();
        assert!(
            matches!(back.body, RequestBody::Verify { ref user, ref code, .. }
            if user == "alice" && code.expose() == "123456")
        );
    }

    #[test]
    fn framing_limits() {
        assert!(matches!(
            read_frame(&mut Cursor::new(vec![])),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut Cursor::new(vec![0, 0])),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut Cursor::new(frame_bytes(0, b""))),
            Err(FrameError::Empty)
        ));
        // A 4 GiB header is refused from the header alone.
        assert!(matches!(
            read_frame(&mut Cursor::new(frame_bytes(u32::MAX, b"{}"))),
            Err(FrameError::TooLarge(4294967295, MAX_FRAME))
        ));
        let limit = MAX_FRAME as u32;
        assert!(matches!(
            read_frame(&mut Cursor::new(frame_bytes(limit + 1, b""))),
            Err(FrameError::TooLarge(..))
        ));
        // Exactly the limit is fine.
        let big = vec![b' '; MAX_FRAME];
        assert_eq!(
            read_frame(&mut Cursor::new(frame_bytes(limit, &big)))
                .unwrap()
                .len(),
            MAX_FRAME
        );
        // Short payload.
        assert!(matches!(
            read_frame(&mut Cursor::new(frame_bytes(10, b"{}"))),
            Err(FrameError::Truncated)
        ));
        // Writing more than the limit is refused too.
        let huge = "x".repeat(MAX_FRAME);
        assert!(matches!(
            write_frame(&mut Vec::new(), &huge),
            Err(FrameError::TooLarge(..))
        ));
    }

    #[test]
    fn strict_decoding() {
        assert!(decode::<Request>(br#"{"v":1,"body":{"op":"format_disk"}}"#).is_err());
        assert!(decode::<Request>(br#"{"v":1,"body":{"op":"ping","extra":1}}"#).is_err());
        assert!(decode::<Request>(br#"{"v":1}"#).is_err());
        assert!(decode::<Request>(b"\xff\xfe").is_err());
        assert_eq!(
            peek_version(br#"{"v":7,"body":{"op":"new_thing"}}"#),
            Some(7)
        );
        assert_eq!(peek_version(b"garbage"), None);
        // Error text names the problem, never the value that caused it.
        let err = decode::<Request>(br#"{"v":1,"body":{"op":"verify","user":"a","code":123456}}"#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("123456"), "{err}");
        let err = decode::<Request>(br#"{"v":1,"body":{"op":"format_disk"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `format_disk`"), "{err}");
    }

    #[test]
    fn codes_never_print() {
        let req = RequestBody::Confirm {
            user: None,
            code: SecretText::new("987654"),
        };
        assert!(!format!("{req:?}").contains("987654"));
    }
}
