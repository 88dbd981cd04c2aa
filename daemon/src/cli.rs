//! The `twofold` command: self-service for users, administration for root (ARCHITECTURE.md §5).

use clap::{Parser, Subcommand};
use qrcode::render::{svg, unicode};
use qrcode::QrCode;
use serde_json::json;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use twofold_shared::client::{Client, ClientError};
use twofold_shared::otp::{Algorithm, TotpParams};
use twofold_shared::secret::group4;
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
    /// Show the policy in force and whom each rule affects (root).
    Policy,
    /// Take over an enrollment from another tool, so that the user's phone keeps working (root).
    #[command(subcommand)]
    Import(ImportSource),
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
        /// Replace an existing twofold enrollment.
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
    let mut client = Client::new(socket, Duration::from_secs(30), trusted);
    client.max_response = twofold_shared::wire::MAX_LARGE_FRAME;
    let ctx = Ctx {
        client,
        json: cli.json,
    };
    ExitCode::from(run(&ctx, cli.command))
}

fn run(ctx: &Ctx, command: Command) -> u8 {
    let code_arg = |c: Option<String>| -> Result<Option<SecretText>, u8> {
        match c {
            None => Ok(None),
            Some(c) => read_code_arg(&c).map(Some).ok_or_else(|| ctx.fail(NO_CODE)),
        }
    };
    match command {
        Command::Enroll {
            user,
            force,
            qr_svg,
            code,
            algorithm,
            digits,
            period,
        } => {
            let params = (algorithm.is_some() || digits.is_some() || period.is_some()).then(|| {
                let d = TotpParams::default();
                TotpParams {
                    algorithm: algorithm.unwrap_or(d.algorithm),
                    digits: digits.unwrap_or(d.digits),
                    period: period.unwrap_or(d.period),
                }
            });
            match code_arg(code) {
                Ok(code) => enroll(ctx, user, force, qr_svg, code, params),
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
        Command::Status { user } => match ctx.call(RequestBody::Status { user }) {
            Ok(ResponseBody::Status(s)) => {
                print_status(ctx, &s);
                exit::OK
            }
            Ok(other) => ctx.report(other),
            Err(e) => e,
        },
        Command::BackupCodes { user, code } => match code_arg(code) {
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
        Command::Disable { user, code } => match code_arg(code) {
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
        Command::List => match ctx.call(RequestBody::List {}) {
            Ok(ResponseBody::Users { users }) => {
                print_list(ctx, &users);
                exit::OK
            }
            Ok(other) => ctx.report(other),
            Err(e) => e,
        },
        Command::Unlock { user } => match ctx.call(RequestBody::Unlock { user }) {
            Ok(r) => ctx.report(r),
            Err(e) => e,
        },
        Command::Verify { user, code } => match read_code_arg(&code) {
            Some(code) => match ctx.call(RequestBody::Verify {
                grace_secs: 0,
                user,
                code,
                pam: Default::default(),
            }) {
                Ok(r) => ctx.report(r),
                Err(e) => e,
            },
            None => ctx.fail(NO_CODE),
        },
        Command::Policy => match ctx.call(RequestBody::Policy {}) {
            Ok(ResponseBody::Policy(p)) => {
                print_policy(ctx, &p);
                exit::OK
            }
            Ok(other) => ctx.report(other),
            Err(e) => e,
        },
        Command::Audit { user, since } => match ctx.call(RequestBody::Audit {
            user,
            since_secs: since,
        }) {
            Ok(ResponseBody::Audit { entries, omitted }) => {
                print_audit(ctx, &entries, omitted);
                exit::OK
            }
            Ok(other) => ctx.report(other),
            Err(e) => e,
        },
        Command::Import(ImportSource::GoogleAuthenticator { user, file, force }) => {
            import_google_authenticator(ctx, &user, file, force)
        }
        Command::Email(EmailCommand::Set {
            address,
            user,
            code,
        }) => match code_arg(code) {
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
        Command::Email(EmailCommand::Confirm { code, user }) => match read_code_arg(&code) {
            Some(code) => match ctx.call(RequestBody::EmailConfirm { user, code }) {
                Ok(r) => ctx.report(r),
                Err(e) => e,
            },
            None => ctx.fail(NO_CODE),
        },
        Command::Email(EmailCommand::Remove { user, code }) => match code_arg(code) {
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
        Command::Seal(SealCommand::Rekey) => match ctx.call(RequestBody::SealRekey {}) {
            Ok(r) => ctx.report(r),
            Err(e) => e,
        },
        Command::Doctor { .. }
        | Command::Seal(SealCommand::Init { .. })
        | Command::Fleet(_)
        | Command::Migrate { .. } => exit::ERROR, // in main
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

/// `twofold migrate --to postgres`: copies the SQLite store, verifying every table's count.
fn migrate(to: &str, config_path: Option<PathBuf>, socket: Option<PathBuf>, json_out: bool) -> u8 {
    let fail = |message: String| local_failure(json_out, &message);
    if to != "postgres" {
        return fail(format!("--to {to:?}: only \"postgres\" is supported"));
    }
    let (path, explicit) = match config_path {
        Some(p) => (p, true),
        None => (PathBuf::from(crate::config::DEFAULT_CONFIG), false),
    };
    let config = match crate::config::Config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    let socket = socket.unwrap_or_else(|| config.socket.clone());
    match crate::migrate::to_postgres(&config, &socket) {
        Ok(copied) => {
            if json_out {
                let tables: serde_json::Map<String, serde_json::Value> = copied
                    .iter()
                    .map(|(t, n)| (t.clone(), serde_json::json!(n)))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"result": "done", "copied": tables})
                );
            } else {
                for (table, n) in &copied {
                    println!("{table:<14} {n:>8} rows copied and counted");
                }
                println!(
                    "Done. Set store = \"postgres\" in {} and start twofoldd.",
                    path.display()
                );
            }
            exit::OK
        }
        Err(why) => fail(why),
    }
}

/// `twofold fleet init`: the schema in an empty PostgreSQL database (sealed when the
/// configuration names a seal key), never over an existing one.
fn fleet_init(config_path: Option<PathBuf>, json_out: bool) -> u8 {
    let fail = |message: String| local_failure(json_out, &message);
    if !nix::unistd::geteuid().is_root() {
        return fail(
            "twofold fleet init must run as root (it reads the database password and the seal \
             key, as twofoldd does)"
                .into(),
        );
    }
    let (path, explicit) = match config_path {
        Some(p) => (p, true),
        None => (PathBuf::from(crate::config::DEFAULT_CONFIG), false),
    };
    let config = match crate::config::Config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    let Some(url) = config.postgres_url.as_deref() else {
        return fail(format!(
            "set postgres_url (and postgres_password_file) in {} first",
            path.display()
        ));
    };
    let seal = match &config.seal_key_file {
        None => None,
        Some(key_file) => match crate::seal::read_key(key_file, 0) {
            Ok(key) => Some(crate::seal::Sealer::from_key(&key)),
            Err(why) => {
                return fail(format!(
                    "{why} (seal_key_file: 'twofold seal init' creates it; copy the same file \
                     to every host)"
                ))
            }
        },
    };
    if let Err(e) =
        crate::store::postgres::init(url, config.postgres_password_file.as_deref(), seal.as_ref())
    {
        return fail(e.to_string());
    }
    if json_out {
        println!(
            "{}",
            serde_json::json!({"result": "done", "sealed": seal.is_some()})
        );
    } else {
        let sealed = match &config.seal_key_file {
            Some(f) if seal.is_some() => format!(", sealed with {}", f.display()),
            _ => String::new(),
        };
        println!(
            "Created twofold's schema in the PostgreSQL database{sealed}. Set store = \
             \"postgres\" in {} and start twofoldd on every host.",
            path.display()
        );
    }
    exit::OK
}

/// `twofold seal init`: a new key file where the configuration says, never over an old one.
fn seal_init(config_path: Option<PathBuf>, json_out: bool) -> u8 {
    let (path, explicit) = match config_path {
        Some(p) => (p, true),
        None => (PathBuf::from(crate::config::DEFAULT_CONFIG), false),
    };
    let fail = |message: String| local_failure(json_out, &message);
    let config = match crate::config::Config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    let Some(key_file) = config.seal_key_file else {
        return fail(format!(
            "set seal_key_file in {} first (for example \"/etc/twofold/seal/key\")",
            path.display()
        ));
    };
    if let Some(dir) = key_file.parent().filter(|d| !d.exists()) {
        use std::os::unix::fs::DirBuilderExt;
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(dir) {
            return fail(format!("cannot create {}: {e}", dir.display()));
        }
    }
    let written =
        crate::seal::Sealer::generate_key().and_then(|key| crate::seal::write_key(&key_file, &key));
    if let Err(why) = written {
        return fail(why);
    }
    if json_out {
        println!(
            "{}",
            serde_json::json!({"result": "done", "key_file": key_file.display().to_string()})
        );
    } else {
        println!(
            "Created {} (mode 0400). Restart twofoldd: it seals every secret at start-up.\n\
             Keep a copy of this file apart from the database's backups: without it the \
             secrets cannot be read, and every user must enroll again.",
            key_file.display()
        );
    }
    exit::OK
}

/// `twofold doctor`: gathers the real inputs and prints each finding with its fix.
fn run_doctor(named_socket: Option<PathBuf>, config_path: Option<PathBuf>, json_out: bool) -> u8 {
    use crate::doctor::{self, Finding, Level};
    let mut findings: Vec<Finding> = Vec::new();
    let (path, explicit) = match config_path {
        Some(p) => (p, true),
        None => (PathBuf::from(crate::config::DEFAULT_CONFIG), false),
    };
    let config = match doctor::load_config(&path, explicit) {
        Ok(c) => {
            let message = if path.exists() {
                format!("{} is valid", path.display())
            } else {
                format!("{} does not exist: the defaults apply", path.display())
            };
            findings.push(Finding {
                check: "config",
                level: Level::Ok,
                message,
                fix: None,
            });
            c
        }
        Err(e) => {
            findings.push(Finding {
                check: "config",
                level: Level::Fail,
                message: format!("{e} (twofoldd refuses to start with it)"),
                fix: Some("correct the file; 'man twofold.toml' lists every key".into()),
            });
            crate::config::Config::default()
        }
    };
    let socket = named_socket.unwrap_or_else(|| config.socket.clone());
    let client = Client::new(&socket, Duration::from_secs(5), vec![0]);
    match client.call(RequestBody::Ping {}) {
        Ok(ResponseBody::Pong { daemon_version }) => findings.push(Finding {
            check: "daemon",
            level: Level::Ok,
            message: format!(
                "twofoldd {daemon_version} answers on {} (protocol {})",
                socket.display(),
                twofold_shared::wire::PROTOCOL_VERSION
            ),
            fix: None,
        }),
        Ok(_) => findings.push(Finding {
            check: "daemon",
            level: Level::Fail,
            message: "twofoldd gave an unexpected answer to ping".into(),
            fix: Some("install matching versions of twofold and twofoldd".into()),
        }),
        Err(e) => findings.push(Finding {
            check: "daemon",
            level: Level::Fail,
            message: format!("{e}: every protected login is refused until it is back"),
            fix: Some(
                "'systemctl start twofoldd'; 'journalctl -u twofoldd' says why it stopped".into(),
            ),
        }),
    }
    findings.push(doctor::check_socket(
        &socket,
        doctor::socket_meta(&socket),
        0,
    ));
    if config.store == crate::config::StoreKind::Postgres {
        let url = config.postgres_url.as_deref().unwrap_or_default();
        findings.extend(doctor::check_postgres(
            crate::store::postgres::transport(url),
            config
                .postgres_password_file
                .as_deref()
                .map(crate::store::postgres::check_password_file),
        ));
    } else {
        findings.push(doctor::check_database(
            &config.database,
            doctor::owner_mode(&config.database),
            0,
        ));
    }
    let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    match sshd {
        None => findings.push(Finding {
            check: "sshd",
            level: Level::Ok,
            message: "sshd is not installed".into(),
            fix: None,
        }),
        Some(bin) => match std::process::Command::new(bin).arg("-T").output() {
            Ok(out) if out.status.success() => {
                findings.extend(doctor::check_sshd(&String::from_utf8_lossy(&out.stdout)))
            }
            Ok(out) => findings.push(Finding {
                check: "sshd",
                level: Level::Warn,
                message: format!(
                    "could not read sshd's settings ('sshd -T': {})",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .next()
                        .unwrap_or("failed")
                ),
                fix: Some(
                    "run 'twofold doctor' as root; 'sshd -t' shows configuration errors".into(),
                ),
            }),
            Err(e) => findings.push(Finding {
                check: "sshd",
                level: Level::Warn,
                message: format!("cannot run sshd -T: {e}"),
                fix: Some("run 'twofold doctor' as root".into()),
            }),
        },
    }
    let read = |service: &str| {
        std::fs::read_to_string(std::path::Path::new("/etc/pam.d").join(service)).ok()
    };
    for service in ["sshd", "sudo"] {
        let exists = std::path::Path::new("/etc/pam.d").join(service).exists();
        findings.extend(doctor::check_pam(
            service,
            exists,
            &doctor::twofold_lines(service, &read),
        ));
    }
    let ntp = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    findings.push(doctor::check_clock(ntp.as_deref()));
    match client.call(RequestBody::List {}) {
        Ok(ResponseBody::Users { users }) => {
            let enrolled = users
                .iter()
                .filter(|u| u.enrolled)
                .map(|u| u.user.clone())
                .collect();
            let locked = users.iter().filter(|u| u.locked).count();
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let accounts = crate::users::local_accounts(&passwd);
            findings.extend(doctor::check_users(
                &accounts,
                &enrolled,
                locked,
                config.unenrolled,
            ));
            findings.extend(doctor::check_identities(&passwd, &enrolled, &|name| {
                crate::users::uid_of(name).is_some()
            }));
        }
        Ok(ResponseBody::Error {
            kind: ErrorKind::PermissionDenied,
            ..
        }) => findings.push(Finding {
            check: "users",
            level: Level::Warn,
            message: "only root can see who is enrolled".into(),
            fix: Some("run 'sudo twofold doctor'".into()),
        }),
        _ => {} // the daemon finding already says it is unreachable
    }
    let healthy = findings.iter().all(|f| f.level == Level::Ok);
    if json_out {
        println!("{}", json!({ "ok": healthy, "findings": findings }));
    } else {
        for f in &findings {
            let tag = match f.level {
                Level::Ok => "[ok]  ",
                Level::Warn => "[warn]",
                Level::Fail => "[FAIL]",
            };
            println!("{tag} {:<8} {}", f.check, f.message);
            if let Some(fix) = &f.fix {
                println!("       {:<8} fix: {fix}", "");
            }
        }
        let fails = findings.iter().filter(|f| f.level == Level::Fail).count();
        let warns = findings.iter().filter(|f| f.level == Level::Warn).count();
        if healthy {
            println!("\nAll is well.");
        } else {
            println!("\n{fails} problem(s) and {warns} warning(s) need attention.");
        }
    }
    if healthy {
        exit::OK
    } else {
        exit::REJECTED
    }
}

/// After `email set`: interactively, asks for the mailed code and confirms it; otherwise says
/// how to confirm.
fn email_sent(ctx: &Ctx, user: Option<String>, reply: ResponseBody) -> u8 {
    let ResponseBody::EmailSent { masked } = reply else {
        return ctx.report(reply);
    };
    let masked = crate::audit::text(&masked);
    if ctx.json || !std::io::stdin().is_terminal() {
        if ctx.json {
            println!("{}", json!({"result": "email_sent", "masked": masked}));
        } else {
            println!("A code was sent to {masked}; confirm with 'twofold email confirm CODE'.");
        }
        return exit::OK;
    }
    let Some(code) = prompt(&format!("Code sent to {masked}: ")) else {
        return exit::ERROR;
    };
    match ctx.call(RequestBody::EmailConfirm { user, code }) {
        Ok(r) => ctx.report(r),
        Err(e) => e,
    }
}

/// A code given on the command line, or `-` to read one line from standard input (which
/// keeps it out of the process list).
fn read_code_arg(arg: &str) -> Option<SecretText> {
    if arg != "-" {
        return Some(SecretText::new(arg));
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 => Some(SecretText::new(line.trim())),
        _ => None,
    }
}

/// Sends a request that may need a current code; asks for one on the terminal when the
/// daemon says it is required and none was given.
fn with_code(
    ctx: &Ctx,
    code: Option<SecretText>,
    make: impl Fn(Option<SecretText>) -> RequestBody,
    done: impl Fn(&Ctx, ResponseBody) -> u8,
) -> u8 {
    let first = match ctx.call(make(code.clone())) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match first {
        ResponseBody::Error {
            kind: ErrorKind::CodeRequired,
            ..
        } if code.is_none() && std::io::stdin().is_terminal() => {
            let Some(code) = prompt("Current verification code (or a backup code): ") else {
                return exit::ERROR;
            };
            match ctx.call(make(Some(code))) {
                Ok(r) => done(ctx, r),
                Err(e) => e,
            }
        }
        other => done(ctx, other),
    }
}

fn prompt(text: &str) -> Option<SecretText> {
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let mut line = zeroize::Zeroizing::new(String::new());
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 => Some(SecretText::new(line.trim())),
        _ => None,
    }
}

const NO_CODE: &str = "no code on standard input";

impl Ctx {
    /// A usage or local error: one JSON document with `--json`, a line on stderr otherwise.
    fn fail(&self, message: &str) -> u8 {
        if self.json {
            println!(
                "{}",
                json!({"result": "error", "kind": "bad_request", "message": message})
            );
        } else {
            eprintln!("twofold: {message}");
        }
        exit::ERROR
    }

    /// Sends a request; a transport failure is reported and becomes exit status 6.
    fn call(&self, body: RequestBody) -> Result<ResponseBody, u8> {
        self.client.call(body).map_err(|e| {
            let status = match e {
                ClientError::VersionMismatch { .. } => exit::ERROR,
                _ => exit::UNAVAILABLE,
            };
            if self.json {
                println!(
                    "{}",
                    json!({"result": "error", "kind": "unavailable", "message": e.to_string()})
                );
            } else {
                eprintln!("twofold: {e}");
            }
            status
        })
    }

    /// Prints a reply that needs no special layout and returns its exit status.
    fn report(&self, body: ResponseBody) -> u8 {
        let (status, text) = match &body {
            ResponseBody::Accepted {
                method: Method::Totp,
                ..
            } => (exit::OK, "Code accepted.".to_string()),
            ResponseBody::Accepted {
                method: Method::BackupCode,
                backup_codes_left,
            } => (
                exit::OK,
                format!(
                    "Backup code accepted; {} left.",
                    backup_codes_left.unwrap_or(0)
                ),
            ),
            ResponseBody::Accepted {
                method: Method::Email,
                ..
            } => (exit::OK, "Mailed code accepted.".to_string()),
            ResponseBody::Accepted {
                method: Method::Remembered,
                ..
            } => (exit::OK, "Accepted (remembered device).".to_string()),
            ResponseBody::Rejected => (exit::REJECTED, "Invalid verification code.".into()),
            ResponseBody::Throttled { retry_after_secs } => (
                exit::THROTTLED,
                format!(
                    "Too many failed attempts; try again in {} min.",
                    retry_after_secs.div_ceil(60)
                ),
            ),
            ResponseBody::Locked => (
                exit::THROTTLED,
                "Locked after too many failed attempts; ask an administrator ('twofold unlock')."
                    .into(),
            ),
            ResponseBody::NotEnrolled { .. } => (
                exit::NOT_ENROLLED,
                "Not enrolled: run 'twofold enroll'.".into(),
            ),
            ResponseBody::Disabled => (
                exit::ERROR,
                "Two-factor authentication is switched off on this host.".into(),
            ),
            ResponseBody::Done { message } => (exit::OK, format!("{message}.")),
            ResponseBody::Pong { daemon_version } => {
                (exit::OK, format!("twofoldd {daemon_version}"))
            }
            ResponseBody::Error { kind, message } => (
                match kind {
                    ErrorKind::PermissionDenied => exit::DENIED,
                    ErrorKind::Busy | ErrorKind::Storage => exit::UNAVAILABLE,
                    ErrorKind::RateLimited => exit::THROTTLED,
                    _ => exit::ERROR,
                },
                format!("twofold: {message}"),
            ),
            // Replies to other requests: not expected here.
            _ => (
                exit::ERROR,
                "twofold: unexpected answer from twofoldd".into(),
            ),
        };
        if self.json {
            println!(
                "{}",
                serde_json::to_string(&body).unwrap_or_else(|_| "{}".into())
            );
        } else if status == exit::OK {
            println!("{text}");
        } else {
            eprintln!("{text}");
        }
        status
    }
}

/// The QR code as UTF-8 half blocks, dark modules as spaces on a light block background so
/// that it scans on dark and light terminals alike (bright white on black is forced when
/// printing to a terminal).
pub fn qr_text(data: &str) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    Some(
        code.render::<unicode::Dense1x2>()
            .dark_color(unicode::Dense1x2::Dark)
            .light_color(unicode::Dense1x2::Light)
            .quiet_zone(true)
            .build(),
    )
}

pub fn qr_svg(data: &str) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    Some(code.render::<svg::Color>().min_dimensions(256, 256).build())
}

/// Writes a new file only its owner can read. Root writes only into a directory root owns
/// reached without a symbolic link: a user's directory (or a link planted there) would make
/// root create files wherever that user points.
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    if nix::unistd::geteuid().is_root() {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let absolute = std::path::absolute(parent)?;
        if std::fs::canonicalize(parent)? != absolute {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "its directory is reached through a symbolic link (or '..'); as root, name a \
                 plain path",
            ));
        }
        if std::fs::metadata(parent)?.uid() != 0 {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "its directory is not root's; as root, write into a directory root owns",
            ));
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

fn enroll(
    ctx: &Ctx,
    user: Option<String>,
    force: bool,
    qr_svg_path: Option<PathBuf>,
    code: Option<SecretText>,
    params: Option<TotpParams>,
) -> u8 {
    let reply = with_code_enroll(ctx, &user, force, code, params);
    let info = match reply {
        Ok(ResponseBody::Enrollment(info)) => info,
        Ok(other) => return ctx.report(other),
        Err(e) => return e,
    };
    if let Some(path) = &qr_svg_path {
        match qr_svg(info.otpauth_uri.expose()).map(|svg| write_private(path, &svg)) {
            Some(Ok(())) => {}
            Some(Err(e)) => return ctx.fail(&format!("cannot write {}: {e}", path.display())),
            None => return ctx.fail("the otpauth URI does not fit in a QR code"),
        }
    }
    if ctx.json {
        println!(
            "{}",
            json!({
                "user": info.user,
                "secret": info.secret.expose(),
                "otpauth_uri": info.otpauth_uri.expose(),
                "label": info.label,
                "issuer": info.issuer,
            })
        );
        return exit::OK;
    }
    show_enrollment(&info, qr_svg_path.as_ref());
    // Up to three tries at the first code.
    for attempt in 1..=3 {
        let Some(code) = prompt(&format!(
            "Enter the {}-digit code the app shows now: ",
            info.digits
        )) else {
            eprintln!(
                "\nThe enrollment is waiting. Finish it with: twofold confirm CODE{}",
                user_flag(&user)
            );
            return exit::ERROR;
        };
        match ctx.call(RequestBody::Confirm {
            user: user.clone(),
            code,
        }) {
            Ok(ResponseBody::BackupCodes { user: name, codes }) => {
                print_backup_codes(ctx, &name, &codes, true);
                return exit::OK;
            }
            Ok(ResponseBody::Rejected) if attempt < 3 => {
                eprintln!("That code is not right. Check that the phone's time is set automatically, then try the next code.");
            }
            Ok(other) => return ctx.report(other),
            Err(e) => return e,
        }
    }
    eprintln!(
        "Enrollment not confirmed. Run 'twofold enroll{}' to start again.",
        user_flag(&user)
    );
    exit::REJECTED
}

fn parse_algorithm(text: &str) -> Result<Algorithm, String> {
    Algorithm::parse(text).ok_or_else(|| format!("{text:?} is not sha1, sha256 or sha512"))
}

fn with_code_enroll(
    ctx: &Ctx,
    user: &Option<String>,
    force: bool,
    code: Option<SecretText>,
    params: Option<TotpParams>,
) -> Result<ResponseBody, u8> {
    let first = ctx.call(RequestBody::Enroll {
        user: user.clone(),
        force,
        code: code.clone(),
        params,
    })?;
    match first {
        ResponseBody::Error {
            kind: ErrorKind::CodeRequired,
            message,
        } if code.is_none() && std::io::stdin().is_terminal() => {
            let ask = if message.contains("mailed to") {
                eprintln!("{message}");
                "Mailed code: "
            } else {
                "You are replacing your enrollment. Current code (or a backup code): "
            };
            let code = prompt(ask).ok_or(exit::ERROR)?;
            ctx.call(RequestBody::Enroll {
                user: user.clone(),
                force,
                code: Some(code),
                params,
            })
        }
        other => Ok(other),
    }
}

fn user_flag(user: &Option<String>) -> String {
    user.as_ref()
        .map(|u| format!(" --user {u}"))
        .unwrap_or_default()
}

fn show_enrollment(info: &EnrollmentInfo, svg: Option<&PathBuf>) {
    let tty = std::io::stdout().is_terminal();
    println!("Scan this QR code with your authenticator app (Google Authenticator, Authy, Duo Mobile, ...):\n");
    if let Some(qr) = qr_text(info.otpauth_uri.expose()) {
        for line in qr.lines() {
            if tty {
                // Black modules on white, whatever the terminal's colours.
                println!("  \x1b[30;107m{line}\x1b[0m");
            } else {
                println!("  {line}");
            }
        }
    }
    if let Some(path) = svg {
        println!(
            "\n(The QR code is also in {}; delete it once scanned.)",
            path.display()
        );
    }
    println!();
    println!("Account:  {}", info.label);
    println!("Key:      {}", group4(info.secret.expose()));
    println!(
        "          (to type it in: time-based, {}, {} digits, every {} seconds)",
        info.algorithm, info.digits, info.period
    );
    println!();
    let _ = std::io::stdout().flush();
}

fn print_backup_codes(ctx: &Ctx, user: &str, codes: &[SecretText], first_time: bool) {
    if ctx.json {
        let codes: Vec<&str> = codes.iter().map(|c| c.expose()).collect();
        println!("{}", json!({"user": user, "backup_codes": codes}));
        return;
    }
    if first_time {
        println!("Two-factor authentication is now active for {user}.\n");
    } else {
        println!("New backup codes for {user}; the old ones no longer work.\n");
    }
    println!("Backup codes: each works once, at the same prompt as the app's codes, if you");
    println!("lose your phone. Store them somewhere safe and away from this host (a password");
    println!("manager or on paper). They will not be shown again.\n");
    for pair in codes.chunks(2) {
        let line: Vec<&str> = pair.iter().map(|c| c.expose()).collect();
        println!("    {}", line.join("    "));
    }
    println!();
}

fn print_policy(ctx: &Ctx, p: &twofold_shared::wire::PolicyReport) {
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string(p).unwrap_or_else(|_| "{}".into())
        );
        return;
    }
    let names = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
        let more = if v.len() > 8 {
            format!(", … {} more", v.len() - 8)
        } else {
            String::new()
        };
        if v.is_empty() {
            String::new()
        } else {
            format!("  ({}{more})", shown.join(", "))
        }
    };
    if p.enabled {
        println!("Two-factor:         on");
    } else {
        println!(
            "Two-factor:         OFF (enabled = false): every login passes through without a code"
        );
    }
    println!(
        "Not enrolled:       {} (unenrolled = \"{}\")",
        if p.unenrolled == "deny" {
            "refused"
        } else {
            "let through"
        },
        p.unenrolled
    );
    for g in &p.require_groups {
        if g.exists {
            println!(
                "Required for group: {} — {} member(s), {} not enrolled yet",
                g.group, g.members, g.not_enrolled
            );
        } else {
            println!("Required for group: {} — no such group", g.group);
        }
    }
    println!(
        "Self-enrollment:    {}",
        if p.self_enroll {
            "allowed"
        } else {
            "root only"
        }
    );
    println!("Window:             ±{} step(s) of 30 s", p.window);
    println!();
    println!("Local accounts:     {}", p.accounts);
    println!(
        "  asked for a code:        {}{}",
        p.asked_for_code.len(),
        names(&p.asked_for_code)
    );
    println!(
        "  refused until enrolled:  {}{}",
        p.refused_until_enrolled.len(),
        names(&p.refused_until_enrolled)
    );
    println!(
        "  pass without a code:     {}{}",
        p.pass_without_code.len(),
        names(&p.pass_without_code)
    );
    if p.other_enrolled > 0 {
        println!(
            "Other enrollments:  {} (names that are not local accounts)",
            p.other_enrolled
        );
    }
}

/// Reads a google-authenticator file the way its owner's login would: not through a symlink
/// (a user must not make root read another file, cf. CVE-2024-47191), only a regular file
/// owned by the user or root, at most 64 KiB.
fn read_google_authenticator(user: &str, file: Option<PathBuf>) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let account = nix::unistd::User::from_name(user).ok().flatten();
    let path = match (file, &account) {
        (Some(f), _) => f,
        (None, Some(a)) => a.dir.join(".google_authenticator"),
        (None, None) => {
            return Err(format!(
                "{user} has no account here; name the file to import"
            ))
        }
    };
    let shown = path.display().to_string();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("{shown} is a symbolic link; refusing to follow it"),
            _ => format!("cannot open {shown}: {e}"),
        })?;
    let meta = f.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    // A second name for the file (where fs.protected_hardlinks is off, any user can link
    // root's files) would make root read what the user points at.
    if meta.nlink() != 1 {
        return Err(format!(
            "{shown} has {} names (hard links); refusing it",
            meta.nlink()
        ));
    }
    let owner_ok = meta.uid() == 0
        || account
            .as_ref()
            .is_some_and(|a| a.uid.as_raw() == meta.uid());
    if !owner_ok {
        return Err(format!(
            "{shown} belongs to uid {}, neither {user} nor root; refusing it",
            meta.uid()
        ));
    }
    if meta.len() > 64 * 1024 {
        return Err(format!(
            "{shown} is larger than 64 KiB: not a google-authenticator file"
        ));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    f.read_to_end(&mut bytes)
        .map_err(|e| format!("reading {shown}: {e}"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{shown} is not a text file"))
}

fn import_google_authenticator(ctx: &Ctx, user: &str, file: Option<PathBuf>, force: bool) -> u8 {
    let fail = |msg: String| ctx.fail(&msg);
    let text = match read_google_authenticator(user, file) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) => return fail(e),
    };
    let parsed = match crate::import::parse_google_authenticator(&text) {
        Ok(p) => p,
        Err(e) => return fail(format!("not imported: {e}")),
    };
    for note in &parsed.notes {
        if !ctx.json {
            eprintln!("note: {note}");
        }
    }
    let weak = !parsed.scratch.is_empty();
    let request = RequestBody::Import {
        user: user.to_string(),
        secret: SecretText::new(parsed.secret.to_base32()),
        params: parsed.params,
        window: parsed.window,
        backup_codes: parsed
            .scratch
            .iter()
            .map(|c| SecretText::new(c.as_str()))
            .collect(),
        last_used_step: parsed.last_used_step,
        force,
    };
    match ctx.call(request) {
        Ok(reply @ ResponseBody::Done { .. }) => {
            let status = ctx.report(reply);
            if weak && !ctx.json {
                println!("The scratch codes (8 digits) work once each as backup codes; they are weaker than");
                println!(
                    "twofold's own. Give the user new ones: twofold backup-codes --user {user}"
                );
            }
            status
        }
        Ok(other) => ctx.report(other),
        Err(e) => e,
    }
}

/// `90s`, `15m`, `12h`, `7d`, `2w` (or plain seconds) in seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 12h, 7d or 2w"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{text:?}: the unit must be s, m, h, d or w")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

fn print_audit(ctx: &Ctx, entries: &[twofold_shared::wire::AuditEntry], omitted: u64) {
    if ctx.json {
        println!("{}", json!({ "entries": entries, "omitted": omitted }));
        return;
    }
    if omitted > 0 {
        println!("({omitted} older entries not shown; narrow with --since or --user)");
    }
    if entries.is_empty() {
        println!("No audit entries.");
    }
    for e in entries {
        let mut line = format!(
            "{}  {:<13} {:<16} {}",
            format_time_secs(e.time),
            e.event,
            e.user.as_deref().unwrap_or("-"),
            e.outcome
        );
        if let Some(m) = &e.method {
            line.push_str(&format!(" ({m})"));
        }
        for (key, value) in [
            ("service", &e.service),
            ("rhost", &e.rhost),
            ("tty", &e.tty),
        ] {
            if let Some(v) = value {
                line.push_str(&format!(" {key}={v}"));
            }
        }
        if let Some(uid) = e.caller_uid {
            line.push_str(&format!(" by-uid={uid}"));
        }
        if let Some(d) = &e.detail {
            line.push_str(&format!(" — {d}"));
        }
        // Names and PAM items come from clients: never let them drive the terminal.
        let clean: String = line
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        println!("{clean}");
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time_secs(t: u64) -> String {
    let minutes = format_time(t);
    minutes.replacen(" UTC", &format!(":{:02} UTC", t % 60), 1)
}

/// `YYYY-MM-DD HH:MM UTC` from Unix seconds (civil-from-days, proleptic Gregorian).
pub fn format_time(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

fn state_word(s: &UserStatus) -> &'static str {
    match (s.enrolled, s.pending) {
        (true, false) => "enrolled",
        (true, true) => "enrolled (replacement pending)",
        (false, true) => "pending confirmation",
        (false, false) => "not enrolled",
    }
}

fn throttle_word(s: &UserStatus) -> String {
    if s.locked {
        "locked".into()
    } else if let Some(until) = s.throttled_until {
        format!("throttled until {}", format_time(until))
    } else {
        "ok".into()
    }
}

fn print_status(ctx: &Ctx, s: &UserStatus) {
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string(s).unwrap_or_else(|_| "{}".into())
        );
        return;
    }
    println!("User:          {}", s.user);
    println!("Two-factor:    {}", state_word(s));
    if let Some(t) = s.enrolled_at {
        println!("Enrolled:      {}", format_time(t));
    }
    if s.enrolled {
        println!("Backup codes:  {} left", s.backup_codes_left);
        println!(
            "Last success:  {}",
            s.last_success
                .map(format_time)
                .unwrap_or_else(|| "never".into())
        );
    }
    if let Some(email) = &s.email {
        println!(
            "Email:         {} ({})",
            crate::audit::text(email),
            if s.email_verified {
                "verified"
            } else {
                "not verified"
            }
        );
    }
    println!(
        "Failures:      {} consecutive ({})",
        s.failures,
        throttle_word(s)
    );
}

fn print_list(ctx: &Ctx, users: &[UserStatus]) {
    if ctx.json {
        println!("{}", json!({ "users": users }));
        return;
    }
    if users.is_empty() {
        println!("No users enrolled.");
        return;
    }
    println!(
        "{:<24} {:<22} {:>6} {:<22} {:>8}  THROTTLE",
        "USER", "STATE", "BACKUP", "LAST SUCCESS", "FAILURES"
    );
    for s in users {
        println!(
            "{:<24} {:<22} {:>6} {:<22} {:>8}  {}",
            s.user,
            state_word(s),
            s.backup_codes_left,
            s.last_success
                .map(format_time)
                .unwrap_or_else(|| "-".into()),
            s.failures,
            throttle_word(s)
        );
    }
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
        let text = qr_text(uri).unwrap();
        assert!(text.contains('▀') || text.contains('▄') || text.contains('█'));
        // Two module rows per text line: about half as many lines as modules.
        let lines = text.lines().count();
        assert!(lines > 10 && lines < 40, "{lines}");
        assert!(qr_svg(uri).unwrap().starts_with("<?xml"));
    }
}
