//! Codes from the command line, standard input or the terminal (never echoed into argv when
//! asked for interactively).

use super::*;

/// A code given on the command line, or `-` to read one line from standard input (which
/// keeps it out of the process list).
pub(super) fn read_code_arg(arg: &str) -> Option<SecretText> {
    if arg != "-" {
        return Some(SecretText::new(arg));
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 => Some(SecretText::new(line.trim())),
        _ => None,
    }
}

/// Sends a request that may need a current code; asks for one on the terminal when the
/// daemon says it is required and none was given.
pub(super) fn with_code(
    ctx: &Ctx,
    code: Option<SecretText>,
    make: impl Fn(Option<SecretText>) -> RequestBody,
    done: impl Fn(&Ctx, ResponseBody) -> u8,
) -> u8 {
    let first = match ctx.call(make(code.clone())) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match first {
        ResponseBody::Error {
            kind: ErrorKind::CodeRequired,
            ..
        } if code.is_none() && std::io::stdin().is_terminal() => {
            let Some(code) = prompt("Current verification code (or a backup code): ") else {
                return exit::ERROR;
            };
            match ctx.call(make(Some(code))) {
                Ok(r) => done(ctx, r),
                Err(e) => e,
            }
        }
        other => done(ctx, other),
    }
}

pub(super) fn prompt(text: &str) -> Option<SecretText> {
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let mut line = zeroize::Zeroizing::new(String::new());
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 => Some(SecretText::new(line.trim())),
        _ => None,
    }
}

pub(super) const NO_CODE: &str = "no code on standard input";

pub(super) fn with_code_enroll(
    ctx: &Ctx,
    user: &Option<String>,
    force: bool,
    code: Option<SecretText>,
    params: Option<TotpParams>,
    authenticator: &Option<String>,
) -> Result<ResponseBody, u8> {
    let first = ctx.call(RequestBody::Enroll {
        user: user.clone(),
        force,
        code: code.clone(),
        params,
        authenticator: authenticator.clone(),
    })?;
    match first {
        ResponseBody::Error {
            kind: ErrorKind::CodeRequired,
            message,
        } if code.is_none() && std::io::stdin().is_terminal() => {
            let ask = if message.contains("mailed to") {
                eprintln!("{message}");
                "Mailed code: "
            } else {
                "This changes your second factor. Current code (or a backup code): "
            };
            let code = prompt(ask).ok_or(exit::ERROR)?;
            ctx.call(RequestBody::Enroll {
                user: user.clone(),
                force,
                code: Some(code),
                params,
                authenticator: authenticator.clone(),
            })
        }
        other => Ok(other),
    }
}

/// An optional `--code` (`-`: read from standard input); `Err` is the exit status.
pub(super) fn code_arg(ctx: &Ctx, code: Option<String>) -> Result<Option<SecretText>, u8> {
    match code {
        None => Ok(None),
        Some(c) => read_code_arg(&c).map(Some).ok_or_else(|| ctx.fail(NO_CODE)),
    }
}

/// `twofold resync`'s two codes: as given, or two lines of standard input.
pub(super) fn resync_codes(given: Vec<String>) -> Option<[SecretText; 2]> {
    let lines: Vec<String> = match given.len() {
        2 => given,
        0 => {
            let mut lines = Vec::new();
            for _ in 0..2 {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).ok()?;
                lines.push(line.trim().to_string());
            }
            lines
        }
        _ => return None,
    };
    let [first, second]: [String; 2] = lines.try_into().ok()?;
    (!first.is_empty() && !second.is_empty())
        .then(|| [SecretText::new(first), SecretText::new(second)])
}
