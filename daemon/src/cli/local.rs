//! Commands that run without twofoldd: doctor, seal init, fleet init, migrate.

use super::*;

/// `twofold migrate --to postgres`: copies the SQLite store, verifying every table's count.
pub(super) fn migrate(
    to: &str,
    config_path: Option<PathBuf>,
    socket: Option<PathBuf>,
    json_out: bool,
) -> u8 {
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
pub(super) fn fleet_init(config_path: Option<PathBuf>, json_out: bool) -> u8 {
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
pub(super) fn seal_init(config_path: Option<PathBuf>, json_out: bool) -> u8 {
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
