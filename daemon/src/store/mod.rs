//! The store: everything twofold keeps, behind one contract ([`Tx`], in `tx.rs`), with two
//! backends: a host's own SQLite file (`sqlite/`) and a fleet's shared PostgreSQL
//! (`postgres/`). Each backend implements the primitives, one statement each; the rules
//! inside compound writes are `Tx`'s provided methods, written once; `conformance.rs` (tests)
//! states the contract and runs it on both.
//!
//! SQLite: one writer thread owns the only writing connection. Callers hand it closures; it
//! runs as many as are queued inside one `BEGIN IMMEDIATE … COMMIT`, each in its own
//! savepoint, and answers every caller only after the COMMIT has returned (group commit: one
//! fsync for a batch, and nothing is reported done before it is durable). Reads run on a small
//! pool of reader connections against WAL snapshots and never wait for the writer.

pub mod postgres;
mod records;
pub mod schema;
mod sqlite;
mod tx;
#[cfg(test)]
mod upgrade_tests;

pub use records::*;
use sqlite::Sqlite;
pub use sqlite::SCHEMA_VERSION;
pub use tx::Tx;

use crate::backup::BackupHash;
use crate::seal::Sealer;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use twofold_shared::otp::{Algorithm, OtpKind, TotpParams};
use twofold_shared::secret::Secret;
use twofold_shared::wire::AuditEntry;

/// Handle to the database; cheap to clone and share between connection threads. SQLite on
/// this host (the default), or PostgreSQL shared by many hosts (`store = "postgres"`).
#[derive(Clone, Debug)]
pub struct Store(Arc<Backend>);

#[derive(Debug)]
enum Backend {
    Sqlite(Sqlite),
    Postgres(Box<crate::store::postgres::PgStore>),
}

impl Store {
    /// Opens (creating if needed) an SQLite database, runs migrations and starts the writer
    /// thread. The caller sets the umask so that new files are private.
    pub fn open(path: &Path) -> Result<Store> {
        Ok(Store::open_sealed(path, Vec::new())?.0)
    }

    /// `open`, with the seal keys that may open the database's secrets, in order of preference
    /// (the configured key file, then a rekey's pending key). Returns which one did: a
    /// database never sealed is sealed with the first; one sealed before needs a key that
    /// opens it; a sealed database and no key is an error, as is a key that opens nothing.
    pub fn open_sealed(path: &Path, keys: Vec<Sealer>) -> Result<(Store, Option<usize>)> {
        let (s, which) = Sqlite::open_sealed(path, keys)?;
        Ok((Store(Arc::new(Backend::Sqlite(s))), which))
    }

    /// The PostgreSQL store at `url` (see `pg`), with the same seal keys as `open_sealed`.
    pub fn open_postgres(
        url: &str,
        password_file: Option<&Path>,
        keys: Vec<Sealer>,
    ) -> Result<(Store, Option<usize>)> {
        let (p, which) = crate::store::postgres::PgStore::open(url, password_file, keys)?;
        Ok((Store(Arc::new(Backend::Postgres(Box::new(p)))), which))
    }

    /// Runs `f` in a write transaction; returns once committed. If `f` fails, none of its
    /// changes are kept.
    pub fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&dyn Tx) -> Result<R> + Send + 'static,
    {
        match &*self.0 {
            Backend::Sqlite(s) => s.write(f),
            Backend::Postgres(p) => p.write(f),
        }
    }

    /// Runs `f` against a consistent snapshot.
    pub fn read<R>(&self, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        match &*self.0 {
            Backend::Sqlite(s) => s.read(f),
            Backend::Postgres(p) => p.read(f),
        }
    }

    /// A read that is one statement on PostgreSQL (`Tx::login_state`, `Tx::recorded_uid`,
    /// `Tx::user`): run there without a transaction around it (one statement sees one
    /// snapshot), saving two round trips; on SQLite, `read`.
    pub fn read_one<R>(&self, f: impl FnOnce(&dyn Tx) -> Result<R>) -> Result<R> {
        match &*self.0 {
            Backend::Sqlite(s) => s.read(f),
            Backend::Postgres(p) => p.one(f),
        }
    }

    /// A login decision. On PostgreSQL, `first` (a decision made from a state read before,
    /// and what it means) is applied in one statement if that state still holds
    /// (`Tx::apply_decision`); if it does not (another host decided about the user meanwhile),
    /// or without `first`, `locked` decides in a write transaction, as on SQLite, whose single
    /// writer decides without a round trip and never races.
    pub fn decide<R, F>(
        &self,
        name: &str,
        first: Option<(R, LoginDecision)>,
        locked: F,
    ) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&dyn Tx) -> Result<R> + Send + 'static,
    {
        match &*self.0 {
            Backend::Sqlite(s) => s.write(locked),
            Backend::Postgres(p) => {
                if let Some((meaning, decision)) = first {
                    if p.one(|tx| tx.apply_decision(name, &decision))? {
                        return Ok(meaning);
                    }
                }
                p.write(locked)
            }
        }
    }

    /// Whether the store answers now, on a fresh connection (PostgreSQL; SQLite always does).
    pub fn answers(&self) -> Result<()> {
        match &*self.0 {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(p) => p.answers(),
        }
    }

    /// The PostgreSQL store at `url` while it does not answer (outage mode at start; see
    /// `PgStore::open_deferred`).
    pub fn open_postgres_deferred(
        url: &str,
        password_file: Option<&Path>,
        seal: Option<Sealer>,
    ) -> Result<Store> {
        let p = crate::store::postgres::PgStore::open_deferred(url, password_file, seal)?;
        Ok(Store(Arc::new(Backend::Postgres(Box::new(p)))))
    }

    /// Re-encrypts every secret under `new` (see `Sqlite::rekey`).
    pub fn rekey(&self, new: Sealer) -> Result<usize> {
        match &*self.0 {
            Backend::Sqlite(s) => s.rekey(new),
            Backend::Postgres(_) => Err(StoreError::Seal(
                "seal rekey with store = \"postgres\" is not supported yet".into(),
            )),
        }
    }

    /// Whether `key` opens this database's sealed secrets (false when nothing is sealed).
    pub fn opens_with(&self, key: &Sealer) -> Result<bool> {
        let check = self.read(|tx| tx.seal_check())?;
        Ok(check.is_some_and(|c| key.matches(&c)))
    }
}
