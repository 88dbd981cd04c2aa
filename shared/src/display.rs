//! What `twofold enroll` and the login prompt both show a user who enrolls: the account, the
//! key to type in, and the advice that comes with the backup codes. Written once, so that the
//! two say the same.

use crate::otp::Algorithm;
use crate::secret::group4;
use crate::wire::SecretText;

pub const SCAN: &str =
    "Scan this QR code with your authenticator app (Google Authenticator, Authy, Duo Mobile, ...):";

/// The account label and the key in groups of four, with the parameters for typing it in.
pub fn key_lines(
    label: &str,
    secret: &str,
    algorithm: Algorithm,
    digits: u32,
    period: u64,
) -> [String; 3] {
    [
        format!("Account:  {label}"),
        format!("Key:      {}", group4(secret)),
        format!(
            "          (to type it in: time-based, {algorithm}, {digits} digits, every {period} seconds)"
        ),
    ]
}

/// Shown above the backup codes.
pub const BACKUP_ADVICE: [&str; 3] = [
    "Backup codes: each works once, at the same prompt as the app's codes, if you",
    "lose your phone. Store them somewhere safe and away from this host (a password",
    "manager or on paper). They will not be shown again.",
];

/// The codes, two to a line.
pub fn backup_code_lines(codes: &[SecretText]) -> Vec<String> {
    codes
        .chunks(2)
        .map(|pair| {
            let line: Vec<&str> = pair.iter().map(|c| c.expose()).collect();
            format!("    {}", line.join("    "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let [account, key, how] = key_lines("h:alice", "ABCDEFGHIJ", Algorithm::Sha1, 6, 30);
        assert_eq!(account, "Account:  h:alice");
        assert_eq!(key, "Key:      ABCD EFGH IJ");
        assert!(how.contains("SHA1, 6 digits, every 30 seconds"), "{how}");
        let codes: Vec<SecretText> = ["1", "2", "3"].into_iter().map(SecretText::new).collect();
        assert_eq!(backup_code_lines(&codes), ["    1    2", "    3"]);
    }
}
