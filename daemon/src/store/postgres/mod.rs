//! The PostgreSQL store (`store = "postgres"`): many hosts' twofoldd share one database, so a
//! user enrolls once and every rule holds fleet-wide. Every write is one transaction committed
//! before the reply; a transaction that touches a user first takes a transaction-scoped advisory
//! lock on the user's name, so that two hosts deciding about the same user (the same code sent
//! to both, failures counted on both) take turns, exactly as the single SQLite writer does on one
//! host. A login's decision is one statement (`Store::decide`, the function `twofold_decide`
//! of schema 7, which takes the same lock inside). A small pool per host (at most [`POOL`] connections), a connect and statement timeout
//! of [`TIMEOUT`]: a database that is down or slow fails logins closed within the PAM timeout,
//! and the next request reconnects.
//!
//! The database decides who is enrolled, so the way to it must not be forgeable: over TCP TLS
//! is required (`sslmode=require`, `verify-ca` or `verify-full`, which twofold treats alike:
//! the server's certificate is always verified, against `sslrootcert` when given, and must name
//! the host), and a password is only ever sent by SCRAM with channel binding, never in
//! cleartext; a host's own Unix socket needs neither. twofoldd never creates the schema: an
//! empty database is refused until `twofold fleet init` (or `twofold migrate`) sets it up.

mod connect;
mod error;
mod helpdesk;
mod schema;
mod session;
mod tx;

pub use connect::*;
pub(crate) use error::*;
use helpdesk::Table;
pub use schema::*;
use session::*;
use tx::*;

use crate::backup::BackupHash;
use crate::seal::Sealer;
use crate::store::{
    kind_from, params_from, Authenticator, BypassRecord, CodePurpose, EmailRecord, Invitation,
    LoginDecision, LoginState, MailedCode, MarkAdvance, PendingRecord, Result, StoreError,
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

/// Connections one twofoldd keeps at most.
pub const POOL: usize = 4;

/// Connect timeout, statement timeout, lock timeout, and the longest wait for a free connection.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A connection and the statements prepared on it (a statement lives as long as its
/// session): each query is parsed once per connection, not once per use.
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) statements: HashMap<&'static str, Statement>,
}

impl Conn {
    pub(crate) fn new(client: Client) -> Conn {
        Conn {
            client,
            statements: HashMap::new(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Pool {
    pub(crate) idle: Vec<Conn>,
    pub(crate) open: usize,
}

/// Handle to the shared database.
pub struct PgStore {
    pub(crate) config: postgres::Config,
    pub(crate) connector: Connector,
    pub(crate) pool: Mutex<Pool>,
    pub(crate) freed: Condvar,
    pub(crate) seal: Option<Arc<Sealer>>,
    /// Opened while the database did not answer (outage mode, `open_deferred`): the schema
    /// and the seal key are checked on the first connection that answers; no statement runs
    /// before that check has passed.
    pub(crate) deferred: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

/// A pooled connection, given back (or, broken, forgotten) when dropped.
pub(crate) struct Lease<'a> {
    pub(crate) store: &'a PgStore,
    pub(crate) client: Option<Conn>,
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
            deferred: std::sync::atomic::AtomicBool::new(false),
        };
        Ok((store, which))
    }

    /// The store at `url` while it does not answer (outage mode at start): the schema and the
    /// seal key are checked on the first connection that answers (see `check_deferred`);
    /// secrets are taken as sealed with `seal` until then.
    pub fn open_deferred(
        url: &str,
        password_file: Option<&Path>,
        seal: Option<Sealer>,
    ) -> Result<PgStore> {
        let (config, connector) = client_config(url, password_file)?;
        Ok(PgStore {
            config,
            connector,
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
            seal: seal.map(Arc::new),
            deferred: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// What `open` checks, for a store opened deferred, on the first connection that answers:
    /// the schema brought up to date, and the fleet's secrets sealed with this host's key.
    /// Until it passes, every call fails (closed).
    fn check_deferred(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if !self.deferred.load(Ordering::Acquire) {
            return Ok(());
        }
        // One check at a time; the others wait for its result.
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if !self.deferred.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut client = self.connector.connect(&self.config)?;
        upgrade(&mut client)?;
        let check: Option<Vec<u8>> = client
            .query_opt("SELECT value FROM meta WHERE key = 'seal_check'", &[])?
            .map(|r| r.get(0));
        let sealed_alike = match (&check, &self.seal) {
            (Some(c), Some(key)) => key.matches(c),
            (None, None) => true,
            _ => false,
        };
        if !sealed_alike {
            return Err(StoreError::Seal(
                "the fleet's secrets are not sealed with this host's seal_key_file (or not \
                 sealed at all): restart twofoldd now that the database answers"
                    .into(),
            ));
        }
        pool.idle.push(Conn::new(client));
        pool.open += 1;
        self.deferred.store(false, Ordering::Release);
        Ok(())
    }

    pub(crate) fn lease(&self) -> Result<Lease<'_>> {
        self.check_deferred()?;
        let deadline = Instant::now() + TIMEOUT;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = pool.idle.pop() {
                // The server went away (a failover, a restart): connect anew instead.
                if c.client.is_closed() {
                    pool.open = pool.open.saturating_sub(1);
                    continue;
                }
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

    pub(crate) fn run<R>(&self, mode: Mode, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        let mut lease = self.lease()?;
        let Some(Conn { client, statements }) = lease.client.as_mut() else {
            return Err(StoreError::Unavailable);
        };
        let session = match mode {
            Mode::Write => Session::Tx(
                client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()?,
            ),
            Mode::Read => Session::Tx(
                client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?,
            ),
            Mode::One => Session::One { client, ran: false },
        };
        let pg = PgTx {
            tx: RefCell::new(session),
            statements: RefCell::new(statements),
            seal: self.seal.as_deref(),
            // One statement takes no lock of its own (a decision takes it inside).
            write: mode == Mode::Write,
            locked: RefCell::new(HashSet::new()),
        };
        let result = f(&pg);
        let Session::Tx(tx) = pg.tx.into_inner() else {
            return result;
        };
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
        self.run(Mode::Read, f)
    }

    /// Whether the database answers a new connection now (not a pooled one, which may be a
    /// dead one): a connect and `SELECT 1` within the timeout.
    pub fn answers(&self) -> Result<()> {
        self.check_deferred()?;
        let mut client = self.connector.connect(&self.config)?;
        client.simple_query("SELECT 1")?;
        Ok(())
    }

    pub fn write<R>(&self, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        self.run(Mode::Write, f)
    }

    /// `f` runs one statement, on its own (see `Session::One`).
    pub fn one<R>(&self, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        self.run(Mode::One, f)
    }
}

/// How `PgStore::run` runs a store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A snapshot: REPEATABLE READ, read only.
    Read,
    /// READ COMMITTED, under the advisory lock of each user it touches.
    Write,
    /// One statement, its own transaction.
    One,
}

pub(crate) fn choose_seal(
    client: &mut Client,
    keys: Vec<Sealer>,
) -> Result<(Option<Sealer>, Option<usize>)> {
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
                // Authenticators' secrets are bound to their account, as on SQLite.
                for (select, update, binding) in [
                    (
                        "SELECT name, label, secret FROM authenticators",
                        "UPDATE authenticators SET secret = $1 WHERE name = $2 AND label = $3",
                        "users",
                    ),
                    (
                        "SELECT name, '', secret FROM pending",
                        "UPDATE pending SET secret = $1 WHERE name = $2 AND $3::text = ''",
                        "pending",
                    ),
                ] {
                    for row in tx.query(select, &[])? {
                        let (name, label): (String, String) = (row.get(0), row.get(1));
                        let plain = zeroize::Zeroizing::new(row.get::<_, Vec<u8>>(2));
                        let sealed = key.seal(binding, &name, &plain).map_err(StoreError::Seal)?;
                        tx.execute(update, &[&sealed, &name, &label])?;
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
