//! The test kit, for the daemon's own tests (daemon/tests) and the end-to-end tests
//! (tests/tests): the real `twofoldd`, `twofold` and `libpam_twofold.so` from the workspace's
//! target directory, a throwaway daemon per test, pamtester under pam_wrapper with a private
//! service directory, codes from oathtool (an independent TOTP implementation), real accounts,
//! a mail relay and a PostgreSQL server inside the test.
//!
//! Build first: `cargo build --workspace` (scripts/test.sh does).
// A harness reports failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounts;
mod daemon;
mod otp;
mod pam;
mod postgres;
mod process;
mod proxy;
mod smtp;
mod sshd;
mod terminal;

pub use accounts::*;
pub use daemon::*;
pub use otp::*;
pub use pam::*;
pub use postgres::*;
pub use process::*;
pub use proxy::*;
pub use smtp::*;
pub use sshd::*;
pub use terminal::*;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const PAM_WRAPPER: &str = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so";

pub const PAM_PERMIT: &str = "/usr/lib/x86_64-linux-gnu/security/pam_permit.so";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The name of the account running the tests: a real account, as PAM needs.
pub fn my_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .expect("the test user has no account name")
        .name
}

/// The workspace's `target/debug`, or `$CARGO_TARGET_DIR/debug`.
pub fn target_dir() -> PathBuf {
    let base = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    };
    base.join("debug")
}

/// A built artifact; fails the test with instructions when it is missing.
pub fn artifact(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path.canonicalize().unwrap()
}

pub fn twofoldd() -> PathBuf {
    artifact("twofoldd")
}

pub fn twofold_cli() -> PathBuf {
    artifact("twofold")
}

pub fn pam_module() -> PathBuf {
    artifact("libpam_twofold.so")
}

/// A temp directory other users can enter (the non-root daemon and pamtester need that).
pub fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Waits until something accepts connections on `socket`.
pub fn wait_for_socket(socket: &Path, child: &mut Child, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(socket).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up ({status}): {}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A path as the `&str` an argument list wants.
/// A directory only its owner may enter (twofold refuses a seal key others can reach).
pub fn private_dir() -> tempfile::TempDir {
    let dir = open_tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// `twofold ARGS… CONFIG` (`["fleet", "init", "--config"]`, …), which must succeed.
pub fn twofold_ok(args: &[&str], config: &Path) {
    let out = Command::new(twofold_cli())
        .args(args)
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "twofold {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A name unique to this process and test: `PREFIX-PID-N`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------------------------------------
// Root-only harness pieces for the sshd and sudo tests: throwaway accounts, files under /etc
// removed on drop, and child processes run with a deadline.

/// Prints why a root-only test does not run; true when the caller should return.
pub fn skip_unless_root(test: &str, why: &str) -> bool {
    if is_root() {
        return false;
    }
    println!("SKIP {test}: needs root to {why}");
    true
}
