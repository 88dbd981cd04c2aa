//! What a user types at the prompt: the TOTP, backup-code and mailed-code parsers, and the
//! comparison against a real secret, for any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twofold_daemon::{backup, email};
use twofold_shared::otp::{self, TotpParams};
use twofold_shared::secret::Secret;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for digits in 6..=8 {
        if let Some(code) = otp::normalize_code(text, digits) {
            assert_eq!(code.len(), digits as usize);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }
    if let Some(code) = backup::normalize(text) {
        assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    let _ = email::normalize_code(text);
    let secret = Secret::from_bytes(vec![0x42; 20]);
    let steps = otp::matching_steps(&secret, &TotpParams::default(), text, 1_000_000, 1);
    assert!(steps.len() <= 3);
});
