//! The module's arguments from the PAM stack line (ARCHITECTURE.md §4).

use std::ffi::CStr;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_TIMEOUT_SECS: u64 = twofold_shared::wire::PAM_TIMEOUT_SECS;
pub const MAX_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_PROMPT: &str = "Verification code: ";
/// The question of a login that takes password and code in one answer.
pub const DEFAULT_PASSWORD_PROMPT: &str = "Password: ";

/// Where a one-answer login (password and code together) gets its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassMode {
    /// `forward_pass`: ask the one question; the password goes on as PAM_AUTHTOK.
    Forward,
    /// `use_first_pass`: the answer is the PAM_AUTHTOK an earlier module (or the application)
    /// set; none is a refusal.
    UseFirst,
    /// `try_first_pass`: that PAM_AUTHTOK, or ask when there is none.
    TryFirst,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub socket: PathBuf,
    pub timeout: Duration,
    pub prompt: String,
    /// Show the code while it is typed.
    pub echo: bool,
    /// Log each login's outcome (never the code).
    pub debug: bool,
    /// A uid besides root trusted to serve the socket.
    pub daemon_uid: Option<u32>,
    /// "Remember this device": seconds after a successful code during which the same user,
    /// service and remote host (or tty) is not asked again; 0 = off.
    pub grace_secs: u64,
    /// This service cannot show a QR code (a prompt-only application): an account invited to
    /// enroll is refused with the reason instead of being shown the enrollment.
    pub noenroll: bool,
    /// Password and code in one answer; `None`: the code is asked for alone.
    pub pass: Option<PassMode>,
    /// `prompt=` was given.
    pub prompt_set: bool,
}

impl Args {
    /// The question asked: `prompt=`, or the one the login mode asks by default.
    pub fn question(&self) -> &str {
        match (self.pass, self.prompt_set) {
            (Some(_), false) => DEFAULT_PASSWORD_PROMPT,
            _ => &self.prompt,
        }
    }
}

impl Default for Args {
    fn default() -> Self {
        Args {
            socket: PathBuf::from(twofold_shared::DEFAULT_SOCKET),
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            prompt: DEFAULT_PROMPT.to_string(),
            echo: false,
            debug: false,
            daemon_uid: None,
            grace_secs: 0,
            noenroll: false,
            pass: None,
            prompt_set: false,
        }
    }
}

/// Why the stack line's arguments were refused. The text goes to the log, never to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    Unknown(String),
    BadValue(String),
    NotUtf8,
    UnclosedBracket,
    /// Two arguments that cannot go together.
    Conflict(&'static str),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Unknown(a) => write!(f, "unknown argument '{}'", crate::text::printable(a)),
            ArgError::BadValue(a) => write!(f, "bad value in '{}'", crate::text::printable(a)),
            ArgError::NotUtf8 => f.write_str("an argument is not valid UTF-8"),
            ArgError::UnclosedBracket => f.write_str("an argument opens '[' without closing ']'"),
            ArgError::Conflict(why) => f.write_str(why),
        }
    }
}

/// Joins bracketed arguments: libpam hands `[prompt=Your code: ]` over as one argument with its
/// brackets kept or removed depending on the version, and an application splitting on spaces
/// would hand over `[prompt=Your`, `code:`, `]`. `\]` inside brackets stands for `]`.
fn join_brackets(raw: &[&str]) -> Result<Vec<String>, ArgError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut open: Option<String> = None;
    for &arg in raw {
        let current = match open.take() {
            Some(mut acc) => {
                acc.push(' ');
                acc.push_str(arg);
                acc
            }
            None if arg.starts_with('[') => arg.to_string(),
            None => {
                out.push(arg.to_string());
                continue;
            }
        };
        if current.ends_with(']') && !current.ends_with("\\]") {
            let inner = current
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or_default();
            out.push(inner.replace("\\]", "]"));
        } else {
            open = Some(current);
        }
    }
    match open {
        Some(_) => Err(ArgError::UnclosedBracket),
        None => Ok(out),
    }
}

/// Parses the arguments of the stack line. Anything unknown or out of range is an error: a
/// misspelt option must not silently weaken the login.
pub fn parse(raw: &[&CStr]) -> Result<Args, ArgError> {
    let raw: Vec<&str> = raw
        .iter()
        .map(|a| a.to_str().map_err(|_| ArgError::NotUtf8))
        .collect::<Result<_, _>>()?;
    let mut args = Args::default();
    for arg in join_brackets(&raw)? {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (arg.as_str(), None),
        };
        let bad = || ArgError::BadValue(arg.clone());
        match (key, value) {
            ("socket", Some(v)) if v.starts_with('/') => args.socket = PathBuf::from(v),
            ("timeout", Some(v)) => {
                let secs: u64 = v.parse().map_err(|_| bad())?;
                if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
                    return Err(bad());
                }
                args.timeout = Duration::from_secs(secs);
            }
            ("prompt", Some(v)) if !v.is_empty() => {
                args.prompt = v.to_string();
                args.prompt_set = true;
            }
            ("daemon_uid", Some(v)) => args.daemon_uid = Some(v.parse().map_err(|_| bad())?),
            ("grace", Some(v)) => {
                let secs: u64 = v.parse().map_err(|_| bad())?;
                if secs > twofold_shared::wire::MAX_GRACE_SECS {
                    return Err(bad());
                }
                args.grace_secs = secs;
            }
            ("echo", None) => args.echo = true,
            ("debug", None) => args.debug = true,
            ("noenroll", None) => args.noenroll = true,
            ("forward_pass" | "use_first_pass" | "try_first_pass", None) => {
                if args.pass.is_some() {
                    return Err(ArgError::Conflict(
                        "forward_pass, use_first_pass and try_first_pass exclude each other",
                    ));
                }
                args.pass = Some(match key {
                    "forward_pass" => PassMode::Forward,
                    "use_first_pass" => PassMode::UseFirst,
                    _ => PassMode::TryFirst,
                });
            }
            ("socket" | "prompt", Some(_)) => return Err(bad()),
            _ => return Err(ArgError::Unknown(arg.clone())),
        }
    }
    if args.pass.is_some() && args.echo {
        return Err(ArgError::Conflict(
            "echo would show the password of a one-answer login (forward_pass, use_first_pass, try_first_pass)",
        ));
    }
    if args.pass.is_some() && args.grace_secs > 0 {
        return Err(ArgError::Conflict(
            "grace= cannot go with a one-answer login (forward_pass, use_first_pass, try_first_pass): its answer always carries a code",
        ));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn parse_strs(args: &[&str]) -> Result<Args, ArgError> {
        let owned: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
        let refs: Vec<&CStr> = owned.iter().map(|c| c.as_c_str()).collect();
        parse(&refs)
    }

    #[test]
    fn defaults() {
        let a = parse_strs(&[]).unwrap();
        assert_eq!(a, Args::default());
        assert_eq!(a.socket, PathBuf::from("/run/twofold/twofold.sock"));
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert_eq!(a.prompt, "Verification code: ");
        assert!(!a.echo && !a.debug && a.daemon_uid.is_none());
    }

    #[test]
    fn every_option() {
        let a = parse_strs(&[
            "socket=/tmp/x.sock",
            "timeout=30",
            "prompt=Code:",
            "echo",
            "debug",
            "daemon_uid=1000",
            "grace=1800",
            "noenroll",
        ])
        .unwrap();
        assert!(a.noenroll);
        assert_eq!(a.grace_secs, 1800);
        assert!(parse_strs(&["grace=604801"]).is_err());
        assert!(parse_strs(&["grace=-1"]).is_err());
        assert!(parse_strs(&["grace"]).is_err());
        assert_eq!(a.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(a.timeout, Duration::from_secs(30));
        assert_eq!(a.prompt, "Code:");
        assert!(a.echo && a.debug);
        assert_eq!(a.daemon_uid, Some(1000));
    }

    #[test]
    fn bracketed_prompt() {
        // As libpam passes it (brackets kept), and with them already removed.
        assert_eq!(
            parse_strs(&["[prompt=Your code: ]"]).unwrap().prompt,
            "Your code: "
        );
        assert_eq!(
            parse_strs(&["prompt=Your code: "]).unwrap().prompt,
            "Your code: "
        );
        // Split on spaces by the caller.
        let a = parse_strs(&["[prompt=Your", "code:", "]", "echo"]).unwrap();
        assert_eq!(a.prompt, "Your code: ");
        assert!(a.echo);
        // Escaped closing bracket.
        assert_eq!(
            parse_strs(&["[prompt=[2FA\\] code: ]"]).unwrap().prompt,
            "[2FA] code: "
        );
        assert_eq!(
            parse_strs(&["[prompt=never closed"]),
            Err(ArgError::UnclosedBracket)
        );
    }

    #[test]
    fn refusals() {
        for bad in [
            "timeout=0",
            "timeout=31",
            "timeout=-1",
            "timeout=5s",
            "timeout=",
            "daemon_uid=x",
            "daemon_uid=-1",
            "socket=relative.sock",
            "socket=",
            "prompt=",
        ] {
            assert!(
                matches!(parse_strs(&[bad]), Err(ArgError::BadValue(_))),
                "{bad}"
            );
        }
        for unknown in [
            "nosuch",
            "graces=60",
            "echo=1",
            "debug=yes",
            "timeout",
            "Socket=/x",
        ] {
            assert!(
                matches!(parse_strs(&[unknown]), Err(ArgError::Unknown(_))),
                "{unknown}"
            );
        }
        let not_utf8 = CString::new(vec![b'e', 0xff]).unwrap();
        assert_eq!(parse(&[not_utf8.as_c_str()]), Err(ArgError::NotUtf8));
    }

    #[test]
    fn one_answer_modes() {
        let a = parse_strs(&["forward_pass"]).unwrap();
        assert_eq!(a.pass, Some(PassMode::Forward));
        assert_eq!(a.question(), "Password: ");
        assert_eq!(
            parse_strs(&["use_first_pass"]).unwrap().pass,
            Some(PassMode::UseFirst)
        );
        let a = parse_strs(&["try_first_pass", "[prompt=Password+code: ]"]).unwrap();
        assert_eq!(a.pass, Some(PassMode::TryFirst));
        assert_eq!(a.question(), "Password+code: ");
        assert_eq!(parse_strs(&[]).unwrap().question(), "Verification code: ");
        for conflict in [
            &["forward_pass", "use_first_pass"][..],
            &["try_first_pass", "try_first_pass"],
            &["forward_pass", "echo"],
            &["use_first_pass", "grace=60"],
        ] {
            assert!(
                matches!(parse_strs(conflict), Err(ArgError::Conflict(_))),
                "{conflict:?}"
            );
        }
        assert!(matches!(
            parse_strs(&["forward_pass=1"]),
            Err(ArgError::Unknown(_))
        ));
    }

    #[test]
    fn error_text_is_printable() {
        let e = parse_strs(&["bogus\x1b[2J"]).unwrap_err().to_string();
        assert!(!e.contains('\x1b'), "{e:?}");
        assert!(e.starts_with("unknown argument 'bogus"), "{e}");
    }
}
