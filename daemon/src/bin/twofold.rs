//! twofold: enroll, confirm, check status, and administer two-factor logins.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    twofold_daemon::cli::main()
}
