//! One answer for password and code (module arguments `forward_pass`, `use_first_pass`,
//! `try_first_pass`), for services that ask a single question: IMAP and POP servers,
//! OpenVPN's PAM plugin. The code is split off the answer and checked; the password goes on to
//! the next module as PAM_AUTHTOK (`pam_unix.so use_first_pass`). The daemon never sees it.

use crate::args::{Args, PassMode};
use crate::auth::{self, LogLevel, Outcome, Pam};
use crate::text;
use twofold_shared::wire::{RequestBody, ResponseBody, SecretText};

/// The length of a mailed code (`email_auto`).
const MAILED_DIGITS: usize = 6;

/// Whether `word` is written as a code in groups of four letters or digits joined by hyphens,
/// as backup codes (`abcd-efgh-ijkl-mnop`), scratch codes (`1234-5678`) and helpdesk codes
/// are shown. A password's last word with a TOTP code typed after it never has that shape
/// (its last group is longer), so the two cannot be confused. Only the shape: the daemon
/// decides.
fn grouped_code(word: &str) -> bool {
    let mut groups = 0;
    for group in word.split('-') {
        if group.len() != 4 || !group.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return false;
        }
        groups += 1;
    }
    groups >= 2
}

/// Splits one answer into password and code: a code in hyphenated groups after the last space
/// (a backup, scratch or helpdesk code), or else the last `digits` characters when they are
/// digits. An answer with neither has an empty code (which the daemon counts as a wrong one).
pub fn split(answer: &str, digits: usize) -> (SecretText, SecretText) {
    if let Some((password, last)) = answer.rsplit_once(' ') {
        if grouped_code(last) {
            return (SecretText::new(password), SecretText::new(last));
        }
    }
    let cut = answer.len().wrapping_sub(digits);
    if answer.len() >= digits && answer.as_bytes()[cut..].iter().all(u8::is_ascii_digit) {
        // The tail is ASCII, so `cut` falls on a character boundary.
        return (
            SecretText::new(&answer[..cut]),
            SecretText::new(&answer[cut..]),
        );
    }
    (SecretText::new(answer), SecretText::new(""))
}

/// What the preflight left to do.
enum Next {
    /// Split the answer: the code has this many digits.
    Split(usize),
    /// No code applies (not enrolled and let through, two-factor off): the whole answer is the
    /// password and the stack decides.
    PasswordOnly,
}

fn preflight(pam: &mut impl Pam, args: &Args, user: &str) -> Result<(Next, String), Outcome> {
    let request = RequestBody::Preflight {
        user: user.to_string(),
        pam: auth::pam_items(pam),
        grace_secs: 0,
        can_enroll: false,
        combined: true,
    };
    let client = auth::client(args);
    let question = args.question().to_string();
    match auth::ask(pam, &client, request)? {
        ResponseBody::PromptCombined { digits } => Ok((Next::Split(digits.into()), question)),
        ResponseBody::EmailSent { masked } => Ok((
            Next::Split(MAILED_DIGITS),
            format!(
                "Password and the code sent to {}: ",
                text::printable(&masked)
            ),
        )),
        // No acceptance before the code, no enrollment in a one-answer login, no plain
        // prompt (whose length of code is unknown): fail closed.
        ResponseBody::Accepted { .. } | ResponseBody::Prompt | ResponseBody::EnrollAtLogin(_) => {
            pam.log(
                LogLevel::Error,
                "twofoldd answered a one-answer preflight unexpectedly",
            );
            Err(Outcome::Unavailable)
        }
        other => match auth::final_outcome(&other) {
            Outcome::NotApplicable => Ok((Next::PasswordOnly, question)),
            outcome => Err(outcome),
        },
    }
}

/// The answer: asked for, or the PAM_AUTHTOK already set, as the mode says.
fn answer(pam: &mut impl Pam, mode: PassMode, question: &str) -> Result<SecretText, Outcome> {
    let earlier = match mode {
        PassMode::Forward => None,
        PassMode::UseFirst | PassMode::TryFirst => pam.authtok(),
    };
    match (earlier, mode) {
        (Some(tok), _) => Ok(tok),
        (None, PassMode::UseFirst) => {
            pam.log(
                LogLevel::Error,
                "use_first_pass: no password (PAM_AUTHTOK) from an earlier module",
            );
            Err(Outcome::Misconfigured)
        }
        (None, _) => match pam.prompt(question, false) {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) | Err(_) => Err(Outcome::ConversationFailed),
        },
    }
}

fn hand_on(pam: &mut impl Pam, password: &SecretText) -> Result<(), Outcome> {
    if pam.set_authtok(password) {
        return Ok(());
    }
    pam.log(LogLevel::Error, "libpam refused to set PAM_AUTHTOK");
    Err(Outcome::Misconfigured)
}

/// A one-answer login. A wrong code ends like a wrong password: the password still goes on,
/// and the refusal says nothing of which part was wrong.
pub(crate) fn login(
    pam: &mut impl Pam,
    args: &Args,
    mode: PassMode,
    user: Option<&str>,
) -> Outcome {
    let (next, question) = match user {
        Some(user) => match preflight(pam, args, user) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        },
        // A name no account can have: asked and refused like an unknown one.
        None => (Next::Split(MAILED_DIGITS), args.question().to_string()),
    };
    let answer = match answer(pam, mode, &question) {
        Ok(answer) => answer,
        Err(outcome) => return outcome,
    };
    let digits = match next {
        Next::Split(digits) => digits,
        Next::PasswordOnly => {
            return hand_on(pam, &answer).map_or_else(|o| o, |()| Outcome::NotApplicable)
        }
    };
    let (password, code) = split(answer.expose(), digits);
    drop(answer);
    if let Err(outcome) = hand_on(pam, &password) {
        return outcome;
    }
    let Some(user) = user else {
        return Outcome::Rejected;
    };
    let request = RequestBody::Verify {
        user: user.to_string(),
        code: auth::bounded_code(code),
        pam: auth::pam_items(pam),
        grace_secs: 0,
    };
    let client = auth::client(args);
    auth::after_prompt(match auth::ask(pam, &client, request) {
        Ok(answer) => auth::final_outcome(&answer),
        Err(outcome) => outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(answer: &str, digits: usize) -> (String, String) {
        let (p, c) = split(answer, digits);
        (p.expose().to_string(), c.expose().to_string())
    }

    #[test]
    fn splits_password_and_code() {
        let pc = |p: &str, c: &str| (p.to_string(), c.to_string());
        assert_eq!(parts("hunter2492039", 6), pc("hunter2", "492039"));
        assert_eq!(parts("hunter249203917", 8), pc("hunter2", "49203917"));
        // A password of digits, and spaces inside the password.
        assert_eq!(parts("123456789012", 6), pc("123456", "789012"));
        assert_eq!(parts("my pass 492039", 6), pc("my pass ", "492039"));
        // A backup code after a space, in its groups; a scratch code; a helpdesk code.
        assert_eq!(
            parts("my pass abcd-efgh-ijkl-mnop", 6),
            pc("my pass", "abcd-efgh-ijkl-mnop")
        );
        assert_eq!(parts("pw 1111-2222", 6), pc("pw", "1111-2222"));
        assert_eq!(
            parts("pw 1234-5678-9012-3456-7890", 6),
            pc("pw", "1234-5678-9012-3456-7890")
        );
        // Passwords whose last word ends in digits or looks like a code without its
        // hyphens: the TOTP code is still the last digits (found by review).
        assert_eq!(parts("Winter 24492039", 6), pc("Winter 24", "492039"));
        assert_eq!(
            parts("let me in please1234492039", 6),
            pc("let me in please1234", "492039")
        );
        assert_eq!(
            parts("pw ab-cd-ef-gh-ij492039", 6),
            pc("pw ab-cd-ef-gh-ij", "492039")
        );
        assert_eq!(
            parts("pw abcdefghijklmnop", 6),
            pc("pw abcdefghijklmnop", "")
        );
        assert_eq!(parts("pw 11112222", 6), pc("pw 11", "112222"));
        assert_eq!(parts("pw 11112222", 8), pc("pw ", "11112222"));
        assert_eq!(parts("pw abcd-efgh-", 6), pc("pw abcd-efgh-", ""));
        // No code: all of it is the password, the code is empty.
        assert_eq!(parts("hunter2", 6), pc("hunter2", ""));
        assert_eq!(parts("", 6), pc("", ""));
        assert_eq!(parts("12345", 6), pc("12345", ""));
        assert_eq!(parts("pässwörd492039", 6), pc("pässwörd", "492039"));
        assert_eq!(parts("pässwörd", 6), pc("pässwörd", ""));
    }
}
