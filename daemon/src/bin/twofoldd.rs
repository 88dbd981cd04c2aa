//! twofoldd: the only process that reads or writes twofold's secrets.
#![forbid(unsafe_code)]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use twofold_daemon::audit::Logger;
use twofold_daemon::config::{Config, DEFAULT_CONFIG};
use twofold_daemon::{clock, engine::Engine, server, store::Store, users};

/// Serve twofold's second-factor checks on a Unix socket (runs in the foreground).
#[derive(Parser, Debug)]
#[command(name = "twofoldd", version)]
struct Args {
    /// Configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket path (overrides the configuration).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Database path (overrides the configuration).
    #[arg(long, value_name = "PATH")]
    database: Option<PathBuf>,
}

/// SIGHUP re-reads the configuration file; an invalid file keeps the policy in force.
fn reload_on_sighup(engine: Arc<Engine>, path: PathBuf, explicit: bool) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                let checked = Config::load(&path, explicit)
                    .map_err(|e| e.to_string())
                    .and_then(|c| users::check_groups(&c.require_groups).map(|()| c));
                match checked {
                    Ok(config) => engine.reload(config, clock::now()),
                    Err(e) => engine.reload_refused(&e.to_string(), clock::now()),
                }
            }
        })?;
    Ok(())
}

fn main() -> ExitCode {
    // No core dumps and no ptrace by other processes of root's: the memory holds secrets.
    let _ = nix::sys::prctl::set_dumpable(false);
    let args = Args::parse();
    let log = Arc::new(Logger::open());
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let mut config = match Config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => {
            log.error(&format!("configuration: {e}"));
            eprintln!("twofoldd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(s) = args.socket {
        config.socket = s;
    }
    if let Some(d) = args.database {
        config.database = d;
    }
    if let Err(e) = users::check_groups(&config.require_groups) {
        log.error(&format!("configuration: {e}"));
        eprintln!("twofoldd: {e}");
        return ExitCode::from(2);
    }
    // Everything twofoldd creates (database, WAL, journal) is private to it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let postgres = config.store == twofold_daemon::config::StoreKind::Postgres;
    // With the PostgreSQL store there is no local database: nothing to create.
    if let Some(dir) = config
        .database
        .parent()
        .filter(|d| !postgres && !d.as_os_str().is_empty() && !d.exists())
    {
        // Under umask 077: the state directory is root's alone.
        if let Err(e) = std::fs::create_dir_all(dir) {
            let msg = format!("cannot create {}: {e}", dir.display());
            log.error(&msg);
            eprintln!("twofoldd: {msg}");
            return ExitCode::from(1);
        }
    }
    let local_check = if postgres {
        Ok(())
    } else {
        twofold_daemon::files::check_database(&config.database, nix::unistd::geteuid().as_raw())
    };
    if let Err(why) = local_check {
        let msg = format!("refusing to start: {why}");
        log.error(&msg);
        eprintln!("twofoldd: {msg}");
        return ExitCode::from(1);
    }
    // The configured seal key, then a rekey's key that was committed but not yet put in place.
    let mut keys = Vec::new();
    if let Some(path) = &config.seal_key_file {
        let owner = nix::unistd::geteuid().as_raw();
        match twofold_daemon::seal::read_key(path, owner) {
            Ok(k) => keys.push(twofold_daemon::seal::Sealer::from_key(&k)),
            Err(why) => {
                let msg = format!("refusing to start: {why}");
                log.error(&msg);
                eprintln!("twofoldd: {msg}");
                return ExitCode::from(1);
            }
        }
        let pending = twofold_daemon::seal::pending_path(path);
        if let Ok(k) = twofold_daemon::seal::read_key(&pending, owner) {
            keys.push(twofold_daemon::seal::Sealer::from_key(&k));
        }
    }
    let opened = match (&config.postgres_url, postgres) {
        (Some(url), true) => {
            Store::open_postgres(url, config.postgres_password_file.as_deref(), keys)
        }
        _ => Store::open_sealed(&config.database, keys),
    };
    let store = match opened {
        Ok((s, which)) => {
            if let (Some(path), Some(1)) = (&config.seal_key_file, which) {
                // The last rekey committed but its key file was not yet in place.
                if let Err(why) = twofold_daemon::seal::promote_pending(path) {
                    let msg = format!("refusing to start: {why}");
                    log.error(&msg);
                    eprintln!("twofoldd: {msg}");
                    return ExitCode::from(1);
                }
                log.warn("seal: finished an interrupted rekey (the new key is now in place)");
            }
            s
        }
        Err(e) => {
            let msg = if postgres {
                format!("cannot open the PostgreSQL store: {e}")
            } else {
                format!("cannot open database {}: {e}", config.database.display())
            };
            log.error(&msg);
            eprintln!("twofoldd: {msg}");
            return ExitCode::from(1);
        }
    };
    let listener = match server::bind(&config.socket) {
        Ok(l) => l,
        Err(e) => {
            let msg = format!("cannot listen on {}: {e}", config.socket.display());
            log.error(&msg);
            eprintln!("twofoldd: {msg}");
            return ExitCode::from(1);
        }
    };
    log.info(&format!(
        "listening on {} database={} enabled={} unenrolled={}",
        config.socket.display(),
        config.database.display(),
        config.enabled,
        if config.unenrolled == twofold_daemon::config::Unenrolled::Deny {
            "deny"
        } else {
            "allow"
        }
    ));
    let engine = Arc::new(Engine::new(store, config, log.clone()));
    if let Err(e) = engine.adopt_uids() {
        log.error(&format!(
            "recording the uids of older enrollments failed: {e}"
        ));
    }
    let pruner = engine.clone();
    let started = std::thread::Builder::new()
        .name("audit-pruner".into())
        .spawn(move || loop {
            pruner.housekeeping(clock::now());
            std::thread::sleep(std::time::Duration::from_secs(3600));
        });
    if let Err(e) = started {
        log.error(&format!("cannot start the audit pruner: {e}"));
        return ExitCode::from(1);
    }
    if let Err(e) = reload_on_sighup(engine.clone(), path, explicit) {
        log.error(&format!("cannot handle SIGHUP: {e}"));
        return ExitCode::from(1);
    }
    match server::serve(listener, engine, log.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log.error(&format!("server stopped: {e}"));
            ExitCode::from(1)
        }
    }
}
