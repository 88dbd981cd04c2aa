//! The shared secret: bytes that never print and are zeroed when dropped.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Smallest secret accepted from an import (RFC 4226 §4 R6: at least 128 bits).
pub const MIN_SECRET_BYTES: usize = 16;
/// Size of secrets twofold generates (160 bits, RFC 4226's recommendation).
pub const GENERATED_SECRET_BYTES: usize = 20;
/// Largest secret accepted (a SHA-512 block).
pub const MAX_SECRET_BYTES: usize = 128;

/// A TOTP shared secret.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps raw bytes. Length rules are enforced by [`Secret::from_base32`] and callers that
    /// accept foreign input; generated secrets are always [`GENERATED_SECRET_BYTES`].
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parses base32 as people type it: any case, with spaces, hyphens or `=` padding.
    pub fn from_base32(text: &str) -> Result<Self, SecretError> {
        let mut clean: String = text
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '=' | '\t'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if clean.is_empty() || !clean.chars().all(|c| matches!(c, 'A'..='Z' | '2'..='7')) {
            clean.zeroize();
            return Err(SecretError::NotBase32);
        }
        let decoded = base32::decode(base32::Alphabet::Rfc4648 { padding: false }, &clean);
        clean.zeroize();
        let bytes = decoded.ok_or(SecretError::NotBase32)?;
        let secret = Secret(bytes);
        if secret.0.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(secret.0.len() * 8));
        }
        if secret.0.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLong);
        }
        Ok(secret)
    }

    /// Base32 (RFC 4648) without padding, as authenticator apps expect.
    pub fn to_base32(&self) -> String {
        base32::encode(base32::Alphabet::Rfc4648 { padding: false }, &self.0)
    }

    /// The base32 key in groups of four, for people typing it into an app.
    pub fn to_base32_grouped(&self) -> String {
        let mut b32 = self.to_base32();
        let grouped = group4(&b32);
        b32.zeroize();
        grouped
    }
}

/// `ABCDEFGH` → `ABCD EFGH`.
pub fn group4(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for (i, c) in text.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    NotBase32,
    TooShort(usize),
    TooLong,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::NotBase32 => {
                f.write_str("the key is not valid base32 (letters A-Z, digits 2-7)")
            }
            SecretError::TooShort(bits) => write!(
                f,
                "the key has only {bits} bits; at least {} are required",
                MIN_SECRET_BYTES * 8
            ),
            SecretError::TooLong => write!(f, "the key is longer than {MAX_SECRET_BYTES} bytes"),
        }
    }
}

impl std::error::Error for SecretError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trip_and_lenient_input() {
        let s = Secret::from_bytes(b"12345678901234567890".to_vec());
        let b32 = s.to_base32();
        assert_eq!(b32, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let typed = "gezd gnbv-gy3t qojq gezd gnbv gy3t qojq====";
        assert_eq!(Secret::from_base32(typed), Ok(s.clone()));
        assert_eq!(
            s.to_base32_grouped(),
            "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ"
        );
    }

    #[test]
    fn base32_rejects_bad_input() {
        assert_eq!(Secret::from_base32(""), Err(SecretError::NotBase32));
        assert_eq!(Secret::from_base32("ABC1"), Err(SecretError::NotBase32));
        assert_eq!(
            Secret::from_base32("GEZDGNBV"),
            Err(SecretError::TooShort(40))
        );
    }

    #[test]
    fn debug_never_shows_bytes() {
        let s = Secret::from_bytes(b"supersecretsupersecret".to_vec());
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
    }
}
