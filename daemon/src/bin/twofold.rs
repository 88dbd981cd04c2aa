//! twofold: enroll, confirm, check status, and administer two-factor logins.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    // `enroll` and `backup-codes` hold a secret or codes in memory: no core dumps of them.
    let _ = nix::sys::prctl::set_dumpable(false);
    twofold_daemon::cli::main()
}
