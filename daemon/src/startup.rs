//! twofoldd's start: the configuration, the state directory, the seal key, the store, the
//! socket, then the engine and its helpers (housekeeping, SIGHUP). Whatever stops the start
//! is one [`StartError`], reported once (log and stderr) with the exit status it calls for.

use crate::audit::Logger;
use crate::config::{Config, StoreKind, DEFAULT_CONFIG};
use crate::engine::Engine;
use crate::seal::{self, Sealer};
use crate::store::Store;
use crate::{clock, files, server, users};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// What the command line may override.
#[derive(Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub database: Option<PathBuf>,
}

/// Why twofoldd did not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration file, or a group it names (exit 2).
    Config(String),
    /// Everything else: the state directory, the database's files, the seal key, the store,
    /// the socket, a thread (exit 1).
    Refused(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(why) | StartError::Refused(why) => f.write_str(why),
        }
    }
}

impl StartError {
    fn status(&self) -> ExitCode {
        ExitCode::from(match self {
            StartError::Config(_) => 2,
            StartError::Refused(_) => 1,
        })
    }
}

fn refused(why: impl fmt::Display) -> StartError {
    StartError::Refused(format!("refusing to start: {why}"))
}

/// Starts and serves until the server stops.
pub fn run(args: Overrides) -> ExitCode {
    // No core dumps and no ptrace by other processes of root's: the memory holds secrets.
    let _ = nix::sys::prctl::set_dumpable(false);
    let log = Arc::new(Logger::open());
    match start(args, &log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                StartError::Config(why) => log.error(&format!("configuration: {why}")),
                StartError::Refused(why) => log.error(why),
            }
            eprintln!("twofoldd: {e}");
            e.status()
        }
    }
}

fn start(args: Overrides, log: &Arc<Logger>) -> Result<(), StartError> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let mut config =
        Config::load(&path, explicit).map_err(|e| StartError::Config(e.to_string()))?;
    if let Some(s) = args.socket {
        config.socket = s;
    }
    if let Some(d) = args.database {
        config.database = d;
    }
    users::check_groups(&config.require_groups).map_err(StartError::Config)?;
    // Everything twofoldd creates (database, WAL, journal) is private to it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let (store, deferred) = open_store(&config, log)?;
    let offline = open_offline_copy(&config, deferred, log)?;
    let cannot = |e: std::io::Error| {
        StartError::Refused(format!("cannot listen on {}: {e}", config.socket.display()))
    };
    let signals = server::stop_signals()
        .map_err(|e| StartError::Refused(format!("cannot handle SIGTERM: {e}")))?;
    let listening = match server::inherited().map_err(cannot)? {
        Some(listener) => server::Listening {
            listener,
            path: config.socket.clone(),
            inherited: true,
            signals,
        },
        None => server::Listening {
            listener: server::bind(&config.socket).map_err(cannot)?,
            path: config.socket.clone(),
            inherited: false,
            signals,
        },
    };
    log.info(&format!(
        "listening on {}{} database={} enabled={} unenrolled={}",
        config.socket.display(),
        if listening.inherited {
            " (from systemd)"
        } else {
            ""
        },
        config.database.display(),
        config.enabled,
        config.unenrolled.name()
    ));
    let database = (config.store != StoreKind::Postgres).then(|| config.database.clone());
    let mut engine = Engine::new(store, config, log.clone());
    if let Some(cache) = offline {
        engine = engine.with_offline(cache);
    }
    serve(engine, listening, path, explicit, log)?;
    if let Some(db) = database {
        // Every answer is out and the write-ahead log is folded back into the database.
        match rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
        {
            Ok(()) => log.info("stopped: every request answered, database checkpointed"),
            Err(e) => log.warn(&format!("stopped; the database checkpoint failed: {e}")),
        }
    } else {
        log.info("stopped: every request answered");
    }
    Ok(())
}

/// The store the configuration names, with the seal key(s), after the local files' checks.
/// `.1`: opened deferred (outage mode, and the database does not answer at start).
fn open_store(config: &Config, log: &Logger) -> Result<(Store, bool), StartError> {
    let postgres = config.store == StoreKind::Postgres;
    if !postgres {
        prepare_state_dir(&config.database)?;
        files::check_database(&config.database, nix::unistd::geteuid().as_raw())
            .map_err(refused)?;
    }
    let keys = seal_keys(config)?;
    let opened = match (&config.postgres_url, postgres) {
        (Some(url), true) => {
            Store::open_postgres(url, config.postgres_password_file.as_deref(), keys)
        }
        _ => Store::open_sealed(&config.database, keys),
    };
    let (store, which) = match (opened, &config.postgres_url) {
        (Err(e), Some(url)) if e.is_unreachable() && crate::offline::can_start_offline(config) => {
            log.warn(&format!(
                "offline: the database does not answer at start ({e}); this host decides \
                 logins from its copy of the fleet until it does"
            ));
            let seal = seal_keys(config)?.into_iter().next();
            let store =
                Store::open_postgres_deferred(url, config.postgres_password_file.as_deref(), seal)
                    .map_err(|e| {
                        StartError::Refused(format!("cannot open the PostgreSQL store: {e}"))
                    })?;
            return Ok((store, true));
        }
        (opened, _) => opened.map_err(|e| {
            StartError::Refused(if postgres {
                format!("cannot open the PostgreSQL store: {e}")
            } else {
                format!("cannot open database {}: {e}", config.database.display())
            })
        })?,
    };
    if let (Some(path), Some(1)) = (&config.seal_key_file, which) {
        // The last rekey committed but its key file was not yet in place.
        seal::promote_pending(path).map_err(refused)?;
        log.warn("seal: finished an interrupted rekey (the new key is now in place)");
    }
    Ok((store, false))
}

/// Outage mode's copy of the fleet (`offline = "cached"`): a private SQLite file, sealed with
/// the fleet's key.
fn open_offline_copy(
    config: &Config,
    start_offline: bool,
    log: &Arc<Logger>,
) -> Result<Option<Arc<crate::offline::Cache>>, StartError> {
    if config.offline != crate::config::Offline::Cached {
        return Ok(None);
    }
    let path = config.offline_cache_path();
    prepare_state_dir(&path)?;
    files::check_database(&path, nix::unistd::geteuid().as_raw()).map_err(refused)?;
    let (copy, _) = Store::open_sealed(&path, seal_keys(config)?).map_err(|e| {
        StartError::Refused(format!(
            "cannot open the offline copy {}: {e} (a copy sealed with another key can be \
             deleted: it is made again from the fleet)",
            path.display()
        ))
    })?;
    log.info(&format!(
        "offline = \"cached\": logins are decided from {} while the database does not answer",
        path.display()
    ));
    let cache = crate::offline::Cache::new(copy, &path, log.clone(), clock::now(), start_offline)
        .map_err(|e| StartError::Refused(format!("cannot read the offline copy: {e}")))?;
    Ok(Some(Arc::new(cache)))
}

/// Creates the database's directory if it is missing (root's alone, under umask 077).
fn prepare_state_dir(database: &Path) -> Result<(), StartError> {
    match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::create_dir_all(dir)
            .map_err(|e| StartError::Refused(format!("cannot create {}: {e}", dir.display()))),
        _ => Ok(()),
    }
}

/// The configured seal key, then a rekey's key that was committed but not yet put in place.
fn seal_keys(config: &Config) -> Result<Vec<Sealer>, StartError> {
    let mut keys = Vec::new();
    if let Some(path) = &config.seal_key_file {
        let owner = nix::unistd::geteuid().as_raw();
        let key = seal::read_key(path, owner).map_err(refused)?;
        keys.push(Sealer::from_key(&key));
        if let Ok(k) = seal::read_key(&seal::pending_path(path), owner) {
            keys.push(Sealer::from_key(&k));
        }
    }
    Ok(keys)
}

/// The engine's helpers, then the server until it stops.
fn serve(
    engine: Engine,
    listening: server::Listening,
    path: PathBuf,
    explicit: bool,
    log: &Arc<Logger>,
) -> Result<(), StartError> {
    let engine = Arc::new(engine);
    let housekeeper = engine.clone();
    let housekeeper_log = log.clone();
    std::thread::Builder::new()
        .name("housekeeping".into())
        .spawn(move || {
            // In the background: a name-service lookup per older enrollment must not hold
            // up the logins (until it is done, those enrollments stay unbound, as before).
            if let Err(e) = housekeeper.adopt_uids() {
                housekeeper_log.error(&format!(
                    "recording the uids of older enrollments failed: {e}"
                ));
            }
            loop {
                housekeeper.housekeeping(clock::now());
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        })
        .map_err(|e| StartError::Refused(format!("cannot start housekeeping: {e}")))?;
    if engine.offline_cache().is_some() {
        let keeper = engine.clone();
        std::thread::Builder::new()
            .name("offline-copy".into())
            .spawn(move || keeper.keep_offline_copy())
            .map_err(|e| StartError::Refused(format!("cannot start the offline copy: {e}")))?;
    }
    let writer = engine.clone();
    let writer_log = log.clone();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || write_metrics(&writer, &writer_log))
        .map_err(|e| StartError::Refused(format!("cannot start the metrics writer: {e}")))?;
    reload_on_sighup(engine.clone(), path, explicit)
        .map_err(|e| StartError::Refused(format!("cannot handle SIGHUP: {e}")))?;
    server::serve(listening, engine, log.clone())
        .map_err(|e| StartError::Refused(format!("server stopped: {e}")))
}

/// Every 15 s, the metrics to `metrics_textfile` when one is set (SIGHUP may set or move it).
/// A failure is logged when it starts and when it ends, not every 15 s.
fn write_metrics(engine: &Engine, log: &Logger) {
    let mut failing = false;
    loop {
        if let Some(path) = engine.config().metrics_textfile.clone() {
            let text = engine.metrics_text(clock::now());
            match (crate::metrics::write_textfile(&path, &text), failing) {
                (Err(e), false) => {
                    // The unit's sandbox makes the directory writable only if it existed at start.
                    let hint = if e.raw_os_error() == Some(libc::EROFS) {
                        " (a directory made after twofoldd started is read-only to it until \
                         `systemctl restart twofoldd`)"
                    } else {
                        ""
                    };
                    log.error(&format!(
                        "metrics: cannot write {}: {e}{hint}",
                        path.display()
                    ));
                    failing = true;
                }
                (Ok(()), true) => {
                    log.info(&format!("metrics: writing {} again", path.display()));
                    failing = false;
                }
                _ => {}
            }
        }
        std::thread::sleep(crate::metrics::TEXTFILE_INTERVAL);
    }
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
                    Err(e) => engine.reload_refused(&e, clock::now()),
                }
            }
        })?;
    Ok(())
}
