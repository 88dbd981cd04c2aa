//! Enrollment in the login's own conversation (ARCHITECTURE.md §12): twofoldd offered it at
//! the preflight (an invited account without a factor); the module shows the QR code, the
//! key and the label, asks for the first code (three tries), and shows the backup codes.

use crate::auth::{after_prompt, ask, final_outcome, read_code, Outcome, Pam};
use crate::text;
use twofold_shared::client::Client;
use twofold_shared::display;
use twofold_shared::wire::{LoginEnrollment, PamItems, RequestBody, ResponseBody, SecretText};

/// First codes one login may try.
pub const TRIES: u32 = 3;
/// Typed at the first-code prompt: the QR code is shown again in the other polarity (for a
/// terminal with dark text on a light background). Not a try.
pub const INVERT_WORD: &str = "invert";
pub const MSG_WRONG_FIRST_CODE: &str =
    "That code is not right. Check that the phone's time is set automatically, then try the next code.";
pub const MSG_NOT_CONFIRMED: &str =
    "Two-factor enrollment not confirmed; log in again to try again.";
pub const ACK_PROMPT: &str = "Press Enter once the backup codes are stored: ";

fn first_code_prompt(digits: u32) -> String {
    format!("{digits}-digit code from the app (or '{INVERT_WORD}' if the QR code won't scan): ")
}

/// Each line as its own message: no control characters, and well inside any application's
/// limit on one message.
fn show(pam: &mut impl Pam, lines: impl IntoIterator<Item = impl AsRef<str>>) {
    for line in lines {
        pam.info(&text::printable(line.as_ref()));
    }
}

fn show_qr(pam: &mut impl Pam, qr: &SecretText) {
    show(pam, qr.expose().lines());
}

pub fn at_login(
    pam: &mut impl Pam,
    client: &Client,
    user: &str,
    items: &PamItems,
    offer: &LoginEnrollment,
    echo: bool,
) -> Outcome {
    let info = &offer.info;
    show(
        pam,
        [
            "Two-factor authentication must be set up for this account now.",
            display::SCAN,
        ],
    );
    show_qr(pam, &offer.qr);
    show(
        pam,
        display::key_lines(
            &info.label,
            info.secret.expose(),
            info.algorithm,
            info.digits,
            info.period,
        ),
    );
    let prompt = first_code_prompt(info.digits);
    let mut inverted = false;
    let mut tries = 0;
    // A bound on prompts too: "invert" does not count as a try.
    for _ in 0..TRIES * 3 {
        let Some(code) = read_code(pam, &prompt, echo) else {
            return Outcome::ConversationFailed;
        };
        if code.expose().trim().eq_ignore_ascii_case(INVERT_WORD) {
            inverted = !inverted;
            show_qr(
                pam,
                if inverted {
                    &offer.qr_inverted
                } else {
                    &offer.qr
                },
            );
            continue;
        }
        tries += 1;
        let request = RequestBody::ConfirmLogin {
            user: user.to_string(),
            code,
            pam: items.clone(),
        };
        match ask(pam, client, request) {
            Ok(ResponseBody::EnrolledAtLogin { codes }) => {
                show(pam, ["Two-factor authentication is now active.", ""]);
                show(pam, display::BACKUP_ADVICE);
                show(pam, display::backup_code_lines(&codes));
                // The answer does not matter; asking makes every client show the codes
                // before the session starts.
                let _ = pam.prompt(ACK_PROMPT, true);
                return Outcome::Enrolled;
            }
            Ok(ResponseBody::Rejected) if tries < TRIES => pam.error(MSG_WRONG_FIRST_CODE),
            Ok(ResponseBody::Rejected) => break,
            // The old factor of a --replace invitation, a throttle, a revoked invitation.
            Ok(other) => return after_prompt(final_outcome(&other)),
            Err(outcome) => return outcome,
        }
    }
    Outcome::EnrollmentNotConfirmed
}
