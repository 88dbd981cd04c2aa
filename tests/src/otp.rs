//! Codes from oathtool (an independent TOTP implementation) and the clock's steps.

use super::*;

/// The code for unix time `at`, from oathtool.
pub fn oathtool_at(secret: &str, at: u64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", "-N", &format!("@{at}"), secret])
        .output()
        .expect("oathtool is needed (Debian package oathtool; scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "oathtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The code `steps` periods from now, from oathtool.
pub fn oathtool(secret: &str, steps: i64) -> String {
    let at = unix_now().checked_add_signed(steps * 30).unwrap();
    oathtool_at(secret, at)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sleeps into the next 30-second step when fewer than `need` seconds are left in this one,
/// so a code computed now is still the one the daemon expects when it arrives.
pub fn ensure_step_time(need: u64) {
    let left = 30 - unix_now() % 30;
    if left < need {
        std::thread::sleep(Duration::from_secs(left) + Duration::from_millis(200));
    }
}

/// A 6-digit code that is none of the codes valid around now (steps -2..=3).
pub fn wrong_code(secret: &str) -> String {
    let now = unix_now();
    let valid: Vec<String> = (-2..=3)
        .map(|k| oathtool_at(secret, now.checked_add_signed(k * 30).unwrap()))
        .collect();
    (0..1_000_000)
        .map(|n| format!("{:06}", (n * 7919 + 13) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap()
}
