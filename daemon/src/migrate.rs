//! `twofold migrate --to postgres`: copies a host's SQLite store into the PostgreSQL store, row
//! for row (secrets, sealed or not, backup-code hashes, replay marks, throttles, pending
//! enrollments, email addresses and codes, remembered devices, the audit trail), in one
//! PostgreSQL transaction, and checks every table's count before it commits.

use crate::config::Config;
use crate::store::schema::{Kind, TABLES};
use postgres::types::ToSql;
use rusqlite::types::Value;
use std::path::Path;

/// One SQLite value as PostgreSQL takes it (integers are BIGINT there, blobs BYTEA).
#[derive(Debug)]
enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

impl Cell {
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int(v) => v,
            Cell::Text(v) => v,
            Cell::Blob(v) => v,
        }
    }
}

fn quoted(column: &str) -> String {
    format!("\"{column}\"")
}

/// Copies everything; returns the rows copied per table. Refuses a PostgreSQL store that
/// already holds enrollments, and a running twofoldd (its later writes would be lost).
pub fn to_postgres(config: &Config, socket: &Path) -> Result<Vec<(String, usize)>, String> {
    let url = config
        .postgres_url
        .as_deref()
        .ok_or("set postgres_url (and postgres_password_file) in the configuration first")?;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(format!(
            "twofoldd is running ({} answers): stop it first, so that no login is lost",
            socket.display()
        ));
    }
    if !config.database.exists() {
        return Err(format!("{} does not exist", config.database.display()));
    }
    let source = rusqlite::Connection::open_with_flags(
        &config.database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{}: {e}", config.database.display()))?;
    let version: i64 = source
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version != crate::store::SCHEMA_VERSION {
        return Err(format!(
            "{} has schema version {version}; start this version of twofoldd on it once (it \
             updates the schema), stop it, then migrate",
            config.database.display()
        ));
    }
    source.execute_batch("BEGIN").map_err(|e| e.to_string())?;
    let mut client =
        crate::store::postgres::connect_with_schema(url, config.postgres_password_file.as_deref())
            .map_err(|e| e.to_string())?;
    let mut tx = client.transaction().map_err(|e| e.to_string())?;
    let existing: i64 = tx
        .query_one("SELECT COUNT(*) FROM users", &[])
        .map_err(|e| e.to_string())?
        .get(0);
    if existing > 0 {
        return Err(format!(
            "the PostgreSQL store already holds {existing} enrollments; migrate only into an \
             empty one"
        ));
    }
    // What a fresh schema put there is replaced by the source's.
    tx.batch_execute("DELETE FROM meta; DELETE FROM counters;")
        .map_err(|e| e.to_string())?;
    let mut copied = Vec::new();
    for t in TABLES {
        let (table, columns) = (t.name, t.columns);
        let list = columns.iter().map(|(c, _)| quoted(c)).collect::<Vec<_>>();
        // The audit trail keeps its order (PostgreSQL numbers its rows anew).
        let order = if table == "audit" { " ORDER BY id" } else { "" };
        let mut select = source
            .prepare(&format!("SELECT {} FROM {table}{order}", list.join(", ")))
            .map_err(|e| e.to_string())?;
        let placeholders = (1..=columns.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({placeholders})",
            list.join(", ")
        );
        let insert = tx.prepare(&insert).map_err(|e| e.to_string())?;
        let mut rows = select.query([]).map_err(|e| e.to_string())?;
        let mut n = 0usize;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let mut cells = Vec::with_capacity(columns.len());
            for (i, (_, kind)) in columns.iter().enumerate() {
                let value: Value = row.get(i).map_err(|e| e.to_string())?;
                cells.push(match (value, kind) {
                    (Value::Null, Kind::Blob) => Cell::Blob(None),
                    (Value::Null, Kind::Text) => Cell::Text(None),
                    (Value::Null, Kind::Int) => Cell::Int(None),
                    (Value::Integer(v), _) => Cell::Int(Some(v)),
                    (Value::Real(v), _) => Cell::Int(Some(v as i64)),
                    (Value::Text(t), _) => Cell::Text(Some(t)),
                    (Value::Blob(b), _) => Cell::Blob(Some(b)),
                });
            }
            let params: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::param).collect();
            tx.execute(&insert, &params)
                .map_err(|e| format!("copying {table}: {e}"))?;
            n += 1;
        }
        let source_count: i64 = source
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        let target_count: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .map_err(|e| e.to_string())?
            .get(0);
        if source_count != target_count || target_count != n as i64 {
            return Err(format!(
                "{table}: {source_count} rows in SQLite but {target_count} in PostgreSQL; \
                 nothing was committed"
            ));
        }
        copied.push((table.to_string(), n));
    }
    tx.commit().map_err(|e| e.to_string())?;
    let _ = source.execute_batch("COMMIT");
    Ok(copied)
}
