//! One login: read the PAM items, ask twofoldd whether to prompt, prompt once, ask twofoldd to
//! verify, and map its answer to a PAM result (ARCHITECTURE.md §4). Plain Rust over the [`Pam`] trait.

use crate::args::{self, Args};
use crate::combined;
use crate::enroll;
use crate::text;
use std::ffi::CStr;
use twofold_shared::client::Client;
use twofold_shared::wire::{
    self as wire, LoginEnrollment, Method, PamItems, RequestBody, ResponseBody, SecretText,
    MAX_CODE, MAX_ITEM,
};

/// The PAM results this module returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PamCode {
    Success,
    Ignore,
    AuthErr,
    MaxTries,
    AuthInfoUnavail,
    ConvErr,
    ServiceErr,
}

/// `PAM_SILENT`: no informational messages. A refusal still says why: sudo before 1.9.16 passes
/// PAM_SILENT on every call, and a login refused without a word ("enroll first", "locked")
/// leaves people stuck. The messages hold no secret.
pub const PAM_SILENT: u32 = 0x8000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Service,
    RHost,
    Tty,
    RUser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Debug,
}

/// Why the user name could not be had from PAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserError {
    /// PAM had to ask for the name and the conversation failed.
    Conversation,
    Other,
}

/// The conversation could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvError;

/// What the module needs from libpam; `ffi` implements it over the real handle, tests over a
/// scripted fake.
pub trait Pam {
    /// PAM_USER as raw bytes (PAM may ask the application for it).
    fn user(&mut self) -> Result<Vec<u8>, UserError>;
    fn item(&mut self, kind: ItemKind) -> Option<Vec<u8>>;
    /// PAM_AUTHTOK: the password an earlier module or the application set, if any.
    fn authtok(&mut self) -> Option<SecretText>;
    /// Sets PAM_AUTHTOK for the modules after this one; `false` when libpam refused.
    fn set_authtok(&mut self, password: &SecretText) -> bool;
    /// Asks the user; `Ok(None)` when the application returned no answer.
    fn prompt(&mut self, text: &str, echo: bool) -> Result<Option<SecretText>, ConvError>;
    fn info(&mut self, text: &str);
    fn error(&mut self, text: &str);
    /// To syslog (LOG_AUTHPRIV). Never codes.
    fn log(&mut self, level: LogLevel, text: &str);
    /// This process's audit session, if the kernel numbered one.
    fn session(&mut self) -> Option<u32> {
        let text = std::fs::read_to_string("/proc/self/sessionid").ok()?;
        text.trim().parse().ok().filter(|&s| s != u32::MAX)
    }
}

pub const MSG_INVALID: &str = "Invalid verification code.";
pub const MSG_LOCKED: &str = "Locked; ask an administrator.";
pub const MSG_ENROLL: &str = "Two-factor enrollment required: run 'twofold enroll'.";
pub const MSG_UNAVAILABLE: &str = "Two-factor service unavailable.";
pub const MSG_MAIL_FAILED: &str = "Could not send the code by email.";
pub const MSG_MAIL_TOO_SOON: &str =
    "A code was sent by email moments ago (or too many this hour); use it, or try again later.";
/// What the user types at the code prompt to have a code mailed instead.
pub const EMAIL_WORD: &str = "email";

/// What a login came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    AcceptedBackup {
        left: u32,
    },
    /// Not enrolled and policy allows it, or two-factor switched off: the stack decides.
    NotApplicable,
    Rejected,
    Throttled {
        retry_after_secs: u64,
    },
    Locked,
    /// Refused until enrolled; the daemon's reason (and the administrator's next step) when
    /// enrollment at the login prompt was not possible.
    EnrollmentRequired(Option<String>),
    /// Enrolled in this login's conversation: its first code was right.
    Enrolled,
    /// Enrollment in the conversation was not confirmed (wrong first codes).
    EnrollmentNotConfirmed,
    Unavailable,
    /// The daemon could not mail a code (relay down): fail closed.
    MailFailed,
    /// Codes were mailed too recently.
    MailTooSoon,
    ConversationFailed,
    Misconfigured,
}

/// A message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Info(String),
    Error(String),
}

impl Outcome {
    /// The one table from outcomes to PAM results and messages (ARCHITECTURE.md §4).
    pub fn result(&self) -> (PamCode, Option<Message>) {
        let err = |s: &str| Some(Message::Error(s.to_string()));
        match *self {
            Outcome::Accepted | Outcome::Enrolled => (PamCode::Success, None),
            Outcome::AcceptedBackup { left } => (
                PamCode::Success,
                Some(Message::Info(format!("Backup code used; {left} left."))),
            ),
            Outcome::NotApplicable => (PamCode::Ignore, None),
            Outcome::Rejected => (PamCode::AuthErr, err(MSG_INVALID)),
            Outcome::Throttled { retry_after_secs } => {
                let minutes = retry_after_secs.div_ceil(60).max(1);
                (
                    PamCode::MaxTries,
                    Some(Message::Error(format!(
                        "Too many failed attempts; try again in {minutes} min."
                    ))),
                )
            }
            Outcome::Locked => (PamCode::MaxTries, err(MSG_LOCKED)),
            Outcome::EnrollmentRequired(ref reason) => (
                PamCode::AuthErr,
                err(reason.as_deref().unwrap_or(MSG_ENROLL)),
            ),
            Outcome::EnrollmentNotConfirmed => (PamCode::AuthErr, err(enroll::MSG_NOT_CONFIRMED)),
            Outcome::Unavailable => (PamCode::AuthInfoUnavail, err(MSG_UNAVAILABLE)),
            Outcome::MailFailed => (PamCode::AuthInfoUnavail, err(MSG_MAIL_FAILED)),
            Outcome::MailTooSoon => (PamCode::AuthErr, err(MSG_MAIL_TOO_SOON)),
            Outcome::ConversationFailed => (PamCode::ConvErr, None),
            Outcome::Misconfigured => (PamCode::ServiceErr, None),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::AcceptedBackup { .. } => "accepted-backup-code",
            Outcome::NotApplicable => "not-applicable",
            Outcome::Rejected => "rejected",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Locked => "locked",
            Outcome::EnrollmentRequired(_) => "enrollment-required",
            Outcome::Enrolled => "enrolled",
            Outcome::EnrollmentNotConfirmed => "enrollment-not-confirmed",
            Outcome::Unavailable => "unavailable",
            Outcome::MailFailed => "mail-failed",
            Outcome::MailTooSoon => "mail-too-soon",
            Outcome::ConversationFailed => "conversation-failed",
            Outcome::Misconfigured => "misconfigured",
        }
    }
}

/// What to ask the user for.
enum Ask {
    /// The authenticator app's code (or a backup code, or `email`).
    Code,
    /// The code just mailed to this (masked) address.
    Mailed(String),
    /// Enroll now: show this and ask for its first code.
    Enroll(Box<LoginEnrollment>),
}

/// The prompt for a mailed code; the address is daemon text: control characters go.
fn mailed_prompt(masked: &str) -> String {
    format!("Code sent to {}: ", text::printable(masked))
}

/// The daemon's answer to the preflight: what to prompt for, or the login's final outcome.
fn preflight_outcome(answer: &ResponseBody) -> Result<Ask, Outcome> {
    match answer {
        ResponseBody::Prompt => Ok(Ask::Code),
        // email_auto: a user without an app was mailed a code.
        ResponseBody::EmailSent { masked } => Ok(Ask::Mailed(masked.clone())),
        ResponseBody::EnrollAtLogin(offer) => Ok(Ask::Enroll(Box::new(offer.clone()))),
        other => Err(preflight_final(other)),
    }
}

fn preflight_final(answer: &ResponseBody) -> Outcome {
    match answer {
        // "Remember this device" (module argument grace=): the daemon accepted without a code.
        ResponseBody::Accepted {
            method: Method::Remembered,
            ..
        } => Outcome::Accepted,
        // Any other acceptance before a code was typed is nonsense: fail closed.
        ResponseBody::Accepted { .. } => Outcome::Unavailable,
        other => final_outcome(other),
    }
}

/// The daemon's answer to a verification. Anything unexpected fails closed.
pub(crate) fn final_outcome(answer: &ResponseBody) -> Outcome {
    match answer {
        ResponseBody::Accepted {
            method: Method::BackupCode,
            backup_codes_left: Some(left),
        } => Outcome::AcceptedBackup { left: *left },
        ResponseBody::Accepted {
            method: Method::Totp | Method::BackupCode | Method::Email | Method::Bypass,
            ..
        } => Outcome::Accepted,
        ResponseBody::Rejected => Outcome::Rejected,
        ResponseBody::Throttled { retry_after_secs } => Outcome::Throttled {
            retry_after_secs: *retry_after_secs,
        },
        ResponseBody::Locked => Outcome::Locked,
        ResponseBody::NotEnrolled {
            required: false, ..
        } => Outcome::NotApplicable,
        ResponseBody::NotEnrolled {
            required: true,
            reason,
        } => Outcome::EnrollmentRequired(reason.as_ref().map(|r| text::printable(r))),
        ResponseBody::Disabled => Outcome::NotApplicable,
        _ => Outcome::Unavailable,
    }
}

/// Once a code prompt was shown, only an explicit acceptance lets the login through: "not
/// enrolled" or "switched off" (a `disable` between preflight and verify, a daemon that
/// changed its mind) is a refusal, never `PAM_IGNORE`.
pub(crate) fn after_prompt(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::NotApplicable => Outcome::Rejected,
        other => other,
    }
}

/// A user name the daemon could look up, or `None` for names no account can have; those are
/// handled like unknown users (prompt, then "Invalid verification code.").
fn valid_user(raw: Vec<u8>) -> Option<String> {
    let name = String::from_utf8(raw).ok()?;
    wire::validate_name(&name).is_ok().then_some(name)
}

pub(crate) fn pam_items(pam: &mut impl Pam) -> PamItems {
    let mut get = |kind| pam.item(kind).map(|v| text::bounded_lossy(&v, MAX_ITEM));
    PamItems {
        service: get(ItemKind::Service),
        rhost: get(ItemKind::RHost),
        tty: get(ItemKind::Tty),
        ruser: get(ItemKind::RUser),
        session: pam.session(),
    }
}

/// One call to twofoldd; errors are logged here and become `Unavailable`.
pub(crate) fn ask(
    pam: &mut impl Pam,
    client: &Client,
    request: RequestBody,
) -> Result<ResponseBody, Outcome> {
    let op = request.op_name();
    answered(pam, client, op, client.call_login(&request))
}

/// The preflight. A twofoldd older than this module (between a package's unpack and the
/// daemon's restart) refuses the field `can_enroll`: it is then asked again without it, as
/// before. The answer to that second question is taken like any other.
fn ask_preflight(
    pam: &mut impl Pam,
    client: &Client,
    request: RequestBody,
) -> Result<ResponseBody, Outcome> {
    let RequestBody::Preflight {
        user,
        pam: items,
        grace_secs,
        can_enroll: true,
        combined: false,
    } = &request
    else {
        return ask(pam, client, request);
    };
    let older = RequestBody::Preflight {
        user: user.clone(),
        pam: items.clone(),
        grace_secs: *grace_secs,
        can_enroll: false,
        combined: false,
    };
    match client.call_login(&request) {
        Ok(ResponseBody::Error {
            kind: wire::ErrorKind::BadRequest,
            message,
        }) if message.contains("`can_enroll`") => ask(pam, client, older),
        result => answered(pam, client, "preflight", result),
    }
}

fn answered(
    pam: &mut impl Pam,
    client: &Client,
    op: &str,
    result: Result<ResponseBody, twofold_shared::client::ClientError>,
) -> Result<ResponseBody, Outcome> {
    match result {
        Ok(ResponseBody::Error { kind, message }) => {
            pam.log(
                LogLevel::Error,
                &format!(
                    "twofoldd refused {op}: {kind:?}: {}",
                    text::printable(&message)
                ),
            );
            Err(Outcome::Unavailable)
        }
        Ok(answer) => Ok(answer),
        Err(e) => {
            pam.log(
                LogLevel::Error,
                &format!(
                    "{op} via {}: {}",
                    text::printable(&client.socket.to_string_lossy()),
                    text::printable(&e.to_string())
                ),
            );
            Err(Outcome::Unavailable)
        }
    }
}

/// The user's answer, bounded: anything longer than a code can be is cut to just over the limit
/// (at least one byte over, on a character boundary), so the daemon still counts it as a wrong
/// code, however much was pasted.
pub(crate) fn bounded_code(code: SecretText) -> SecretText {
    if code.expose().len() <= MAX_CODE {
        return code;
    }
    let mut cut = code.expose().to_string();
    text::truncate_on_char(&mut cut, MAX_CODE + 4);
    SecretText::new(cut)
}

/// The user typed `email`: ask for a mailed code (a new connection). `Ok`: the masked address.
fn ask_email(
    pam: &mut impl Pam,
    client: &Client,
    user: &str,
    items: &PamItems,
) -> Result<String, Outcome> {
    let request = RequestBody::SendEmailCode {
        user: user.to_string(),
        pam: items.clone(),
    };
    match client.call_login(&request) {
        Ok(ResponseBody::EmailSent { masked }) => Ok(masked),
        Ok(ResponseBody::Error { kind, message }) => {
            pam.log(
                LogLevel::Error,
                &format!(
                    "twofoldd could not mail a code: {kind:?}: {}",
                    text::printable(&message)
                ),
            );
            Err(match kind {
                wire::ErrorKind::MailFailed => Outcome::MailFailed,
                wire::ErrorKind::RateLimited => Outcome::MailTooSoon,
                _ => Outcome::Unavailable,
            })
        }
        // No acceptance of any kind can answer a request for a mail: fail closed.
        Ok(ResponseBody::Accepted { .. }) => Err(Outcome::Unavailable),
        Ok(other) => Err(final_outcome(&other)),
        Err(e) => {
            pam.log(
                LogLevel::Error,
                &format!(
                    "send_email_code via {}: {}",
                    text::printable(&client.socket.to_string_lossy()),
                    text::printable(&e.to_string())
                ),
            );
            Err(Outcome::Unavailable)
        }
    }
}

/// Prompts once; `None` when the conversation gave no answer.
pub(crate) fn read_code(pam: &mut impl Pam, text: &str, echo: bool) -> Option<SecretText> {
    match pam.prompt(text, echo) {
        Ok(Some(code)) => Some(bounded_code(code)),
        Ok(None) | Err(ConvError) => None,
    }
}

/// A client of the socket the arguments name, trusting root and `daemon_uid=`.
pub(crate) fn client(args: &Args) -> Client {
    let mut trusted = vec![0];
    trusted.extend(args.daemon_uid);
    Client::new(&args.socket, args.timeout, trusted)
}

fn login(pam: &mut impl Pam, args: &Args, user: Option<&str>, flags: u32) -> Outcome {
    let client = client(args);
    let items = pam_items(pam);
    let mut want = Ask::Code;
    if let Some(user) = user {
        let request = RequestBody::Preflight {
            user: user.to_string(),
            pam: items.clone(),
            grace_secs: args.grace_secs,
            // A login that may not show messages cannot show a QR code.
            can_enroll: flags & PAM_SILENT == 0 && !args.noenroll,
            combined: false,
        };
        match ask_preflight(pam, &client, request) {
            Ok(answer) => match preflight_outcome(&answer) {
                Ok(ask) => want = ask,
                Err(outcome) => return outcome,
            },
            Err(outcome) => return outcome,
        }
    }
    // No connection is open while the user types.
    let mut code = match (&want, user) {
        (Ask::Code, _) => read_code(pam, &args.prompt, args.echo),
        (Ask::Mailed(masked), _) => read_code(pam, &mailed_prompt(masked), args.echo),
        (Ask::Enroll(offer), Some(user)) => {
            return enroll::at_login(pam, &client, user, &items, offer, args.echo)
        }
        (Ask::Enroll(_), None) => return Outcome::Unavailable,
    };
    if matches!(want, Ask::Code)
        && code
            .as_ref()
            .is_some_and(|c| c.expose().trim().eq_ignore_ascii_case(EMAIL_WORD))
    {
        let Some(user) = user else {
            // Names no account can have: the same answer as a user without an address.
            return Outcome::Rejected;
        };
        match ask_email(pam, &client, user, &items) {
            Ok(masked) => code = read_code(pam, &mailed_prompt(&masked), args.echo),
            Err(outcome) => return after_prompt(outcome),
        }
    }
    let Some(code) = code else {
        return Outcome::ConversationFailed;
    };
    let Some(user) = user else {
        return Outcome::Rejected;
    };
    let request = RequestBody::Verify {
        user: user.to_string(),
        code,
        pam: items,
        grace_secs: args.grace_secs,
    };
    after_prompt(match ask(pam, &client, request) {
        Ok(answer) => final_outcome(&answer),
        Err(outcome) => outcome,
    })
}

/// `pam_sm_authenticate`.
pub fn authenticate(pam: &mut impl Pam, raw_args: &[&CStr], flags: u32) -> PamCode {
    let args = match args::parse(raw_args) {
        Ok(a) => a,
        Err(e) => {
            pam.log(LogLevel::Error, &format!("refusing to run: {e}"));
            return PamCode::ServiceErr;
        }
    };
    let user = match pam.user() {
        Ok(raw) => valid_user(raw),
        Err(UserError::Conversation) => return PamCode::ConvErr,
        Err(UserError::Other) => {
            pam.log(LogLevel::Error, "cannot get the user name from PAM");
            return PamCode::ServiceErr;
        }
    };
    let outcome = match args.pass {
        Some(mode) => combined::login(pam, &args, mode, user.as_deref()),
        None => login(pam, &args, user.as_deref(), flags),
    };
    if args.debug {
        let who = user
            .as_deref()
            .map_or("(invalid name)".into(), text::printable);
        pam.log(
            LogLevel::Debug,
            &format!("user={who} outcome={}", outcome.name()),
        );
    }
    let (code, mut message) = outcome.result();
    if args.pass.is_some() && outcome == Outcome::Rejected {
        // A wrong code in a one-answer login looks like a wrong password.
        message = None;
    }
    match message {
        Some(Message::Info(m)) if flags & PAM_SILENT == 0 => pam.info(&text::printable(&m)),
        Some(Message::Error(m)) => pam.error(&text::printable(&m)),
        _ => {}
    }
    code
}

#[cfg(test)]
mod tests;
