//! The login's messages, encoded and decoded by hand: what `pam_twofold.so` sends (preflight,
//! verify, a mailed code, the first code of an enrollment at login) and the answers it reads.
//!
//! The wire format is [`crate::wire`]'s, unchanged: the requests are byte for byte what serde
//! writes, and an answer is read the way serde reads it, only stricter (every field known, none
//! twice). The module thereby carries no serde_json: a third of its size and of the symbols the
//! dynamic loader resolves at each login. The daemon and the CLI keep serde; tests and the fuzz
//! target `login` hold both codecs to the same messages.

use crate::json::{self, Value};
use crate::otp::Algorithm;
use crate::wire::{
    EnrollmentInfo, ErrorKind, FrameError, LoginEnrollment, Method, PamItems, RequestBody,
    ResponseBody, SecretText, PROTOCOL_VERSION,
};
use zeroize::Zeroizing;

/// A request of a login as one frame (length and JSON), in a buffer allocated once and zeroed
/// on drop. Other operations are not a login's: `None`.
pub fn encode_frame(body: &RequestBody) -> Option<Zeroizing<Vec<u8>>> {
    let (op, user, code, pam) = match body {
        RequestBody::Preflight { user, pam, .. } => ("preflight", user, None, pam),
        RequestBody::Verify {
            user, code, pam, ..
        } => ("verify", user, Some(code), pam),
        RequestBody::SendEmailCode { user, pam } => ("send_email_code", user, None, pam),
        RequestBody::ConfirmLogin { user, code, pam } => ("confirm_login", user, Some(code), pam),
        _ => return None,
    };
    let texts = [
        Some(user.as_str()),
        code.map(SecretText::expose),
        pam.service.as_deref(),
        pam.rhost.as_deref(),
        pam.tty.as_deref(),
        pam.ruser.as_deref(),
    ];
    let room = 4
        + 256
        + texts
            .iter()
            .flatten()
            .map(|t| json::max_str_len(t))
            .sum::<usize>();
    let mut out = Zeroizing::new(Vec::with_capacity(room));
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(br#"{"v":"#);
    json::write_u64(&mut out, u64::from(PROTOCOL_VERSION));
    out.extend_from_slice(br#","body":{"op":"#);
    json::write_str(&mut out, op);
    out.extend_from_slice(br#","user":"#);
    json::write_str(&mut out, user);
    if let Some(code) = code {
        out.extend_from_slice(br#","code":"#);
        json::write_str(&mut out, code.expose());
    }
    out.extend_from_slice(br#","pam":"#);
    write_pam(&mut out, pam);
    match body {
        RequestBody::Preflight {
            grace_secs,
            can_enroll,
            combined,
            ..
        } => {
            write_grace(&mut out, *grace_secs);
            if *can_enroll {
                out.extend_from_slice(br#","can_enroll":true"#);
            }
            if *combined {
                out.extend_from_slice(br#","combined":true"#);
            }
        }
        RequestBody::Verify { grace_secs, .. } => write_grace(&mut out, *grace_secs),
        _ => {}
    }
    out.extend_from_slice(b"}}");
    let len = u32::try_from(out.len() - 4).ok()?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

fn write_grace(out: &mut Vec<u8>, secs: u64) {
    out.extend_from_slice(br#","grace_secs":"#);
    json::write_u64(out, secs);
}

fn write_pam(out: &mut Vec<u8>, pam: &PamItems) {
    let item = |out: &mut Vec<u8>, key: &[u8], v: &Option<String>| {
        out.extend_from_slice(key);
        match v {
            Some(v) => json::write_str(out, v),
            None => out.extend_from_slice(b"null"),
        }
    };
    item(out, br#"{"service":"#, &pam.service);
    item(out, br#","rhost":"#, &pam.rhost);
    item(out, br#","tty":"#, &pam.tty);
    if pam.ruser.is_some() {
        item(out, br#","ruser":"#, &pam.ruser);
    }
    if let Some(session) = pam.session {
        out.extend_from_slice(br#","session":"#);
        json::write_u64(out, u64::from(session));
    }
    out.push(b'}');
}

/// How reading an answer went wrong.
#[derive(Debug)]
pub enum DecodeError {
    /// The daemon speaks another protocol version.
    Version(u32),
    Frame(FrameError),
}

/// A name from the answer (an answer's or a field's, never a value), as an error quotes it.
fn cut(name: &str) -> String {
    name.chars().take(40).collect()
}

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError::Frame(FrameError::Json(what.into()))
}

/// Reads an answer to a login's request. Answers a login never gets (a status, a list) are
/// refused like malformed ones.
pub fn decode_response(payload: &[u8]) -> Result<ResponseBody, DecodeError> {
    let top = json::parse(payload).map_err(|e| bad(e.to_string()))?;
    let mut top = Fields::of(top, "the answer")?;
    match top.take("v") {
        Some(Value::Int(v)) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(Value::Int(v)) => {
            return Err(match u32::try_from(v) {
                Ok(v) => DecodeError::Version(v),
                Err(_) => bad("unexpected value in field `v`"),
            })
        }
        Some(_) => return Err(bad("unexpected value in field `v`")),
        None => return Err(bad("missing field `v`")),
    }
    let body = top.required("body")?;
    top.finish()?;
    let mut body = Fields::of(body, "field `body`")?;
    let result = body.string("result")?;
    let answer = match result.as_str() {
        "pong" => ResponseBody::Pong {
            daemon_version: body.string("daemon_version")?,
        },
        "prompt" => ResponseBody::Prompt,
        "prompt_combined" => ResponseBody::PromptCombined {
            digits: u8::try_from(body.int("digits")?)
                .map_err(|_| bad("unexpected value in field `digits`"))?,
        },
        "email_sent" => ResponseBody::EmailSent {
            masked: body.string("masked")?,
        },
        "accepted" => ResponseBody::Accepted {
            method: method(&body.string("method")?)?,
            backup_codes_left: body.optional_u32("backup_codes_left")?,
        },
        "rejected" => ResponseBody::Rejected,
        "throttled" => ResponseBody::Throttled {
            retry_after_secs: body.int("retry_after_secs")?,
        },
        "locked" => ResponseBody::Locked,
        "not_enrolled" => ResponseBody::NotEnrolled {
            required: body.boolean("required")?,
            reason: body.optional_string("reason")?,
        },
        "disabled" => ResponseBody::Disabled,
        "enroll_at_login" => ResponseBody::EnrollAtLogin(LoginEnrollment {
            info: enrollment(body.required("info")?)?,
            qr: body.secret("qr")?,
            qr_inverted: body.secret("qr_inverted")?,
        }),
        "enrolled_at_login" => ResponseBody::EnrolledAtLogin {
            codes: body.secrets("codes")?,
        },
        "error" => ResponseBody::Error {
            kind: error_kind(&body.string("kind")?)?,
            message: body.string("message")?,
        },
        other => {
            return Err(bad(format!(
                "an answer a login does not take: `{}`",
                cut(other)
            )))
        }
    };
    body.finish()?;
    Ok(answer)
}

fn enrollment(value: Value) -> Result<EnrollmentInfo, DecodeError> {
    let mut f = Fields::of(value, "field `info`")?;
    let info = EnrollmentInfo {
        user: f.string("user")?,
        issuer: f.string("issuer")?,
        label: f.string("label")?,
        secret: f.secret("secret")?,
        otpauth_uri: f.secret("otpauth_uri")?,
        algorithm: match f.string("algorithm")?.as_str() {
            "SHA1" => Algorithm::Sha1,
            "SHA256" => Algorithm::Sha256,
            "SHA512" => Algorithm::Sha512,
            _ => return Err(bad("unknown variant in field `algorithm`")),
        },
        digits: u32::try_from(f.int("digits")?)
            .map_err(|_| bad("unexpected value in field `digits`"))?,
        period: f.int("period")?,
    };
    f.finish()?;
    Ok(info)
}

fn method(name: &str) -> Result<Method, DecodeError> {
    Ok(match name {
        "totp" => Method::Totp,
        "backup_code" => Method::BackupCode,
        "remembered" => Method::Remembered,
        "email" => Method::Email,
        "bypass" => Method::Bypass,
        _ => return Err(bad("unknown variant in field `method`")),
    })
}

fn error_kind(name: &str) -> Result<ErrorKind, DecodeError> {
    Ok(match name {
        "bad_request" => ErrorKind::BadRequest,
        "version_mismatch" => ErrorKind::VersionMismatch,
        "permission_denied" => ErrorKind::PermissionDenied,
        "code_required" => ErrorKind::CodeRequired,
        "no_pending_enrollment" => ErrorKind::NoPendingEnrollment,
        "already_enrolled" => ErrorKind::AlreadyEnrolled,
        "no_such_user" => ErrorKind::NoSuchUser,
        "busy" => ErrorKind::Busy,
        "rate_limited" => ErrorKind::RateLimited,
        "mail_failed" => ErrorKind::MailFailed,
        "storage" => ErrorKind::Storage,
        "internal" => ErrorKind::Internal,
        _ => return Err(bad("unknown variant in field `kind`")),
    })
}

/// An object's fields, taken one by one; whatever is left at the end is an unknown field.
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn of(value: Value, what: &str) -> Result<Fields, DecodeError> {
        match value {
            Value::Object(fields) => Ok(Fields(fields)),
            _ => Err(bad(format!("{what} is not an object"))),
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.swap_remove(i).1)
    }

    fn required(&mut self, key: &str) -> Result<Value, DecodeError> {
        self.take(key)
            .ok_or_else(|| bad(format!("missing field `{key}`")))
    }

    fn wrong(key: &str) -> DecodeError {
        bad(format!("unexpected value in field `{key}`"))
    }

    fn string(&mut self, key: &str) -> Result<String, DecodeError> {
        match self.required(key)? {
            Value::Str(mut s) => Ok(std::mem::take(&mut *s)),
            _ => Err(Self::wrong(key)),
        }
    }

    fn secret(&mut self, key: &str) -> Result<SecretText, DecodeError> {
        match self.required(key)? {
            Value::Str(mut s) => Ok(SecretText::new(std::mem::take(&mut *s))),
            _ => Err(Self::wrong(key)),
        }
    }

    fn secrets(&mut self, key: &str) -> Result<Vec<SecretText>, DecodeError> {
        let Value::Array(items) = self.required(key)? else {
            return Err(Self::wrong(key));
        };
        items
            .into_iter()
            .map(|item| match item {
                Value::Str(mut s) => Ok(SecretText::new(std::mem::take(&mut *s))),
                _ => Err(Self::wrong(key)),
            })
            .collect()
    }

    fn int(&mut self, key: &str) -> Result<u64, DecodeError> {
        match self.required(key)? {
            Value::Int(n) => Ok(n),
            _ => Err(Self::wrong(key)),
        }
    }

    fn boolean(&mut self, key: &str) -> Result<bool, DecodeError> {
        match self.required(key)? {
            Value::Bool(b) => Ok(b),
            _ => Err(Self::wrong(key)),
        }
    }

    fn optional_u32(&mut self, key: &str) -> Result<Option<u32>, DecodeError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Int(n)) => u32::try_from(n).map(Some).map_err(|_| Self::wrong(key)),
            Some(_) => Err(Self::wrong(key)),
        }
    }

    fn optional_string(&mut self, key: &str) -> Result<Option<String>, DecodeError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Str(mut s)) => Ok(Some(std::mem::take(&mut *s))),
            Some(_) => Err(Self::wrong(key)),
        }
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.0.first() {
            None => Ok(()),
            Some((key, _)) => Err(bad(format!("unknown field `{}`", cut(key)))),
        }
    }
}

#[cfg(test)]
mod tests;
