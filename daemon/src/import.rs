//! Taking over enrollments made with google-authenticator-libpam, so that users keep their
//! phones: the `~/.google_authenticator` file format, parsed strictly.
//!
//! ```text
//! BASE32SECRET
//! " RATE_LIMIT 3 30
//! " WINDOW_SIZE 3
//! " DISALLOW_REUSE 57852137 57852138
//! " TOTP_AUTH       (or, for a counter-based token: " HOTP_COUNTER 1, the next counter)
//! " STEP_SIZE 30
//! 37810052          (scratch codes: 8 digits each)
//! ```

use twofold_shared::otp::{TotpParams, DEFAULT_PERIOD};
use twofold_shared::secret::{Secret, SecretError, MIN_SECRET_BYTES};

use crate::config::MAX_WINDOW;

#[derive(Debug)]
pub struct GoogleAuthenticatorFile {
    pub secret: Secret,
    pub params: TotpParams,
    /// Steps either side of now, from WINDOW_SIZE (codes valid at once = 2 × window + 1).
    pub window: Option<u32>,
    /// Scratch codes, which become backup codes.
    pub scratch: Vec<zeroize::Zeroizing<String>>,
    /// The highest time step already used, from DISALLOW_REUSE: codes up to it stay spent.
    pub last_used_step: Option<u64>,
    /// A counter-based (HOTP) file: the counter of the next code. `None`: time-based.
    pub counter: Option<u64>,
    /// What was read but has no equivalent, for the administrator.
    pub notes: Vec<String>,
}

/// Parses the file's text. Errors name the line and the problem, never a secret or a code.
pub fn parse_google_authenticator(text: &str) -> Result<GoogleAuthenticatorFile, String> {
    let mut lines = text.lines().enumerate();
    let Some((_, first)) = lines.next().filter(|(_, l)| !l.trim().is_empty()) else {
        return Err("the file is empty".into());
    };
    let secret = Secret::from_base32(first.trim()).map_err(|e| match e {
        SecretError::TooShort(bits) => format!(
            "line 1: the key has {bits} bits; twofold refuses keys under {} bits",
            MIN_SECRET_BYTES * 8
        ),
        other => format!("line 1: {other}"),
    })?;
    let mut params = TotpParams::default();
    let mut window = None;
    let mut totp = false;
    let mut scratch = Vec::new();
    let mut last_used_step = None;
    let mut counter = None;
    let mut notes = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(option) = line.strip_prefix('"') {
            let mut words = option.split_whitespace();
            let number = |w: Option<&str>| -> Result<u64, String> {
                w.and_then(|w| w.parse().ok())
                    .ok_or(format!("line {n}: a number is missing or malformed"))
            };
            match words.next() {
                Some("TOTP_AUTH") => totp = true,
                Some("HOTP_COUNTER") => counter = Some(number(words.next())?),
                Some("STEP_SIZE") => {
                    let step = number(words.next())?;
                    if !(1..=3600).contains(&step) {
                        return Err(format!(
                            "line {n}: STEP_SIZE {step} is out of range (1 to 3600)"
                        ));
                    }
                    params.period = step;
                }
                Some("WINDOW_SIZE") => {
                    let size = number(words.next())?;
                    if size == 0 {
                        return Err(format!("line {n}: WINDOW_SIZE 0 would accept no code"));
                    }
                    let half = u32::try_from((size - 1) / 2).unwrap_or(u32::MAX);
                    if half > MAX_WINDOW {
                        notes.push(format!(
                            "WINDOW_SIZE {size} narrowed to {} codes (±{MAX_WINDOW} steps)",
                            2 * MAX_WINDOW + 1
                        ));
                    }
                    window = Some(half.min(MAX_WINDOW));
                }
                Some("DISALLOW_REUSE") => {
                    for w in words {
                        let step = number(Some(w))?;
                        last_used_step = last_used_step.max(Some(step));
                    }
                }
                Some("RATE_LIMIT") => {
                    notes.push("RATE_LIMIT not imported: twofold's own throttle applies".into())
                }
                Some(other) => {
                    return Err(format!(
                        "line {n}: unknown option {:?}",
                        other.chars().take(32).collect::<String>()
                    ))
                }
                None => return Err(format!("line {n}: an empty option line")),
            }
        } else if line.len() == 8 && line.bytes().all(|b| b.is_ascii_digit()) {
            scratch.push(zeroize::Zeroizing::new(line.to_string()));
        } else {
            return Err(format!(
                "line {n}: neither an option nor an 8-digit scratch code"
            ));
        }
    }
    match (totp, counter) {
        (false, None) => {
            return Err(
                "neither a TOTP_AUTH nor a HOTP_COUNTER line: not a google-authenticator file"
                    .into(),
            )
        }
        (true, Some(_)) => {
            return Err("both TOTP_AUTH and HOTP_COUNTER: time- or counter-based?".into())
        }
        _ => {}
    }
    if counter.is_some() && (window.is_some() || last_used_step.is_some()) {
        notes.push(
            "WINDOW_SIZE and DISALLOW_REUSE do not apply to a counter-based token: twofold looks hotp_window codes ahead".into(),
        );
        window = None;
        last_used_step = None;
    }
    if params.period != DEFAULT_PERIOD {
        notes.push(format!("codes change every {} seconds", params.period));
    }
    Ok(GoogleAuthenticatorFile {
        secret,
        params,
        window,
        scratch,
        last_used_step,
        counter,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: &str = "TBBLMNEOINI3ZWJR5NJHP5HOKU\n\" RATE_LIMIT 3 30\n\" WINDOW_SIZE 3\n\" DISALLOW_REUSE\n\" TOTP_AUTH\n37810052\n58515903\n69209167\n57965985\n29675151\n";

    #[test]
    fn the_default_file() {
        let f = parse_google_authenticator(DEFAULTS).unwrap();
        assert_eq!(f.secret.as_bytes().len(), 16);
        assert_eq!(f.params, TotpParams::default());
        assert_eq!(f.window, Some(1));
        assert_eq!(f.scratch.len(), 5);
        assert_eq!(f.scratch[0].as_str(), "37810052");
        assert_eq!(f.last_used_step, None);
        assert_eq!(f.notes.len(), 1);
    }

    #[test]
    fn a_counter_based_file() {
        let f = parse_google_authenticator(
            "4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" RATE_LIMIT 3 30\n\" WINDOW_SIZE 3\n\" HOTP_COUNTER 42\n11112222\n",
        )
        .unwrap();
        assert_eq!(f.counter, Some(42));
        assert_eq!(f.window, None);
        assert_eq!(f.scratch.len(), 1);
    }

    #[test]
    fn step_window_and_used_steps() {
        let f = parse_google_authenticator(
            "4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" WINDOW_SIZE 17\n\" STEP_SIZE 60\n\" DISALLOW_REUSE 29000001 29000003\n\" TOTP_AUTH\n",
        )
        .unwrap();
        assert_eq!(f.params.period, 60);
        assert_eq!(f.window, Some(8));
        assert_eq!(f.last_used_step, Some(29_000_003));
        assert!(f.scratch.is_empty());
        let wide = parse_google_authenticator(
            "4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" WINDOW_SIZE 99\n\" TOTP_AUTH\n",
        )
        .unwrap();
        assert_eq!(wide.window, Some(MAX_WINDOW));
    }

    #[test]
    fn refusals_name_the_line_and_never_the_content() {
        for (text, want) in [
            ("", "empty"),
            ("\n", "empty"),
            ("not base32!\n\" TOTP_AUTH\n", "line 1"),
            ("JBSWY3DPEHPK3PXP\n\" TOTP_AUTH\n", "80 bits"),
            (
                "4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" HOTP_COUNTER 1\n\" TOTP_AUTH\n",
                "both",
            ),
            ("4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" HOTP_COUNTER x\n", "line 2"),
            ("4JZ5HSY5CTMVUR6GNXOGOFGYQA\n12345678\n", "neither"),
            (
                "4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" TOTP_AUTH\n1234567\n",
                "line 3",
            ),
            (
                "4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" TOTP_AUTH\nsecret-ish-line\n",
                "line 3",
            ),
            (
                "4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" STEP_SIZE 0\n\" TOTP_AUTH\n",
                "STEP_SIZE 0",
            ),
            (
                "4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" WINDOW_SIZE x\n\" TOTP_AUTH\n",
                "line 2",
            ),
            (
                "4JZ5HSY5CTMVUR6GNXOGOFGYQA\n\" FROBNICATE\n\" TOTP_AUTH\n",
                "unknown option",
            ),
        ] {
            let err = parse_google_authenticator(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(
                !err.contains("4JZ5") && !err.contains("12345678") && !err.contains("secret-ish"),
                "{err}"
            );
        }
    }
}
