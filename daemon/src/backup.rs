//! Backup codes: 80 random bits each, shown as `abcd-efgh-ijkl-mnop`, stored only as Argon2id.
//!
//! All of a user's codes share one random salt, so checking a typed code costs exactly one
//! Argon2id computation however many codes are stored; the salt still differs per user and
//! changes whenever the codes are regenerated. Sharing a salt lets an attacker holding the
//! database test a guess against twelve codes at once: against 2^80 possibilities that is no
//! help.

use argon2::{Algorithm, Argon2, Params, Version};
use subtle::ConstantTimeEq;
use twofold_shared::wire::SecretText;
use zeroize::Zeroizing;

/// Characters per code: 16 base32 characters = 80 bits.
pub const CODE_CHARS: usize = 16;
pub const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;
// OWASP's Argon2id floor: 19 MiB, 2 passes, 1 lane.
const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
const ARGON2_PASSES: u32 = 2;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// An Argon2id hash of one backup code.
#[derive(Clone)]
pub struct BackupHash([u8; HASH_BYTES]);

impl BackupHash {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A hash as a store keeps it; `None` if it is not one (the wrong length).
    pub fn from_stored(bytes: &[u8]) -> Option<BackupHash> {
        bytes.try_into().ok().map(BackupHash)
    }
}

impl std::fmt::Debug for BackupHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupHash(..)")
    }
}

impl PartialEq for BackupHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

#[derive(Debug)]
pub struct RandomError;

impl std::fmt::Display for RandomError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the system random number generator failed")
    }
}

/// Fills `buf` from the OS CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::getrandom(buf).map_err(|_| RandomError)
}

/// One fresh code, formatted for display.
fn generate_one() -> Result<SecretText, RandomError> {
    let mut raw = Zeroizing::new([0u8; CODE_CHARS]);
    random_bytes(raw.as_mut())?;
    let mut text = Zeroizing::new(String::with_capacity(CODE_CHARS + 3));
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            text.push('-');
        }
        // 256 is a multiple of 32: taking 5 bits of each byte is unbiased.
        text.push(char::from(ALPHABET[usize::from(b & 31)]));
    }
    Ok(SecretText::new(text.as_str()))
}

/// `count` fresh codes and a fresh salt.
pub fn generate(count: usize) -> Result<(Vec<SecretText>, Vec<u8>), RandomError> {
    let mut salt = vec![0u8; SALT_BYTES];
    random_bytes(&mut salt)?;
    let codes = (0..count)
        .map(|_| generate_one())
        .collect::<Result<Vec<_>, _>>()?;
    Ok((codes, salt))
}

/// Digits of the scratch codes google-authenticator-libpam writes (imported as backup codes).
pub const SCRATCH_DIGITS: usize = 8;

/// What a typed backup code reduces to: case, spaces and hyphens ignored. Also accepts the
/// 8-digit scratch codes of an imported google-authenticator file. `None` when the input
/// cannot be a backup code at all.
pub fn normalize(input: &str) -> Option<Zeroizing<String>> {
    let code: Zeroizing<String> = Zeroizing::new(
        input
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '\t'))
            .map(|c| c.to_ascii_lowercase())
            .collect(),
    );
    let ours = code.len() == CODE_CHARS && code.bytes().all(|b| ALPHABET.contains(&b));
    let scratch = code.len() == SCRATCH_DIGITS && code.bytes().all(|b| b.is_ascii_digit());
    (ours || scratch).then_some(code)
}

/// Digits of a helpdesk code (`twofold bypass`): 20 digits, 66 bits, read aloud over the
/// phone in five groups of four. No TOTP code or backup code has this shape.
pub const HELPDESK_DIGITS: usize = 20;

/// A fresh helpdesk code, `1234-5678-9012-3456-7890`.
pub fn generate_helpdesk() -> Result<SecretText, RandomError> {
    let mut text = Zeroizing::new(String::with_capacity(HELPDESK_DIGITS + 4));
    let mut digits = 0;
    while digits < HELPDESK_DIGITS {
        let mut raw = Zeroizing::new([0u8; 32]);
        random_bytes(raw.as_mut())?;
        // Bytes of 250 and above are dropped: the digits stay uniform.
        for b in raw.iter().filter(|&&b| b < 250) {
            if digits == HELPDESK_DIGITS {
                break;
            }
            if digits > 0 && digits % 4 == 0 {
                text.push('-');
            }
            text.push(char::from(b'0' + b % 10));
            digits += 1;
        }
    }
    Ok(SecretText::new(text.as_str()))
}

/// A typed helpdesk code without its spaces and hyphens, or `None` if it is not one.
pub fn normalize_helpdesk(input: &str) -> Option<Zeroizing<String>> {
    let code: Zeroizing<String> = Zeroizing::new(
        input
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '\t'))
            .collect(),
    );
    (code.len() == HELPDESK_DIGITS && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

/// Argon2id of a normalised code under `salt`. The only error is a salt shorter than
/// Argon2's minimum, which twofold never stores.
pub fn hash(normalized: &str, salt: &[u8]) -> Option<BackupHash> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, Some(HASH_BYTES)).ok()?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut out = [0u8; HASH_BYTES];
    argon
        .hash_password_into(normalized.as_bytes(), salt, &mut out)
        .ok()?;
    Some(BackupHash(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_look_right_and_differ() {
        let (codes, salt) = generate(12).unwrap();
        assert_eq!(codes.len(), 12);
        assert_eq!(salt.len(), SALT_BYTES);
        for c in &codes {
            let t = c.expose();
            assert_eq!(t.len(), 19, "{}", t.len());
            assert_eq!(t.matches('-').count(), 3);
            assert!(normalize(t).is_some());
        }
        let mut unique: Vec<_> = codes.iter().map(|c| c.expose().to_string()).collect();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 12);
    }

    #[test]
    fn input_normalisation() {
        let canonical = "abcdefghijklmnop";
        for typed in [
            "abcd-efgh-ijkl-mnop",
            "ABCD EFGH IJKL MNOP",
            "AbCdEfGhIjKlMnOp",
            " abcd-efgh ijkl-mnop ",
        ] {
            assert_eq!(
                normalize(typed).as_deref().map(|s| s.as_str()),
                Some(canonical),
                "{typed}"
            );
        }
        assert_eq!(
            normalize("3781 0052").as_deref().map(|s| s.as_str()),
            Some("37810052")
        );
        for bad in [
            "",
            "abcd-efgh-ijkl",
            "abcd-efgh-ijkl-mnop-q",
            "abcd-efgh-ijkl-mno1",
            "123456",
            "1234567",
            "123456789",
            "abcd-efgh-ijkl-mnø",
        ] {
            assert!(normalize(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn helpdesk_codes() {
        let a = generate_helpdesk().unwrap();
        let b = generate_helpdesk().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 24);
        assert_eq!(a.expose().matches('-').count(), 4);
        let n = normalize_helpdesk(a.expose()).unwrap();
        assert_eq!(n.len(), HELPDESK_DIGITS);
        assert!(normalize(a.expose()).is_none(), "not a backup code");
        assert!(normalize_helpdesk(" 1234 5678-9012 3456 7890 ").is_some());
        for bad in [
            "",
            "123456",
            "1234-5678-9012-3456-789",
            "1234-5678-9012-3456-789x",
        ] {
            assert!(normalize_helpdesk(bad).is_none(), "{bad}");
        }
    }

    /// The reference implementation's answer (Debian's argon2 command:
    /// `printf abcdefghijklmnop | argon2 0123456789abcdef -id -t 2 -k 19456 -p 1 -l 32 -r`):
    /// backup codes hashed by any version of the Argon2 crate verify with every later one.
    #[test]
    fn hash_is_the_reference_argon2id() {
        let a = hash("abcdefghijklmnop", b"0123456789abcdef").unwrap();
        let hex: String = a.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "43b62dff9134b7c5ab7890d2861e466cf84d24a2e9541943e6f18aa52268ba0a"
        );
    }

    #[test]
    fn hash_depends_on_code_and_salt() {
        let a = hash("abcdefghijklmnop", b"0123456789abcdef").unwrap();
        assert_eq!(a, hash("abcdefghijklmnop", b"0123456789abcdef").unwrap());
        assert!(a != hash("abcdefghijklmnoq", b"0123456789abcdef").unwrap());
        assert!(a != hash("abcdefghijklmnop", b"0123456789abcdeX").unwrap());
        assert!(hash("abcdefghijklmnop", b"short").is_none());
    }
}
