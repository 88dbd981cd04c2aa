//! HOTP (RFC 4226) and TOTP (RFC 6238).

use crate::secret::Secret;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use std::fmt;
use subtle::ConstantTimeEq;

/// The HMAC hash of an OTP credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Algorithm {
    #[default]
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The name used in otpauth URIs and in the database.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }

    /// Accepts `SHA1`, `sha-256`, … as apps and RFC texts spell them.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_uppercase().replace('-', "").as_str() {
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            "SHA512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether codes follow the clock (TOTP, RFC 6238) or a counter the token advances at each
/// code (HOTP, RFC 4226: key fobs, a YubiKey's OATH-HOTP slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OtpKind {
    #[default]
    Totp,
    Hotp,
}

impl OtpKind {
    /// The name used in otpauth URIs, seed files and the database.
    pub fn name(self) -> &'static str {
        match self {
            OtpKind::Totp => "totp",
            OtpKind::Hotp => "hotp",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "totp" => Some(OtpKind::Totp),
            "hotp" => Some(OtpKind::Hotp),
            _ => None,
        }
    }
}

impl fmt::Display for OtpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub const MIN_DIGITS: u32 = 6;
pub const MAX_DIGITS: u32 = 8;
pub const DEFAULT_PERIOD: u64 = 30;

/// Everything besides the secret that defines a TOTP credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpParams {
    pub algorithm: Algorithm,
    pub digits: u32,
    pub period: u64,
}

impl Default for TotpParams {
    /// What every common authenticator app reads: SHA-1, 6 digits, 30 s.
    fn default() -> Self {
        TotpParams {
            algorithm: Algorithm::Sha1,
            digits: 6,
            period: DEFAULT_PERIOD,
        }
    }
}

impl TotpParams {
    /// Checks the ranges twofold supports: 6–8 digits, a period of 1 s to 1 h.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&self.digits) {
            return Err(format!(
                "digits must be {MIN_DIGITS} to {MAX_DIGITS}, not {}",
                self.digits
            ));
        }
        if !(1..=3600).contains(&self.period) {
            return Err(format!(
                "period must be 1 to 3600 seconds, not {}",
                self.period
            ));
        }
        Ok(())
    }

    /// The time step containing `unix_time`.
    pub fn step(&self, unix_time: u64) -> u64 {
        unix_time / self.period.max(1)
    }
}

fn mac_bytes(algorithm: Algorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    // new_from_slice accepts keys of any length for HMAC; the error arm is unreachable but
    // handled so that nothing here can panic.
    match algorithm {
        Algorithm::Sha1 => match Hmac::<sha1::Sha1>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(message);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        },
        Algorithm::Sha256 => match Hmac::<sha2::Sha256>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(message);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        },
        Algorithm::Sha512 => match Hmac::<sha2::Sha512>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(message);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        },
    }
}

/// HOTP value (RFC 4226 §5.3) for `counter`, truncated to `digits` (clamped to 6..=8).
pub fn hotp(secret: &Secret, counter: u64, digits: u32, algorithm: Algorithm) -> u32 {
    let digits = digits.clamp(MIN_DIGITS, MAX_DIGITS);
    let mac = mac_bytes(algorithm, secret.as_bytes(), &counter.to_be_bytes());
    let Some(last) = mac.last() else { return 0 };
    let offset = usize::from(last & 0x0f);
    let Some(chunk) = mac.get(offset..offset + 4) else {
        return 0;
    };
    let binary = u32::from_be_bytes([chunk[0] & 0x7f, chunk[1], chunk[2], chunk[3]]);
    binary % 10u32.pow(digits)
}

/// The code as the user sees it, zero-padded to `digits`.
pub fn format_code(value: u32, digits: u32) -> String {
    format!("{value:0width$}", width = digits as usize)
}

/// TOTP code for time step `step`.
pub fn totp_for_step(secret: &Secret, params: &TotpParams, step: u64) -> String {
    format_code(
        hotp(secret, step, params.digits, params.algorithm),
        params.digits,
    )
}

/// TOTP code at `unix_time` (RFC 6238 with T0 = 0).
pub fn totp_at(secret: &Secret, params: &TotpParams, unix_time: u64) -> String {
    totp_for_step(secret, params, params.step(unix_time))
}

/// Normalises a typed OTP: spaces and hyphens dropped. Returns `None` unless what is left is
/// exactly `digits` ASCII digits.
pub fn normalize_code(input: &str, digits: u32) -> Option<String> {
    let code: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    (code.len() == digits as usize && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

/// Every step in `[now_step - window, now_step + window]` whose code equals `code`, compared
/// in constant time and without stopping at the first match.
pub fn matching_steps(
    secret: &Secret,
    params: &TotpParams,
    code: &str,
    now_step: u64,
    window: u32,
) -> Vec<u64> {
    let first = now_step.saturating_sub(u64::from(window));
    let last = now_step.saturating_add(u64::from(window));
    let mut found = Vec::new();
    for step in first..=last {
        let candidate = totp_for_step(secret, params, step);
        if bool::from(candidate.as_bytes().ct_eq(code.as_bytes())) {
            found.push(step);
        }
    }
    found
}

/// The first counter in `first .. first + count` whose HOTP code equals `code`. Every counter
/// is computed and compared in constant time, whatever matches.
pub fn matching_counter(
    secret: &Secret,
    params: &TotpParams,
    code: &str,
    first: u64,
    count: u32,
) -> Option<u64> {
    let mut found = None;
    for counter in (0..u64::from(count)).filter_map(|i| first.checked_add(i)) {
        let candidate = format_code(
            hotp(secret, counter, params.digits, params.algorithm),
            params.digits,
        );
        let hit = bool::from(candidate.as_bytes().ct_eq(code.as_bytes()));
        if hit && found.is_none() {
            found = Some(counter);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOTP_VECTORS: &str = include_str!("../testdata/rfc4226_hotp.tsv");
    const TOTP_VECTORS: &str = include_str!("../testdata/rfc6238_totp.tsv");

    fn rows(text: &str) -> Vec<Vec<&str>> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .skip(1) // header
            .map(|l| l.split('\t').collect())
            .collect()
    }

    #[test]
    fn rfc4226_vectors() {
        let secret = Secret::from_bytes(b"12345678901234567890".to_vec());
        let vectors = rows(HOTP_VECTORS);
        assert_eq!(vectors.len(), 10);
        for row in vectors {
            let counter: u64 = row[0].parse().unwrap();
            let value = hotp(&secret, counter, 6, Algorithm::Sha1);
            assert_eq!(format_code(value, 6), row[1], "counter {counter}");
        }
    }

    #[test]
    fn hotp_look_ahead_finds_the_first_counter_within_the_window() {
        let secret = Secret::from_bytes(b"12345678901234567890".to_vec());
        let p = TotpParams::default();
        // RFC 4226 appendix D: counter 3 is 969429, counter 7 is 162583.
        assert_eq!(matching_counter(&secret, &p, "969429", 0, 10), Some(3));
        assert_eq!(matching_counter(&secret, &p, "969429", 3, 1), Some(3));
        assert_eq!(matching_counter(&secret, &p, "969429", 4, 10), None);
        assert_eq!(matching_counter(&secret, &p, "162583", 0, 7), None);
        assert_eq!(matching_counter(&secret, &p, "162583", 0, 8), Some(7));
        assert_eq!(matching_counter(&secret, &p, "162583", u64::MAX, 10), None);
        assert_eq!(OtpKind::parse("HOTP"), Some(OtpKind::Hotp));
        assert_eq!(OtpKind::parse("totp"), Some(OtpKind::Totp));
        assert_eq!(OtpKind::parse("motp"), None);
    }

    #[test]
    fn rfc6238_vectors() {
        let vectors = rows(TOTP_VECTORS);
        assert_eq!(vectors.len(), 18);
        for row in vectors {
            let time: u64 = row[0].parse().unwrap();
            let algorithm = Algorithm::parse(row[1]).unwrap();
            let key: &[u8] = match algorithm {
                Algorithm::Sha1 => b"12345678901234567890",
                Algorithm::Sha256 => b"12345678901234567890123456789012",
                Algorithm::Sha512 => {
                    b"1234567890123456789012345678901234567890123456789012345678901234"
                }
            };
            let secret = Secret::from_bytes(key.to_vec());
            let params = TotpParams {
                algorithm,
                digits: 8,
                period: 30,
            };
            assert_eq!(
                totp_at(&secret, &params, time),
                row[2],
                "{time} {algorithm}"
            );
        }
    }

    #[test]
    fn seven_digits_and_large_counters() {
        let secret = Secret::from_bytes(b"12345678901234567890".to_vec());
        // 7 digits is the 8-digit value mod 10^7.
        let eight = hotp(&secret, u64::MAX, 8, Algorithm::Sha1);
        let seven = hotp(&secret, u64::MAX, 7, Algorithm::Sha1);
        assert_eq!(eight % 10_000_000, seven);
        // Digits outside 6..=8 are clamped rather than panicking on 10^digits overflow.
        assert!(hotp(&secret, 1, 99, Algorithm::Sha512) < 100_000_000);
    }

    #[test]
    fn window_edges() {
        let secret = Secret::from_bytes(b"12345678901234567890".to_vec());
        let p = TotpParams::default();
        let now = 1_000_000u64;
        for (offset, expect) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let step = now.checked_add_signed(offset).unwrap();
            let code = totp_for_step(&secret, &p, step);
            let hits = matching_steps(&secret, &p, &code, now, 1);
            assert_eq!(hits.contains(&step), expect, "offset {offset}");
        }
        // window 0: only the current step
        let code = totp_for_step(&secret, &p, now - 1);
        assert!(!matching_steps(&secret, &p, &code, now, 0).contains(&(now - 1)));
        // step 0 does not underflow
        let code = totp_for_step(&secret, &p, 0);
        assert_eq!(matching_steps(&secret, &p, &code, 0, 3), vec![0]);
    }

    #[test]
    fn code_normalisation() {
        assert_eq!(normalize_code("123 456", 6).as_deref(), Some("123456"));
        assert_eq!(normalize_code("123-456", 6).as_deref(), Some("123456"));
        assert_eq!(normalize_code("12345", 6), None);
        assert_eq!(normalize_code("12345a", 6), None);
        assert_eq!(normalize_code("１２３４５６", 6), None); // full-width digits are not ASCII
    }

    #[test]
    fn params_validation() {
        assert!(TotpParams::default().validate().is_ok());
        assert!(TotpParams {
            digits: 9,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(TotpParams {
            period: 0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
