//! The PostgreSQL store (`store = "postgres"`): many hosts' twofoldd share one database, so a
//! user enrolls once and every rule holds fleet-wide. Every write is one transaction committed
//! before the reply; a transaction that touches a user first takes a transaction-scoped advisory
//! lock on the user's name, so that two hosts deciding about the same user (the same code sent
//! to both, failures counted on both) take turns, exactly as the single SQLite writer does on one
//! host. A small pool per host (at most [`POOL`] connections), a connect and statement timeout
//! of [`TIMEOUT`]: a database that is down or slow fails logins closed within the PAM timeout,
//! and the next request reconnects.
//!
//! The database decides who is enrolled, so the way to it must not be forgeable: over TCP TLS
//! is required (`sslmode=require`, `verify-ca` or `verify-full`, which twofold treats alike:
//! the server's certificate is always verified, against `sslrootcert` when given, and must name
//! the host), and a password is only ever sent by SCRAM with channel binding, never in
//! cleartext; a host's own Unix socket needs neither. twofoldd never creates the schema: an
//! empty database is refused until `twofold fleet init` (or `twofold migrate`) sets it up.

use crate::seal::Sealer;
use crate::store::{
    params_from, CodePurpose, EmailRecord, MailedCode, PendingRecord, Result, StoreError,
    ThrottleRecord, Tx, UserRecord,
};
use postgres::types::ToSql;
use postgres::{Client, IsolationLevel, Row, Statement, Transaction};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres_rustls::MakeRustlsConnect;
use twofold_shared::secret::Secret;
use twofold_shared::wire::AuditEntry;

use crate::backup::BackupHash;

/// Connections one twofoldd keeps at most.
pub const POOL: usize = 4;
/// Connect timeout, statement timeout, lock timeout, and the longest wait for a free connection.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The advisory lock that serialises schema migrations between daemons starting together.
const MIGRATION_LOCK: i64 = 0x7477_6f66_6f6c_6473;

/// Schema versions, in order (the table `twofold_schema` records how many have run).
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        secret BYTEA NOT NULL,
        algorithm TEXT NOT NULL,
        digits BIGINT NOT NULL,
        period BIGINT NOT NULL,
        enrolled_at BIGINT NOT NULL,
        last_step BIGINT NOT NULL,
        last_success BIGINT,
        backup_salt BYTEA NOT NULL,
        \"window\" BIGINT
    );
    CREATE TABLE backup_codes (
        name TEXT NOT NULL,
        hash BYTEA NOT NULL,
        PRIMARY KEY (name, hash)
    );
    CREATE TABLE pending (
        name TEXT PRIMARY KEY,
        secret BYTEA NOT NULL,
        algorithm TEXT NOT NULL,
        digits BIGINT NOT NULL,
        period BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        failed_confirms BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE throttle (
        name TEXT PRIMARY KEY,
        failures BIGINT NOT NULL,
        last_failure BIGINT NOT NULL
    );
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('unknown_rejections', 0);
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        time BIGINT NOT NULL,
        event TEXT NOT NULL,
        \"user\" TEXT,
        outcome TEXT NOT NULL,
        method TEXT,
        service TEXT,
        rhost TEXT,
        tty TEXT,
        caller_uid BIGINT,
        detail TEXT
    );
    CREATE INDEX audit_by_time ON audit (time);
    CREATE INDEX audit_by_user ON audit (\"user\", time);
    CREATE INDEX audit_by_event ON audit (event, \"user\", time);
    CREATE TABLE grace (
        name TEXT NOT NULL,
        service TEXT NOT NULL,
        origin TEXT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (name, service, origin)
    );
    CREATE TABLE emails (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        verified BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE email_codes (
        name TEXT NOT NULL,
        purpose TEXT NOT NULL,
        hash BYTEA NOT NULL,
        salt BYTEA NOT NULL,
        sent_at BIGINT NOT NULL,
        expires BIGINT NOT NULL,
        tries BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (name, purpose)
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );",
    // 2: an enrollment belongs to an account: its uid
    "ALTER TABLE users ADD COLUMN uid BIGINT;
    CREATE INDEX users_by_uid ON users (uid);",
    // 3: a new address waits beside the verified one until it is verified itself
    "ALTER TABLE emails ADD COLUMN pending TEXT;",
];

fn pg_error(e: postgres::Error) -> StoreError {
    // The cause (a refused certificate, a reset connection) is what an administrator needs.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    StoreError::Remote(text)
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        pg_error(e)
    }
}

/// A connection and the statements prepared on it (a statement lives as long as its
/// session): each query is parsed once per connection, not once per use.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    fn new(client: Client) -> Conn {
        Conn {
            client,
            statements: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

/// Handle to the shared database.
pub struct PgStore {
    config: postgres::Config,
    connector: Connector,
    pool: Mutex<Pool>,
    freed: Condvar,
    seal: Option<Arc<Sealer>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

/// A pooled connection, given back (or, broken, forgotten) when dropped.
struct Lease<'a> {
    store: &'a PgStore,
    client: Option<Conn>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut pool = self.store.pool.lock().unwrap_or_else(|p| p.into_inner());
        match self.client.take() {
            Some(c) if !c.client.is_closed() => pool.idle.push(c),
            _ => pool.open = pool.open.saturating_sub(1),
        }
        drop(pool);
        self.store.freed.notify_one();
    }
}

impl PgStore {
    /// Connects, brings an existing schema up to date (one daemon at a time, under an
    /// advisory lock; a database without the schema is refused, see [`init`]), and checks the
    /// seal keys as the SQLite store does: a database never sealed is sealed with the first
    /// key; a sealed one needs a key that opens it.
    pub fn open(
        url: &str,
        password_file: Option<&Path>,
        keys: Vec<Sealer>,
    ) -> Result<(PgStore, Option<usize>)> {
        let (config, connector) = client_config(url, password_file)?;
        let mut client = connector.connect(&config)?;
        upgrade(&mut client)?;
        let (seal, which) = choose_seal(&mut client, keys)?;
        let store = PgStore {
            config,
            connector,
            pool: Mutex::new(Pool {
                idle: vec![Conn::new(client)],
                open: 1,
            }),
            freed: Condvar::new(),
            seal: seal.map(Arc::new),
        };
        Ok((store, which))
    }

    pub fn sealed(&self) -> bool {
        self.seal.is_some()
    }

    fn lease(&self) -> Result<Lease<'_>> {
        let deadline = Instant::now() + TIMEOUT;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(Lease {
                    store: self,
                    client: Some(c),
                });
            }
            if pool.open < POOL {
                pool.open += 1;
                drop(pool);
                return match self.connector.connect(&self.config) {
                    Ok(c) => Ok(Lease {
                        store: self,
                        client: Some(Conn::new(c)),
                    }),
                    Err(e) => {
                        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                        pool.open -= 1;
                        drop(pool);
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Remote(format!(
                    "all {POOL} connections to PostgreSQL are busy"
                )));
            }
            pool = self
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn run<R>(&self, write: bool, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        let mut lease = self.lease()?;
        let Some(Conn { client, statements }) = lease.client.as_mut() else {
            return Err(StoreError::Unavailable);
        };
        let tx = if write {
            client
                .build_transaction()
                .isolation_level(IsolationLevel::ReadCommitted)
                .start()?
        } else {
            client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?
        };
        let pg = PgTx {
            tx: RefCell::new(tx),
            statements: RefCell::new(statements),
            seal: self.seal.as_deref(),
            write,
            locked: RefCell::new(HashSet::new()),
        };
        let result = f(&pg);
        let tx = pg.tx.into_inner();
        match result {
            // Committed before the caller hears of it: the reply follows durability.
            Ok(value) => {
                tx.commit()?;
                Ok(value)
            }
            Err(e) => {
                let _ = tx.rollback();
                Err(e)
            }
        }
    }

    pub fn read<R>(&self, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        self.run(false, f)
    }

    pub fn write<R>(&self, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        self.run(true, f)
    }
}

/// How twofoldd reaches the database, as `postgres_url` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// This host's Unix socket directory (`host=/var/run/postgresql`): no network, no TLS.
    Socket(String),
    /// TCP to `hosts`, TLS required: `sslmode` as written (require, verify-ca or verify-full)
    /// and the roots the server's certificate is verified against (`sslrootcert`, else the
    /// public roots).
    Tls {
        hosts: String,
        sslmode: String,
        rootcert: Option<String>,
    },
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Socket(dir) => write!(
                f,
                "this host's Unix socket in {dir} (no network, so no TLS; sslmode does not apply)"
            ),
            Transport::Tls {
                hosts,
                sslmode,
                rootcert,
            } => {
                write!(
                f,
                "TCP to {hosts} with TLS required (sslmode={sslmode}); the server's certificate \
                 is verified against {} and must name the host",
                rootcert.as_deref().unwrap_or("the public roots (no sslrootcert)")
            )
            }
        }
    }
}

/// What twofold makes of `sslmode` over TCP: only modes that refuse a server without TLS.
/// twofold always verifies the certificate and the name, so all three mean verify-full.
const TLS_MODES: &[&str] = &["require", "verify-ca", "verify-full"];

fn remote(why: String) -> StoreError {
    StoreError::Remote(why)
}

/// How `postgres_url` reaches the server (for `twofold doctor`; twofoldd checks the same).
pub fn transport(url: &str) -> std::result::Result<Transport, String> {
    parse_url(url).map(|(_, t)| t).map_err(|e| match e {
        StoreError::Remote(why) => why,
        other => other.to_string(),
    })
}

/// The driver's settings for `url` and the transport they use: TCP only with TLS required,
/// a Unix socket without TLS (the server offers none there).
fn parse_url(url: &str) -> Result<(postgres::Config, Transport)> {
    let (url, rootcert) = take_option(url, "sslrootcert");
    let (url, sslmode) = take_option(&url, "sslmode");
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| remote(format!("postgres_url: {e}")))?;
    let transport = transport_of(&config, sslmode, rootcert)?;
    config.ssl_mode(match transport {
        Transport::Socket(_) => postgres::config::SslMode::Disable,
        Transport::Tls { .. } => postgres::config::SslMode::Require,
    });
    Ok((config, transport))
}

fn transport_of(
    config: &postgres::Config,
    sslmode: Option<String>,
    rootcert: Option<String>,
) -> Result<Transport> {
    use postgres::config::Host;
    let (mut names, mut sockets) = (Vec::new(), Vec::new());
    for host in config.get_hosts() {
        match host {
            Host::Tcp(name) => names.push(name.clone()),
            Host::Unix(dir) => sockets.push(dir.display().to_string()),
        }
    }
    let addrs = config.get_hostaddrs();
    if names.is_empty() && sockets.is_empty() {
        return Err(remote(if addrs.is_empty() {
            "postgres_url names no host: host=/var/run/postgresql (this host's socket) or \
             host=NAME sslmode=verify-full"
                .into()
        } else {
            "postgres_url gives hostaddr without host: add host=NAME, the name the server's \
             certificate is checked against"
                .into()
        }));
    }
    if !sockets.is_empty() {
        if !names.is_empty() || !addrs.is_empty() {
            return Err(remote(
                "postgres_url mixes a Unix socket with TCP hosts: use one or the other".into(),
            ));
        }
        return Ok(Transport::Socket(sockets.join(",")));
    }
    let hosts = names.join(",");
    match sslmode {
        Some(mode) if TLS_MODES.contains(&mode.as_str()) => Ok(Transport::Tls {
            hosts,
            sslmode: mode,
            rootcert,
        }),
        mode => Err(remote(format!(
            "postgres_url reaches {hosts} over TCP with {}: twofold needs TLS there, or a man \
             in the middle could answer for the database (every user would look unenrolled); \
             add sslmode=verify-full and sslrootcert=FILE (the CA of the server's certificate), \
             or use this host's Unix socket (host=/var/run/postgresql)",
            match mode {
                Some(m) => format!("sslmode={m}"),
                None => "no sslmode (the driver would fall back to plain text)".into(),
            }
        ))),
    }
}

/// The connection settings: `url` (never holding a password), the password from its file,
/// and the timeouts that make a dead or slow database fail logins closed in time. Over TCP a
/// password is only ever given to SCRAM with channel binding (`channel_binding=require`):
/// the driver then refuses a server that asks for it in cleartext or by MD5 before sending
/// anything, and the exchange is bound to the verified TLS session.
fn client_config(url: &str, password_file: Option<&Path>) -> Result<(postgres::Config, Connector)> {
    let (url, binding) = take_option(url, "channel_binding");
    let (mut config, transport) = parse_url(&url)?;
    let connector = match &transport {
        Transport::Socket(_) => Connector::Socket,
        Transport::Tls { rootcert, .. } => Connector::Tls(tls_connector(rootcert.as_deref())?),
    };
    if let Some(file) = password_file {
        let password = read_password(file)?;
        config.password(password.as_bytes());
    }
    let tcp_password = password_file.is_some() && matches!(transport, Transport::Tls { .. });
    config.channel_binding(channel_binding(binding.as_deref(), tcp_password)?);
    let timeout_ms = TIMEOUT.as_millis();
    config
        .connect_timeout(TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .options(&format!(
            "-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms} \
                 -c idle_in_transaction_session_timeout=10000"
        ))
        .application_name("twofoldd");
    Ok((config, connector))
}

/// `channel_binding` as written, and `require` whenever a password goes over TCP.
fn channel_binding(
    written: Option<&str>,
    tcp_password: bool,
) -> Result<postgres::config::ChannelBinding> {
    use postgres::config::ChannelBinding;
    let mode = match written {
        None | Some("prefer") => ChannelBinding::Prefer,
        Some("require") => ChannelBinding::Require,
        Some("disable") => ChannelBinding::Disable,
        Some(other) => {
            return Err(remote(format!(
                "postgres_url: channel_binding={other} is not one of disable, prefer, require"
            )))
        }
    };
    match (tcp_password, mode) {
        (false, mode) => Ok(mode),
        (true, ChannelBinding::Disable) => Err(remote(
            "postgres_url: channel_binding=disable with a password over TCP: twofold sends the \
             password only by SCRAM with channel binding; remove channel_binding"
                .into(),
        )),
        (true, _) => Ok(ChannelBinding::Require),
    }
}

/// `postgres_password_file` passes the SMTP password file's check (`email::check_password_file`:
/// a regular file, not a symlink, owned by root or the daemon's user, private to it).
pub fn check_password_file(file: &Path) -> std::result::Result<(), String> {
    crate::email::check_password_file(file)
        .map_err(|why| why.replacen("email.password_file", "postgres_password_file", 1))
}

/// The password file, checked, then read without following a symlink.
fn read_password(file: &Path) -> Result<zeroize::Zeroizing<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    check_password_file(file).map_err(remote)?;
    let unreadable =
        |e: std::io::Error| remote(format!("postgres_password_file {}: {e}", file.display()));
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(unreadable)?;
    let kept = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(kept);
    Ok(text)
}

/// Makes connections: TLS over TCP, none on a Unix socket (where the TLS connector would
/// fail, having no host name to check).
#[derive(Clone)]
enum Connector {
    Tls(MakeRustlsConnect),
    Socket,
}

impl Connector {
    fn connect(&self, config: &postgres::Config) -> Result<Client> {
        let connected = match self {
            Connector::Tls(tls) => config.connect(tls.clone()),
            Connector::Socket => config.connect(postgres::NoTls),
        };
        connected.map_err(|e| match pg_error(e) {
            StoreError::Remote(why) if why.contains("channel binding") => remote(format!(
                "{why} (twofold gives its password only to SCRAM-SHA-256 with channel binding \
                 over TLS, never in cleartext or by MD5: set this user's method in pg_hba.conf \
                 to scram-sha-256)"
            )),
            other => other,
        })
    }
}

/// Removes `key=value` (key=value form, or a `?`/`&` parameter of the URL form) from `url`,
/// returning the rest and the value: `sslrootcert` is ours to read, not the driver's, and
/// `sslmode` and `channel_binding` ours to judge.
fn take_option(url: &str, key: &str) -> (String, Option<String>) {
    let prefix = format!("{key}=");
    if let Some((base, query)) = url.split_once('?') {
        let mut found = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| match p.strip_prefix(&prefix) {
                Some(v) => {
                    found = Some(v.to_string());
                    false
                }
                None => true,
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, found);
    }
    let mut found = None;
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|p| match p.strip_prefix(&prefix) {
            Some(v) => {
                found = Some(v.trim_matches('\'').to_string());
                false
            }
            None => true,
        })
        .collect();
    (kept.join(" "), found)
}

/// The TLS connector: the server's certificate always verified, against `sslrootcert` (a PEM
/// file) or, without it, the public roots, and its name checked.
fn tls_connector(root_file: Option<&str>) -> Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    match root_file {
        Some(file) => {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(file)
                .map_err(|e| remote(format!("sslrootcert {file}: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| remote(format!("sslrootcert {file}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| remote(format!("sslrootcert {file}: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| remote(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// twofold's tables, the version table first: `fleet init` refuses a database holding any.
const TABLES: &[&str] = &[
    "twofold_schema",
    "users",
    "backup_codes",
    "pending",
    "throttle",
    "counters",
    "audit",
    "grace",
    "emails",
    "email_codes",
    "meta",
];

const NO_SCHEMA: &str = "the database holds no twofold schema, and twofoldd never creates one \
     (an empty database could be anyone's): create it once for the fleet with 'twofold fleet \
     init' (as root, with this configuration), or move a host's store there with 'twofold \
     migrate --to postgres'";

/// `twofold fleet init`: creates the schema in a database that holds none of twofold's tables,
/// with the seal key's check value when `seal` is given, in one transaction.
pub fn init(url: &str, password_file: Option<&Path>, seal: Option<&Sealer>) -> Result<()> {
    let (config, connector) = client_config(url, password_file)?;
    let mut client = connector.connect(&config)?;
    create_schema(&mut client, seal)
}

/// A connection with the schema in place (for `twofold migrate`, an administrator's explicit
/// act: it creates the schema in an empty database).
pub fn connect_with_schema(url: &str, password_file: Option<&Path>) -> Result<Client> {
    let (config, connector) = client_config(url, password_file)?;
    let mut client = connector.connect(&config)?;
    if schema_version(&mut client)?.is_none() {
        create_schema(&mut client, None)?;
    }
    upgrade(&mut client)?;
    Ok(client)
}

/// The schema version the database records; `None` when it holds no twofold schema.
fn schema_version(client: &mut Client) -> Result<Option<i64>> {
    let present: bool = client
        .query_one("SELECT to_regclass('twofold_schema') IS NOT NULL", &[])?
        .get(0);
    if !present {
        return Ok(None);
    }
    Ok(client
        .query_opt("SELECT version FROM twofold_schema", &[])?
        .map(|r| r.get(0)))
}

fn create_schema(client: &mut Client, seal: Option<&Sealer>) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let found: Vec<String> = tx
        .query(
            "SELECT t FROM unnest($1::TEXT[]) AS t WHERE to_regclass(quote_ident(t)) IS NOT NULL",
            &[&TABLES],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !found.is_empty() {
        return Err(remote(format!(
            "the database already holds twofold tables ({}): 'twofold fleet init' sets up an \
             empty database only, and nothing was changed",
            found.join(", ")
        )));
    }
    tx.batch_execute("CREATE TABLE twofold_schema (version BIGINT NOT NULL);")?;
    for sql in MIGRATIONS {
        tx.batch_execute(sql)?;
    }
    let version = MIGRATIONS.len() as i64;
    tx.execute(
        "INSERT INTO twofold_schema (version) VALUES ($1)",
        &[&version],
    )?;
    if let Some(key) = seal {
        let check = key.check_value().map_err(StoreError::Seal)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('seal_check', $1)",
            &[&check],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Brings an existing schema up to date, one daemon at a time; a database without the schema
/// is refused (see [`NO_SCHEMA`]).
fn upgrade(client: &mut Client) -> Result<()> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = (|| -> Result<()> {
        let found = schema_version(client)?.ok_or_else(|| remote(NO_SCHEMA.into()))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)?;
            tx.execute("DELETE FROM twofold_schema", &[])?;
            tx.execute(
                "INSERT INTO twofold_schema (version) VALUES ($1)",
                &[&((i + 1) as i64)],
            )?;
            tx.commit()?;
        }
        Ok(())
    })();
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

fn choose_seal(client: &mut Client, keys: Vec<Sealer>) -> Result<(Option<Sealer>, Option<usize>)> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let check: Option<Vec<u8>> = tx
        .query_opt("SELECT value FROM meta WHERE key = 'seal_check'", &[])?
        .map(|r| r.get(0));
    let chosen =
        match check {
            None if keys.is_empty() => (None, None),
            Some(_) if keys.is_empty() => return Err(StoreError::Seal(
                "the database's secrets are sealed, and no seal_key_file is configured; set it \
                 to the key every host shares"
                    .into(),
            )),
            Some(check) => {
                let i = keys.iter().position(|k| k.matches(&check)).ok_or_else(|| {
                    StoreError::Seal(
                        "the seal key does not open this database (each host needs the same key)"
                            .into(),
                    )
                })?;
                (keys.into_iter().nth(i), Some(i))
            }
            None => {
                let key = keys.into_iter().next().ok_or(StoreError::Unavailable)?;
                for table in ["users", "pending"] {
                    let rows = tx.query(&format!("SELECT name, secret FROM {table}"), &[])?;
                    for row in rows {
                        let (name, plain): (String, Vec<u8>) = (row.get(0), row.get(1));
                        let plain = zeroize::Zeroizing::new(plain);
                        let sealed = key.seal(table, &name, &plain).map_err(StoreError::Seal)?;
                        tx.execute(
                            &format!("UPDATE {table} SET secret = $1 WHERE name = $2"),
                            &[&sealed, &name],
                        )?;
                    }
                }
                let check = key.check_value().map_err(StoreError::Seal)?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('seal_check', $1)",
                    &[&check],
                )?;
                (Some(key), Some(0))
            }
        };
    tx.commit()?;
    Ok(chosen)
}

struct PgTx<'a> {
    tx: RefCell<Transaction<'a>>,
    statements: RefCell<&'a mut HashMap<&'static str, Statement>>,
    seal: Option<&'a Sealer>,
    write: bool,
    /// Users whose advisory lock this transaction holds.
    locked: RefCell<HashSet<String>>,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];
type Sql = &'static str;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn count(n: i64) -> u32 {
    n.clamp(0, i64::from(u32::MAX)) as u32
}

impl PgTx<'_> {
    /// In a write, every statement about a user runs under that user's lock: another host's
    /// transaction about the same user waits for this one to commit.
    /// `sql` prepared on this connection, once.
    fn statement(&self, sql: Sql) -> Result<Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.tx.borrow_mut().prepare(sql)?;
        self.statements.borrow_mut().insert(sql, prepared.clone());
        Ok(prepared)
    }

    fn lock(&self, name: &str) -> Result<()> {
        if !self.write || self.locked.borrow().contains(name) {
            return Ok(());
        }
        let lock = self.statement("SELECT pg_advisory_xact_lock(hashtextextended($1, 7243))")?;
        self.tx.borrow_mut().execute(&lock, &[&name])?;
        self.locked.borrow_mut().insert(name.to_string());
        Ok(())
    }

    fn exec(&self, name: Option<&str>, sql: Sql, params: Params<'_>) -> Result<u64> {
        if let Some(n) = name {
            self.lock(n)?;
        }
        let statement = self.statement(sql)?;
        Ok(self.tx.borrow_mut().execute(&statement, params)?)
    }

    fn one(&self, name: Option<&str>, sql: Sql, params: Params<'_>) -> Result<Option<Row>> {
        if let Some(n) = name {
            self.lock(n)?;
        }
        let statement = self.statement(sql)?;
        Ok(self.tx.borrow_mut().query_opt(&statement, params)?)
    }

    fn all(&self, sql: Sql, params: Params<'_>) -> Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.tx.borrow_mut().query(&statement, params)?)
    }

    fn stored_secret(&self, table: &str, name: &str, secret: &Secret) -> Result<Vec<u8>> {
        match self.seal {
            Some(s) => s
                .seal(table, name, secret.as_bytes())
                .map_err(StoreError::Seal),
            None => Ok(secret.as_bytes().to_vec()),
        }
    }

    fn read_secret(&self, table: &str, name: &str, stored: Vec<u8>) -> Result<Secret> {
        match self.seal {
            Some(s) => s
                .open(table, name, &stored)
                .map(Secret::from_bytes)
                .map_err(StoreError::Seal),
            None => Ok(Secret::from_bytes(stored)),
        }
    }
}

impl Tx for PgTx<'_> {
    fn seal_check(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .one(None, "SELECT value FROM meta WHERE key = 'seal_check'", &[])?
            .map(|r| r.get(0)))
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let Some(r) = self.one(
            Some(name),
            "SELECT secret, algorithm, digits, period, enrolled_at, last_step, last_success,
                    backup_salt, \"window\", uid FROM users WHERE name = $1",
            &[&name],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(UserRecord {
            name: name.to_string(),
            secret: self.read_secret("users", name, r.get(0))?,
            params: params_from(r.get(1), r.get(2), r.get(3))?,
            enrolled_at: r.get::<_, i64>(4).max(0) as u64,
            last_step: r.get(5),
            last_success: r.get::<_, Option<i64>>(6).map(|t| t.max(0) as u64),
            backup_salt: r.get(7),
            window: r.get::<_, Option<i64>>(8).map(|w| w.clamp(0, 10) as u32),
            uid: r
                .get::<_, Option<i64>>(9)
                .and_then(|u| u32::try_from(u).ok()),
        }))
    }

    fn user_names(&self) -> Result<Vec<String>> {
        Ok(self
            .all("SELECT name FROM users ORDER BY name", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn enrollments_for(&self, name: &str, uid: u32) -> Result<Vec<(String, Option<u32>)>> {
        Ok(self
            .all(
                "SELECT name, uid FROM users WHERE name = $1 OR uid = $2",
                &[&name, &i64::from(uid)],
            )?
            .iter()
            .map(|r| {
                let uid: Option<i64> = r.get(1);
                (r.get(0), uid.and_then(|u| u32::try_from(u).ok()))
            })
            .collect())
    }

    fn names_without_uid(&self) -> Result<Vec<String>> {
        Ok(self
            .all(
                "SELECT name FROM users WHERE uid IS NULL ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn set_user_uid(&self, name: &str, uid: u32) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE users SET uid = $2 WHERE name = $1",
            &[&name, &i64::from(uid)],
        )?;
        Ok(())
    }

    fn pending(&self, name: &str) -> Result<Option<PendingRecord>> {
        let Some(r) = self.one(
            Some(name),
            "SELECT secret, algorithm, digits, period, created_at, failed_confirms
             FROM pending WHERE name = $1",
            &[&name],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(PendingRecord {
            secret: self.read_secret("pending", name, r.get(0))?,
            params: params_from(r.get(1), r.get(2), r.get(3))?,
            created_at: r.get::<_, i64>(4).max(0) as u64,
            failed_confirms: count(r.get(5)),
        }))
    }

    fn pending_names(&self) -> Result<Vec<String>> {
        Ok(self
            .all("SELECT name FROM pending ORDER BY name", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn throttle(&self, name: &str) -> Result<ThrottleRecord> {
        Ok(self
            .one(
                Some(name),
                "SELECT failures, last_failure FROM throttle WHERE name = $1",
                &[&name],
            )?
            .map(|r| ThrottleRecord {
                failures: count(r.get(0)),
                last_failure: r.get::<_, i64>(1).max(0) as u64,
            })
            .unwrap_or_default())
    }

    fn backup_codes_left(&self, name: &str) -> Result<u32> {
        let n: i64 = self
            .one(
                Some(name),
                "SELECT COUNT(*) FROM backup_codes WHERE name = $1",
                &[&name],
            )?
            .map_or(0, |r| r.get(0));
        Ok(count(n))
    }

    fn advance_step(&self, name: &str, step: i64, now: u64) -> Result<bool> {
        let changed = self.exec(
            Some(name),
            "UPDATE users SET last_step = $2, last_success = $3 WHERE name = $1 AND last_step < $2",
            &[&name, &step, &to_i64(now)],
        )?;
        Ok(changed == 1)
    }

    fn delete_backup_code(&self, name: &str, hash: &BackupHash) -> Result<bool> {
        let changed = self.exec(
            Some(name),
            "DELETE FROM backup_codes WHERE name = $1 AND hash = $2",
            &[&name, &hash.as_bytes()],
        )?;
        Ok(changed == 1)
    }

    fn set_last_success(&self, name: &str, now: u64) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE users SET last_success = $2 WHERE name = $1",
            &[&name, &to_i64(now)],
        )?;
        Ok(())
    }

    fn set_throttle(&self, name: &str, state: ThrottleRecord) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO throttle (name, failures, last_failure) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET failures = excluded.failures,
               last_failure = excluded.last_failure",
            &[
                &name,
                &i64::from(state.failures),
                &to_i64(state.last_failure),
            ],
        )?;
        Ok(())
    }

    fn clear_throttle(&self, name: &str) -> Result<()> {
        self.exec(Some(name), "DELETE FROM throttle WHERE name = $1", &[&name])?;
        Ok(())
    }

    fn count_unknown_rejection(&self) -> Result<()> {
        self.exec(
            None,
            "UPDATE counters SET value = value + 1 WHERE name = 'unknown_rejections'",
            &[],
        )?;
        Ok(())
    }

    fn put_pending(&self, name: &str, p: &PendingRecord) -> Result<()> {
        let secret = zeroize::Zeroizing::new(self.stored_secret("pending", name, &p.secret)?);
        self.exec(
            Some(name),
            "INSERT INTO pending (name, secret, algorithm, digits, period, created_at,
               failed_confirms) VALUES ($1, $2, $3, $4, $5, $6, 0)
             ON CONFLICT (name) DO UPDATE SET secret = excluded.secret,
               algorithm = excluded.algorithm, digits = excluded.digits,
               period = excluded.period, created_at = excluded.created_at, failed_confirms = 0",
            &[
                &name,
                &secret.as_slice(),
                &p.params.algorithm.name(),
                &i64::from(p.params.digits),
                &to_i64(p.params.period),
                &to_i64(p.created_at),
            ],
        )?;
        Ok(())
    }

    fn delete_pending(&self, name: &str) -> Result<()> {
        self.exec(Some(name), "DELETE FROM pending WHERE name = $1", &[&name])?;
        Ok(())
    }

    fn count_failed_confirm(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE pending SET failed_confirms = failed_confirms + 1 WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    fn put_user(&self, u: &UserRecord) -> Result<()> {
        let name = u.name.as_str();
        let secret = zeroize::Zeroizing::new(self.stored_secret("users", name, &u.secret)?);
        self.exec(
            Some(name),
            "INSERT INTO users (name, secret, algorithm, digits, period, enrolled_at, last_step,
               last_success, backup_salt, \"window\", uid)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (name) DO UPDATE SET secret = excluded.secret,
               algorithm = excluded.algorithm, digits = excluded.digits, period = excluded.period,
               enrolled_at = excluded.enrolled_at, last_step = excluded.last_step,
               last_success = excluded.last_success, backup_salt = excluded.backup_salt,
               \"window\" = excluded.\"window\", uid = excluded.uid",
            &[
                &name,
                &secret.as_slice(),
                &u.params.algorithm.name(),
                &i64::from(u.params.digits),
                &to_i64(u.params.period),
                &to_i64(u.enrolled_at),
                &u.last_step,
                &u.last_success.map(to_i64),
                &u.backup_salt,
                &u.window.map(i64::from),
                &u.uid.map(i64::from),
            ],
        )?;
        Ok(())
    }

    fn forget_devices(&self, name: &str) -> Result<()> {
        self.exec(Some(name), "DELETE FROM grace WHERE name = $1", &[&name])?;
        Ok(())
    }

    fn set_backup_salt(&self, name: &str, salt: &[u8]) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE users SET backup_salt = $2 WHERE name = $1",
            &[&name, &salt],
        )?;
        Ok(())
    }

    fn delete_backup_codes(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "DELETE FROM backup_codes WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    fn insert_backup_code(&self, name: &str, hash: &BackupHash) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO backup_codes (name, hash) VALUES ($1, $2)",
            &[&name, &hash.as_bytes()],
        )?;
        Ok(())
    }

    fn delete_user_row(&self, name: &str) -> Result<bool> {
        let removed = self.exec(Some(name), "DELETE FROM users WHERE name = $1", &[&name])?;
        Ok(removed == 1)
    }

    fn email(&self, name: &str) -> Result<Option<EmailRecord>> {
        Ok(self
            .one(
                Some(name),
                "SELECT address, verified FROM emails WHERE name = $1",
                &[&name],
            )?
            .map(|r| EmailRecord {
                address: r.get(0),
                verified: r.get::<_, i64>(1) != 0,
            }))
    }

    fn upsert_email(&self, name: &str, address: &str) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO emails (name, address, verified) VALUES ($1, $2, 0)
             ON CONFLICT (name) DO UPDATE SET
               pending = CASE WHEN emails.verified = 1 THEN excluded.address ELSE NULL END,
               address = CASE WHEN emails.verified = 1 THEN emails.address
                              ELSE excluded.address END",
            &[&name, &address],
        )?;
        Ok(())
    }

    fn mark_email_verified(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE emails SET address = COALESCE(pending, address), pending = NULL,
             verified = 1 WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    fn delete_email_row(&self, name: &str) -> Result<bool> {
        let removed = self.exec(Some(name), "DELETE FROM emails WHERE name = $1", &[&name])?;
        Ok(removed == 1)
    }

    fn delete_mailed_codes(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "DELETE FROM email_codes WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    fn mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<Option<MailedCode>> {
        Ok(self
            .one(
                Some(name),
                "SELECT hash, salt, sent_at, expires, tries FROM email_codes
                 WHERE name = $1 AND purpose = $2",
                &[&name, &purpose.key()],
            )?
            .map(|r| MailedCode {
                hash: r.get(0),
                salt: r.get(1),
                sent_at: r.get::<_, i64>(2).max(0) as u64,
                expires: r.get::<_, i64>(3).max(0) as u64,
                tries: count(r.get(4)),
            }))
    }

    fn put_mailed_code(&self, name: &str, purpose: CodePurpose, c: &MailedCode) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO email_codes (name, purpose, hash, salt, sent_at, expires, tries)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name, purpose) DO UPDATE SET hash = excluded.hash,
               salt = excluded.salt, sent_at = excluded.sent_at, expires = excluded.expires,
               tries = excluded.tries",
            &[
                &name,
                &purpose.key(),
                &c.hash,
                &c.salt,
                &to_i64(c.sent_at),
                &to_i64(c.expires),
                &i64::from(c.tries),
            ],
        )?;
        Ok(())
    }

    fn delete_mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<()> {
        self.exec(
            Some(name),
            "DELETE FROM email_codes WHERE name = $1 AND purpose = $2",
            &[&name, &purpose.key()],
        )?;
        Ok(())
    }

    fn kill_mailed_code(&self, name: &str, purpose: CodePurpose) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE email_codes SET expires = 0, hash = $3 WHERE name = $1 AND purpose = $2",
            &[&name, &purpose.key(), &vec![0u8; 32]],
        )?;
        Ok(())
    }

    fn count_mailed_code_try(&self, name: &str, purpose: CodePurpose) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE email_codes SET tries = tries + 1 WHERE name = $1 AND purpose = $2",
            &[&name, &purpose.key()],
        )?;
        Ok(())
    }

    fn prune_mailed_codes(&self, before: u64) -> Result<usize> {
        Ok(self.exec(
            None,
            "DELETE FROM email_codes WHERE sent_at < $1 AND expires < $1",
            &[&to_i64(before)],
        )? as usize)
    }

    fn mails_sent_since(&self, name: &str, since: u64) -> Result<u32> {
        let n: i64 = self
            .one(
                Some(name),
                "SELECT COUNT(*) FROM audit WHERE event = 'email' AND \"user\" = $1
                 AND outcome IN ('sent', 'failed') AND time >= $2",
                &[&name, &to_i64(since)],
            )?
            .map_or(0, |r| r.get(0));
        Ok(count(n))
    }

    fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.exec(
            None,
            "INSERT INTO audit (time, event, \"user\", outcome, method, service, rhost, tty,
               caller_uid, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &to_i64(e.time),
                &e.event,
                &e.user,
                &e.outcome,
                &e.method,
                &e.service,
                &e.rhost,
                &e.tty,
                &e.caller_uid.map(i64::from),
                &e.detail,
            ],
        )?;
        Ok(())
    }

    fn remember(&self, name: &str, service: &str, origin: &str, at: u64) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO grace (name, service, origin, at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name, service, origin) DO UPDATE SET at = excluded.at",
            &[&name, &service, &origin, &to_i64(at)],
        )?;
        Ok(())
    }

    fn remembered_at(&self, name: &str, service: &str, origin: &str) -> Result<Option<u64>> {
        Ok(self
            .one(
                Some(name),
                "SELECT at FROM grace WHERE name = $1 AND service = $2 AND origin = $3",
                &[&name, &service, &origin],
            )?
            .map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn audit_entries(
        &self,
        user: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, u64)> {
        let since = to_i64(since);
        let total: i64 = self
            .one(
                None,
                "SELECT COUNT(*) FROM audit WHERE time >= $1 AND ($2::TEXT IS NULL OR \"user\" = $2)",
                &[&since, &user],
            )?
            .map_or(0, |r| r.get(0));
        let mut entries: Vec<AuditEntry> = self
            .all(
                "SELECT time, event, \"user\", outcome, method, service, rhost, tty, caller_uid,
                        detail FROM audit
                 WHERE time >= $1 AND ($2::TEXT IS NULL OR \"user\" = $2)
                 ORDER BY time DESC, id DESC LIMIT $3",
                &[&since, &user, &i64::from(limit)],
            )?
            .iter()
            .map(|r| AuditEntry {
                time: r.get::<_, i64>(0).max(0) as u64,
                event: r.get(1),
                user: r.get(2),
                outcome: r.get(3),
                method: r.get(4),
                service: r.get(5),
                rhost: r.get(6),
                tty: r.get(7),
                caller_uid: r
                    .get::<_, Option<i64>>(8)
                    .and_then(|u| u32::try_from(u).ok()),
                detail: r.get(9),
            })
            .collect();
        entries.reverse();
        let omitted = (total.max(0) as u64).saturating_sub(entries.len() as u64);
        Ok((entries, omitted))
    }

    fn prune_audit(&self, before: u64) -> Result<usize> {
        Ok(self.exec(
            None,
            "DELETE FROM audit WHERE time < $1",
            &[&to_i64(before)],
        )? as usize)
    }

    fn prune_audit_beyond(&self, keep: u64) -> Result<usize> {
        Ok(self.exec(
            None,
            "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET $1)",
            &[&to_i64(keep)],
        )? as usize)
    }

    fn prune_grace(&self, before: u64) -> Result<usize> {
        Ok(self.exec(None, "DELETE FROM grace WHERE at < $1", &[&to_i64(before)])? as usize)
    }

    fn prune_pending(&self, before: u64) -> Result<usize> {
        Ok(self.exec(
            None,
            "DELETE FROM pending WHERE created_at < $1",
            &[&to_i64(before)],
        )? as usize)
    }

    fn prune_throttle(&self, before: u64, lockout: u32) -> Result<usize> {
        let lockout = if lockout == 0 {
            i64::MAX
        } else {
            i64::from(lockout)
        };
        Ok(self.exec(
            None,
            "DELETE FROM throttle WHERE last_failure < $1 AND failures < $2
             AND name NOT IN (SELECT name FROM users)",
            &[&to_i64(before), &lockout],
        )? as usize)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use postgres::config::{ChannelBinding, SslMode};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tcp_needs_a_tls_mode_that_refuses_plain_text() {
        for url in [
            "host=db.example.org user=twofold",
            "host=db.example.org sslmode=prefer",
            "host=db.example.org sslmode=disable",
            "host=db.example.org sslmode=allow",
            "host=127.0.0.1 port=5432 sslrootcert=/etc/ca.pem",
            "postgresql://twofold@db.example.org/twofold",
            "postgresql://twofold@db.example.org/twofold?sslmode=prefer",
        ] {
            let why = transport(url).unwrap_err();
            assert!(why.contains("sslmode=verify-full"), "{url}: {why}");
        }
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("host=db.example.org sslmode={mode} sslrootcert=/etc/ca.pem");
            let (config, t) = parse_url(&url).unwrap();
            assert_eq!(config.get_ssl_mode(), SslMode::Require, "{mode}");
            assert_eq!(
                t,
                Transport::Tls {
                    hosts: "db.example.org".into(),
                    sslmode: mode.into(),
                    rootcert: Some("/etc/ca.pem".into())
                }
            );
        }
        let (config, _) =
            parse_url("postgresql://twofold@db.example.org/twofold?sslmode=verify-full").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(config.get_dbname(), Some("twofold"));
    }

    #[test]
    fn a_unix_socket_needs_no_tls_and_mixing_is_refused() {
        for url in [
            "host=/var/run/postgresql dbname=twofold",
            "host=/var/run/postgresql sslmode=verify-full",
            "postgresql://twofold@%2Fvar%2Frun%2Fpostgresql/twofold",
        ] {
            let (config, t) = parse_url(url).unwrap();
            assert_eq!(t, Transport::Socket("/var/run/postgresql".into()), "{url}");
            assert_eq!(config.get_ssl_mode(), SslMode::Disable, "{url}");
        }
        for url in [
            "host=/var/run/postgresql,db.example.org sslmode=require",
            "host=/var/run/postgresql hostaddr=10.0.0.1 sslmode=require",
            "hostaddr=10.0.0.1 sslmode=require",
            "dbname=twofold",
        ] {
            assert!(transport(url).is_err(), "{url}");
        }
    }

    #[test]
    fn a_password_over_tcp_is_given_only_with_channel_binding() {
        assert_eq!(
            channel_binding(None, true).unwrap(),
            ChannelBinding::Require
        );
        assert_eq!(
            channel_binding(Some("prefer"), true).unwrap(),
            ChannelBinding::Require
        );
        assert!(channel_binding(Some("disable"), true).is_err());
        assert!(channel_binding(Some("sometimes"), false).is_err());
        assert_eq!(
            channel_binding(None, false).unwrap(),
            ChannelBinding::Prefer
        );
        assert_eq!(
            channel_binding(Some("disable"), false).unwrap(),
            ChannelBinding::Disable
        );
    }

    #[test]
    fn the_password_file_is_checked_like_the_smtp_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password(&file).unwrap().as_str(), "s3cret");
        let url = "host=db.example.org sslmode=verify-full";
        let (config, _) = client_config(url, Some(&file)).unwrap();
        assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(config.get_channel_binding(), ChannelBinding::Require);
        // Through a symlink: refused, even to a good file.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let why = check_password_file(&link).unwrap_err();
        assert!(
            why.contains("postgres_password_file") && why.contains("regular file"),
            "{why}"
        );
        assert!(client_config(url, Some(&link)).is_err());
        // Open to others.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(check_password_file(&file)
            .unwrap_err()
            .contains("chmod 600"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Owned by another user (as root only: chown).
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let why = check_password_file(&file).unwrap_err();
            assert!(why.contains("owned by root"), "{why}");
        }
    }

    #[test]
    fn options_twofold_judges_are_taken_out_of_both_url_forms() {
        assert_eq!(
            take_option("host=a sslmode=verify-full user=b", "sslmode"),
            ("host=a user=b".to_string(), Some("verify-full".to_string()))
        );
        assert_eq!(
            take_option("postgresql://a/b?sslmode=require&sslrootcert=/c", "sslmode"),
            (
                "postgresql://a/b?sslrootcert=/c".to_string(),
                Some("require".to_string())
            )
        );
        assert_eq!(
            take_option("host=a", "sslmode"),
            ("host=a".to_string(), None)
        );
    }
}
