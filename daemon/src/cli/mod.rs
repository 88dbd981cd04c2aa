//! The `twofold` command: self-service for users, administration for root (ARCHITECTURE.md §5).

mod codes;
mod ctx;
mod doctor;
mod enroll;
mod import;
mod invite;
mod local;
mod show;

use codes::*;
use ctx::*;
use doctor::*;
use enroll::*;
use import::*;
use invite::*;
use local::*;
use show::*;

use clap::{Parser, Subcommand};
use qrcode::render::svg;
use qrcode::QrCode;
use serde_json::json;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use twofold_shared::client::{Client, ClientError};
use twofold_shared::display;
use twofold_shared::otp::{Algorithm, TotpParams};
use twofold_shared::wire::{
    EnrollmentInfo, ErrorKind, Method, RequestBody, ResponseBody, SecretText, UserStatus,
};

/// Exit statuses: a stable interface that scripts rely on.
pub mod exit {
    pub const OK: u8 = 0;
    pub const REJECTED: u8 = 1;
    pub const ERROR: u8 = 2;
    pub const THROTTLED: u8 = 3;
    pub const NOT_ENROLLED: u8 = 4;
    pub const DENIED: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
}

#[derive(Parser, Debug)]
#[command(name = "twofold", version, about = "Two-factor codes (TOTP) for Linux logins", long_about = None)]
pub struct Cli {
    /// twofoldd's socket (default: $TWOFOLD_SOCKET, else /run/twofold/twofold.sock).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print one JSON document on standard output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set up an authenticator app: shows a QR code, asks for the first code, prints backup codes.
    Enroll {
        /// Account to enroll (root only; default: yourself).
        #[arg(long)]
        user: Option<String>,
        /// Replace an existing enrollment.
        #[arg(long)]
        force: bool,
        /// Also write the QR code as an SVG image to FILE (created 0600; it holds the key).
        #[arg(long, value_name = "FILE")]
        qr_svg: Option<PathBuf>,
        /// Current code, when replacing your own enrollment ('-': read from standard input).
        #[arg(long)]
        code: Option<String>,
        /// HMAC algorithm: sha1 (default; every app), sha256 or sha512 (not every app).
        #[arg(long, value_name = "ALG", value_parser = parse_algorithm)]
        algorithm: Option<Algorithm>,
        /// Digits per code: 6 (default) or 8.
        #[arg(long, value_name = "N")]
        digits: Option<u32>,
        /// Seconds per code: 30 (default), 15 to 300.
        #[arg(long, value_name = "SECONDS")]
        period: Option<u64>,
        /// Name of the authenticator (letters, digits, '-', '_'; at most 32): adds another one
        /// to an enrolled account (an existing one is replaced only with --force). Default:
        /// 'default'.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// List the account's authenticators: name, when added, last used, parameters.
    Authenticators {
        #[arg(long)]
        user: Option<String>,
    },
    /// Remove one authenticator; its codes stop working (the last one: 'twofold disable').
    RemoveAuthenticator {
        /// The authenticator's name.
        name: String,
        #[arg(long)]
        user: Option<String>,
        /// Current code or backup code (users changing their own account; '-': standard input).
        #[arg(long)]
        code: Option<String>,
    },
    /// Activate a pending enrollment with the code the app shows ('-': read it from standard input).
    Confirm {
        code: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// Show what is set up: enrollment, backup codes left, last success, throttle.
    Status {
        #[arg(long)]
        user: Option<String>,
    },
    /// Replace all backup codes with new ones.
    BackupCodes {
        #[arg(long)]
        user: Option<String>,
        /// Current code or backup code (users changing their own account; '-': standard input).
        #[arg(long)]
        code: Option<String>,
    },
    /// Remove the enrollment.
    Disable {
        #[arg(long)]
        user: Option<String>,
        /// Current code or backup code (users changing their own account; '-': standard input).
        #[arg(long)]
        code: Option<String>,
    },
    /// List every enrolled or pending user (root).
    List,
    /// Clear a user's failure count and lock (root).
    Unlock { user: String },
    /// Check a code exactly as a login would, consuming it (root; '-' reads it from standard input).
    Verify { user: String, code: String },
    /// Bring a counter-based (HOTP) token pressed too often without a login back in step: two
    /// consecutive codes it shows now (root; without them, two lines are read from standard input).
    Resync {
        user: String,
        /// The token's first and second code, in order.
        #[arg(num_args = 0..=2)]
        codes: Vec<String>,
        /// Which of the account's HOTP authenticators (by default: whichever the codes fit).
        #[arg(long)]
        name: Option<String>,
    },
    /// Show the policy in force and whom each rule affects (root).
    Policy,
    /// Print what twofoldd has decided since it started, and the store's state, as Prometheus
    /// text exposition (root; for node_exporter, see metrics_textfile in twofold.toml(5)).
    Metrics,
    /// Take over an enrollment from another tool, so that the user's phone keeps working (root).
    #[command(subcommand)]
    Import(ImportSource),
    /// Let an account enroll at its next login: the QR code is shown at the login prompt (root).
    Invite {
        /// The account to invite.
        user: Option<String>,
        /// How long the invitation is open: 90m, 12h, 7d (default 24h, at most 30d).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        for_secs: Option<u64>,
        /// The account is enrolled (a lost phone): the new enrollment replaces the old one once
        /// confirmed; until then the old one keeps working.
        #[arg(long)]
        replace: bool,
        /// List the invitations.
        #[arg(long)]
        list: bool,
        /// Withdraw NAME's invitation.
        #[arg(long, value_name = "NAME")]
        revoke: Option<String>,
    },
    /// A helpdesk code: lets the account log in without its phone, once within 1 h unless
    /// --uses and --for say otherwise; its enrollment and backup codes stay as they are (root).
    Bypass {
        user: Option<String>,
        /// How long the code works: 15m, 2h, 1d (default 1h, at most 7d).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        for_secs: Option<u64>,
        /// Logins the code lets through (default 1, at most 100).
        #[arg(long, value_name = "N")]
        uses: Option<u32>,
        /// Withdraw NAME's helpdesk code.
        #[arg(long, value_name = "NAME")]
        revoke: Option<String>,
    },
    /// Show the audit trail: enrollments, logins, lockouts, unlocks, resets, reloads (root).
    Audit {
        #[arg(long)]
        user: Option<String>,
        /// Only the last DURATION: 90s, 15m, 12h, 7d, 2w.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        since: Option<u64>,
    },
    /// Email codes: register, confirm or remove the address codes can be mailed to.
    #[command(subcommand)]
    Email(EmailCommand),
    /// Seal TOTP secrets at rest with a key kept outside the database (root).
    #[command(subcommand)]
    Seal(SealCommand),
    /// The PostgreSQL store shared by a fleet of hosts (root).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Copy this host's SQLite store into the PostgreSQL store (root; twofoldd stopped).
    Migrate {
        /// The store to copy into: postgres.
        #[arg(long, value_name = "STORE")]
        to: String,
        /// twofoldd's configuration file (its database, postgres_url, postgres_password_file).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check this host's set-up (daemon, files, sshd, PAM stacks, clock, users) and say what to fix.
    Doctor {
        /// twofoldd's configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum EmailCommand {
    /// Register ADDRESS: a code is mailed to it, then asked for here (or give it to 'confirm').
    Set {
        address: String,
        #[arg(long)]
        user: Option<String>,
        /// Current code, when you change your own address ('-': standard input).
        #[arg(long)]
        code: Option<String>,
    },
    /// Verify the registered address with the code mailed to it ('-': standard input).
    Confirm {
        code: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// Forget the address.
    Remove {
        #[arg(long)]
        user: Option<String>,
        /// Current code (users changing their own account; '-': standard input).
        #[arg(long)]
        code: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum SealCommand {
    /// Create the key file that `seal_key_file` names (32 random bytes, mode 0400), then
    /// restart twofoldd: it seals every secret at its next start.
    Init {
        /// twofoldd's configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Re-encrypt every secret under a new key, which replaces the key file.
    Rekey,
}

#[derive(Subcommand, Debug)]
enum FleetCommand {
    /// Create twofold's schema in the empty PostgreSQL database that postgres_url names (with
    /// seal_key_file: sealed with that key), once for the fleet; twofoldd never creates it.
    Init {
        /// twofoldd's configuration file (postgres_url, postgres_password_file, seal_key_file).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ImportSource {
    /// google-authenticator-libpam: the TOTP key, step size, window and scratch codes (as
    /// backup codes) of ~NAME/.google_authenticator or FILE, which is left untouched.
    GoogleAuthenticator {
        #[arg(long)]
        user: String,
        file: Option<PathBuf>,
        /// Replace an existing twofold enrollment (with --name: the authenticator of that name).
        #[arg(long)]
        force: bool,
        /// Add it as an authenticator of this name beside the account's others (its scratch
        /// codes join the backup codes), instead of replacing the enrollment.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// An otpauth:// URI (TOTP, or HOTP with its counter) from FILE, or from standard input
    /// when FILE is '-' or left out; never from the command line.
    Otpauth {
        #[arg(long)]
        user: String,
        file: Option<PathBuf>,
        /// Replace an existing twofold enrollment (with --name: the authenticator of that name).
        #[arg(long)]
        force: bool,
        /// Add it as an authenticator of this name beside the account's others.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// A hardware-token vendor's seed file: a CSV whose header names its columns (user,
    /// secret, and optionally type, algorithm, digits, period, counter, name); one import per
    /// line, each in its own transaction, with a report of the lines refused and why.
    Seeds {
        #[arg(long)]
        file: PathBuf,
        /// Replace existing enrollments (or, with a name column, authenticators of that name).
        #[arg(long)]
        force: bool,
    },
}

struct Ctx {
    client: Client,
    json: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let named = cli
        .socket
        .or_else(|| std::env::var_os("TWOFOLD_SOCKET").map(PathBuf::from));
    if let Command::Doctor { config } = cli.command {
        return ExitCode::from(run_doctor(named, config, cli.json));
    }
    if let Command::Seal(SealCommand::Init { config }) = cli.command {
        return ExitCode::from(seal_init(config, cli.json));
    }
    if let Command::Fleet(FleetCommand::Init { config }) = cli.command {
        return ExitCode::from(fleet_init(config, cli.json));
    }
    if let Command::Migrate { to, config } = cli.command {
        return ExitCode::from(migrate(&to, config, named, cli.json));
    }
    let socket = named.unwrap_or_else(|| PathBuf::from(twofold_shared::DEFAULT_SOCKET));
    let me = nix::unistd::geteuid().as_raw();
    let mut trusted = vec![0];
    if me != 0 {
        trusted.push(me);
    }
    // Generous: a confirmation hashes a dozen backup codes with Argon2id (19 MiB each), one
    // at a time on a one-CPU machine, which takes half a minute under emulation.
    let mut client = Client::new(socket, Duration::from_secs(120), trusted);
    client.max_response = twofold_shared::wire::MAX_LARGE_FRAME;
    let ctx = Ctx {
        client,
        json: cli.json,
    };
    ExitCode::from(run(&ctx, cli.command))
}

fn run(ctx: &Ctx, command: Command) -> u8 {
    match command {
        Command::Enroll {
            user,
            force,
            qr_svg,
            code,
            algorithm,
            digits,
            period,
            name,
        } => {
            let params = (algorithm.is_some() || digits.is_some() || period.is_some()).then(|| {
                let d = TotpParams::default();
                TotpParams {
                    algorithm: algorithm.unwrap_or(d.algorithm),
                    digits: digits.unwrap_or(d.digits),
                    period: period.unwrap_or(d.period),
                }
            });
            match code_arg(ctx, code) {
                Ok(code) => enroll(ctx, user, force, qr_svg, code, params, name),
                Err(e) => e,
            }
        }
        Command::Confirm { code, user } => match read_code_arg(&code) {
            Some(code) => match ctx.call(RequestBody::Confirm { user, code }) {
                Ok(ResponseBody::BackupCodes { user, codes }) => {
                    print_backup_codes(ctx, &user, &codes, true);
                    exit::OK
                }
                Ok(other) => ctx.report(other),
                Err(e) => e,
            },
            None => ctx.fail(NO_CODE),
        },
        Command::Status { user } => ctx.show(RequestBody::Status { user }, |ctx, r| match r {
            ResponseBody::Status(s) => {
                print_status(ctx, s);
                true
            }
            _ => false,
        }),
        Command::BackupCodes { user, code } => match code_arg(ctx, code) {
            Ok(code) => with_code(
                ctx,
                code,
                |code| RequestBody::BackupCodes {
                    user: user.clone(),
                    code,
                },
                |ctx, r| match r {
                    ResponseBody::BackupCodes { user, codes } => {
                        print_backup_codes(ctx, &user, &codes, false);
                        exit::OK
                    }
                    other => ctx.report(other),
                },
            ),
            Err(e) => e,
        },
        Command::Disable { user, code } => match code_arg(ctx, code) {
            Ok(code) => with_code(
                ctx,
                code,
                |code| RequestBody::Disable {
                    user: user.clone(),
                    code,
                },
                |ctx, r| ctx.report(r),
            ),
            Err(e) => e,
        },
        Command::Authenticators { user } => {
            ctx.show(RequestBody::Authenticators { user }, |ctx, r| match r {
                ResponseBody::Authenticators {
                    user,
                    authenticators,
                } => {
                    print_authenticators(ctx, user, authenticators);
                    true
                }
                _ => false,
            })
        }
        Command::RemoveAuthenticator { name, user, code } => match code_arg(ctx, code) {
            Ok(code) => with_code(
                ctx,
                code,
                |code| RequestBody::RemoveAuthenticator {
                    user: user.clone(),
                    authenticator: name.clone(),
                    code,
                },
                |ctx, r| ctx.report(r),
            ),
            Err(e) => e,
        },
        Command::List => ctx.show(RequestBody::List {}, |ctx, r| match r {
            ResponseBody::Users { users } => {
                print_list(ctx, users);
                true
            }
            _ => false,
        }),
        Command::Unlock { user } => ctx.ask(RequestBody::Unlock { user }),
        Command::Resync { user, codes, name } => match resync_codes(codes) {
            Some([first, second]) => ctx.ask(RequestBody::Resync {
                user,
                authenticator: name,
                first,
                second,
            }),
            None => ctx.fail("give two consecutive codes of the token, as arguments or as two lines on standard input"),
        },
        Command::Verify { user, code } => match read_code_arg(&code) {
            Some(code) => ctx.ask(RequestBody::Verify {
                grace_secs: 0,
                user,
                code,
                pam: Default::default(),
            }),
            None => ctx.fail(NO_CODE),
        },
        Command::Policy => ctx.show(RequestBody::Policy {}, |ctx, r| match r {
            ResponseBody::Policy(p) => {
                print_policy(ctx, p);
                true
            }
            _ => false,
        }),
        Command::Metrics => ctx.show(RequestBody::Metrics {}, |_, r| match r {
            ResponseBody::Metrics { text } => {
                print!("{text}");
                true
            }
            _ => false,
        }),
        Command::Audit { user, since } => {
            let request = RequestBody::Audit {
                user,
                since_secs: since,
            };
            ctx.show(request, |ctx, r| match r {
                ResponseBody::Audit { entries, omitted } => {
                    print_audit(ctx, entries, *omitted);
                    true
                }
                _ => false,
            })
        }
        Command::Import(ImportSource::GoogleAuthenticator {
            user,
            file,
            force,
            name,
        }) => import_google_authenticator(ctx, &user, file, force, name),
        Command::Import(ImportSource::Otpauth {
            user,
            file,
            force,
            name,
        }) => import_otpauth(ctx, &user, file, force, name),
        Command::Import(ImportSource::Seeds { file, force }) => import_seeds(ctx, &file, force),
        Command::Invite {
            user,
            for_secs,
            replace,
            list,
            revoke,
        } => invite(ctx, user, for_secs, replace, list, revoke),
        Command::Bypass {
            user,
            for_secs,
            uses,
            revoke,
        } => bypass(ctx, user, for_secs, uses, revoke),
        Command::Email(command) => run_email(ctx, command),
        Command::Seal(SealCommand::Rekey) => ctx.ask(RequestBody::SealRekey {}),
        Command::Doctor { .. }
        | Command::Seal(SealCommand::Init { .. })
        | Command::Fleet(_)
        | Command::Migrate { .. } => exit::ERROR, // in main
    }
}

/// `twofold email ...`.
fn run_email(ctx: &Ctx, command: EmailCommand) -> u8 {
    match command {
        EmailCommand::Set {
            address,
            user,
            code,
        } => match code_arg(ctx, code) {
            Ok(code) => with_code(
                ctx,
                code,
                |code| RequestBody::EmailSet {
                    user: user.clone(),
                    address: address.clone(),
                    code,
                },
                |ctx, r| email_sent(ctx, user.clone(), r),
            ),
            Err(e) => e,
        },
        EmailCommand::Confirm { code, user } => match read_code_arg(&code) {
            Some(code) => ctx.ask(RequestBody::EmailConfirm { user, code }),
            None => ctx.fail(NO_CODE),
        },
        EmailCommand::Remove { user, code } => match code_arg(ctx, code) {
            Ok(code) => with_code(
                ctx,
                code,
                |code| RequestBody::EmailRemove {
                    user: user.clone(),
                    code,
                },
                |ctx, r| ctx.report(r),
            ),
            Err(e) => e,
        },
    }
}

/// The error of a command run without the daemon (`seal init`, `migrate`): JSON or a line.
fn local_failure(json_out: bool, message: &str) -> u8 {
    if json_out {
        println!(
            "{}",
            serde_json::json!({"result": "error", "kind": "usage", "message": message})
        );
    } else {
        eprintln!("twofold: {message}");
    }
    exit::ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
        assert_eq!(parse_duration("45"), Ok(45));
        for bad in ["", "h", "5y", "-5m", "1.5h", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_time_secs(1_234_567_890), "2009-02-13 23:31:30 UTC");
    }

    #[test]
    fn time_formatting() {
        assert_eq!(format_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_time(1_234_567_890), "2009-02-13 23:31 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn qr_renders_half_blocks_and_svg() {
        let uri = "otpauth://totp/host:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=host";
        let text = crate::qr::text(uri, crate::qr::Polarity::Dark).unwrap();
        assert!(text.contains('▀') || text.contains('▄') || text.contains('█'));
        // Two module rows per text line: about half as many lines as modules.
        let lines = text.lines().count();
        assert!(lines > 10 && lines < 40, "{lines}");
        assert!(qr_svg(uri).unwrap().starts_with("<?xml"));
    }
}
