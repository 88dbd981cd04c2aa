//! `twofold doctor`: gathers what the pure checks of `crate::doctor` need (the daemon, the
//! files, sshd, the PAM stacks, the clock, the users) and prints their findings.

use super::*;
use crate::doctor::{self, Finding, Level};

fn finding(check: &'static str, level: Level, message: String, fix: Option<&str>) -> Finding {
    Finding {
        check,
        level,
        message,
        fix: fix.map(Into::into),
    }
}

/// Checks the host and prints what it found; exit 0 when all is well.
pub(super) fn run_doctor(
    named_socket: Option<PathBuf>,
    config_path: Option<PathBuf>,
    json_out: bool,
) -> u8 {
    let (config, mut findings) = config_findings(config_path);
    let socket = named_socket.unwrap_or_else(|| config.socket.clone());
    let client = Client::new(&socket, Duration::from_secs(5), vec![0]);
    findings.push(daemon_finding(&client, &socket));
    findings.push(doctor::check_socket(
        &socket,
        doctor::socket_meta(&socket),
        0,
    ));
    findings.extend(store_findings(&config));
    if config.store == crate::config::StoreKind::Postgres {
        let metrics = match client.call(RequestBody::Metrics {}) {
            Ok(ResponseBody::Metrics { text }) => Some(text),
            _ => None,
        };
        findings.push(doctor::check_offline(
            config.offline,
            config.offline_refresh,
            metrics.as_deref(),
            crate::clock::now(),
        ));
    }
    findings.extend(sshd_findings());
    let read = |service: &str| {
        std::fs::read_to_string(std::path::Path::new("/etc/pam.d").join(service)).ok()
    };
    for service in ["sshd", "sudo"] {
        let exists = std::path::Path::new("/etc/pam.d").join(service).exists();
        findings.extend(doctor::check_pam(
            service,
            exists,
            &doctor::twofold_lines(service, &read),
            config.enroll_at_login != crate::config::EnrollAtLogin::Never,
        ));
    }
    let ntp = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    findings.push(doctor::check_clock(ntp.as_deref()));
    let nsswitch = std::fs::read_to_string("/etc/nsswitch.conf").ok();
    findings.push(doctor::check_nss(nsswitch.as_deref()));
    findings.extend(user_findings(&client, &config));
    print_findings(&findings, json_out)
}

/// The configuration file (or the defaults, when it is broken: the other checks still run).
fn config_findings(config_path: Option<PathBuf>) -> (crate::config::Config, Vec<Finding>) {
    let (path, explicit) = match config_path {
        Some(p) => (p, true),
        None => (PathBuf::from(crate::config::DEFAULT_CONFIG), false),
    };
    match doctor::load_config(&path, explicit) {
        Ok(c) => {
            let message = if path.exists() {
                format!("{} is valid", path.display())
            } else {
                format!("{} does not exist: the defaults apply", path.display())
            };
            (c, vec![finding("config", Level::Ok, message, None)])
        }
        Err(e) => (
            crate::config::Config::default(),
            vec![finding(
                "config",
                Level::Fail,
                format!("{e} (twofoldd refuses to start with it)"),
                Some("correct the file; 'man twofold.toml' lists every key"),
            )],
        ),
    }
}

fn daemon_finding(client: &Client, socket: &std::path::Path) -> Finding {
    match client.call(RequestBody::Ping {}) {
        Ok(ResponseBody::Pong { daemon_version }) => finding(
            "daemon",
            Level::Ok,
            format!(
                "twofoldd {daemon_version} answers on {} (protocol {})",
                socket.display(),
                twofold_shared::wire::PROTOCOL_VERSION
            ),
            None,
        ),
        Ok(_) => finding(
            "daemon",
            Level::Fail,
            "twofoldd gave an unexpected answer to ping".into(),
            Some("install matching versions of twofold and twofoldd"),
        ),
        Err(e) => finding(
            "daemon",
            Level::Fail,
            format!("{e}: every protected login is refused until it is back"),
            Some("'systemctl start twofoldd'; 'journalctl -u twofoldd' says why it stopped"),
        ),
    }
}

/// The local database's files, or how the fleet's database is reached.
fn store_findings(config: &crate::config::Config) -> Vec<Finding> {
    if config.store == crate::config::StoreKind::Postgres {
        let url = config.postgres_url.as_deref().unwrap_or_default();
        let password_file = config.postgres_password_file.as_deref();
        let mut out = doctor::check_postgres(
            crate::store::postgres::transport(url),
            password_file.map(crate::store::postgres::check_password_file),
        );
        let replication =
            crate::store::postgres::replication(url, password_file).map_err(|e| e.to_string());
        out.push(doctor::check_replication(replication));
        out
    } else {
        vec![doctor::check_database(
            &config.database,
            doctor::owner_mode(&config.database),
            0,
        )]
    }
}

/// sshd's effective settings (`sshd -T`), when it is installed.
fn sshd_findings() -> Vec<Finding> {
    let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = sshd else {
        return vec![finding(
            "sshd",
            Level::Ok,
            "sshd is not installed".into(),
            None,
        )];
    };
    match std::process::Command::new(bin).arg("-T").output() {
        Ok(out) if out.status.success() => {
            doctor::check_sshd(&String::from_utf8_lossy(&out.stdout))
        }
        Ok(out) => vec![finding(
            "sshd",
            Level::Warn,
            format!(
                "could not read sshd's settings ('sshd -T': {})",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("failed")
            ),
            Some("run 'twofold doctor' as root; 'sshd -t' shows configuration errors"),
        )],
        Err(e) => vec![finding(
            "sshd",
            Level::Warn,
            format!("cannot run sshd -T: {e}"),
            Some("run 'twofold doctor' as root"),
        )],
    }
}

/// Who is enrolled, who is not, who is locked, and names that share a uid (root only).
fn user_findings(client: &Client, config: &crate::config::Config) -> Vec<Finding> {
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
            let mut found = doctor::check_users(&accounts, &enrolled, locked, config.unenrolled);
            found.extend(doctor::check_identities(&passwd, &enrolled, &|name| {
                crate::users::uid_of(name).is_some()
            }));
            found
        }
        Ok(ResponseBody::Error {
            kind: ErrorKind::PermissionDenied,
            ..
        }) => vec![finding(
            "users",
            Level::Warn,
            "only root can see who is enrolled".into(),
            Some("run 'sudo twofold doctor'"),
        )],
        _ => Vec::new(), // the daemon finding already says it is unreachable
    }
}

fn print_findings(findings: &[Finding], json_out: bool) -> u8 {
    let healthy = findings.iter().all(|f| f.level == Level::Ok);
    if json_out {
        println!("{}", json!({ "ok": healthy, "findings": findings }));
    } else {
        for f in findings {
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
