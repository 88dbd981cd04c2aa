//! The tables twofold keeps, their columns and what each holds: written once, for `twofold
//! migrate` (which copies every column of every table) and for the tests that check both
//! backends' migrations arrive at exactly these columns.

/// What a column holds (PostgreSQL: BIGINT, TEXT, BYTEA; SQLite: INTEGER, TEXT, BLOB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Text,
    Blob,
}

use Kind::{Blob, Int, Text};

#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// Every column but a backend's own row number (`audit.id`).
    pub columns: &'static [(&'static str, Kind)],
}

/// In an order that needs no foreign keys.
pub const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            ("name", Text),
            ("enrolled_at", Int),
            ("last_success", Int),
            ("backup_salt", Blob),
            ("uid", Int),
        ],
    },
    Table {
        name: "authenticators",
        columns: &[
            ("name", Text),
            ("label", Text),
            ("secret", Blob),
            ("algorithm", Text),
            ("digits", Int),
            ("period", Int),
            ("added_at", Int),
            ("last_step", Int),
            ("last_used", Int),
            ("window", Int),
            ("kind", Text),
        ],
    },
    Table {
        name: "backup_codes",
        columns: &[("name", Text), ("hash", Blob)],
    },
    Table {
        name: "pending",
        columns: &[
            ("name", Text),
            ("secret", Blob),
            ("algorithm", Text),
            ("digits", Int),
            ("period", Int),
            ("created_at", Int),
            ("failed_confirms", Int),
            ("label", Text),
        ],
    },
    Table {
        name: "throttle",
        columns: &[("name", Text), ("failures", Int), ("last_failure", Int)],
    },
    Table {
        name: "counters",
        columns: &[("name", Text), ("value", Int)],
    },
    Table {
        name: "audit",
        columns: &[
            ("time", Int),
            ("event", Text),
            ("user", Text),
            ("outcome", Text),
            ("method", Text),
            ("service", Text),
            ("rhost", Text),
            ("tty", Text),
            ("caller_uid", Int),
            ("detail", Text),
        ],
    },
    Table {
        name: "grace",
        columns: &[
            ("name", Text),
            ("service", Text),
            ("origin", Text),
            ("at", Int),
        ],
    },
    Table {
        name: "emails",
        columns: &[
            ("name", Text),
            ("address", Text),
            ("verified", Int),
            ("pending", Text),
        ],
    },
    Table {
        name: "email_codes",
        columns: &[
            ("name", Text),
            ("purpose", Text),
            ("hash", Blob),
            ("salt", Blob),
            ("sent_at", Int),
            ("expires", Int),
            ("tries", Int),
        ],
    },
    Table {
        name: "meta",
        columns: &[("key", Text), ("value", Blob)],
    },
    Table {
        name: "invitations",
        columns: &[
            ("name", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("replace", Int),
            ("expiry_noted", Int),
        ],
    },
    Table {
        name: "bypass_codes",
        columns: &[
            ("name", Text),
            ("hash", Blob),
            ("salt", Blob),
            ("created_at", Int),
            ("expires_at", Int),
            ("uses_left", Int),
        ],
    },
];

/// A backend's name for a column's type, as `PRAGMA table_info` or
/// `information_schema.columns` report it, mapped to its kind.
pub fn kind_of(declared: &str) -> Option<Kind> {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" => Some(Int),
        "text" => Some(Text),
        "blob" | "bytea" => Some(Blob),
        _ => None,
    }
}

/// The columns of `table` as a backend reports them (name, declared type), compared with
/// [`TABLES`]: `Err` says what differs.
pub fn check(table: &str, found: &[(String, String)]) -> Result<(), String> {
    let want = TABLES
        .iter()
        .find(|t| t.name == table)
        .ok_or_else(|| format!("{table} is not one of twofold's tables"))?;
    let mut got: Vec<(&str, Option<Kind>)> = found
        .iter()
        .filter(|(name, _)| !(table == "audit" && name == "id"))
        .map(|(name, ty)| (name.as_str(), kind_of(ty)))
        .collect();
    let mut expected: Vec<(&str, Option<Kind>)> =
        want.columns.iter().map(|(n, k)| (*n, Some(*k))).collect();
    got.sort_by_key(|c| c.0);
    expected.sort_by_key(|c| c.0);
    if got == expected {
        Ok(())
    } else {
        Err(format!("{table}: found {got:?}, described {expected:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh SQLite store, after every migration, has exactly the described columns.
    #[test]
    fn sqlite_migrations_arrive_at_the_described_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(crate::store::Store::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut described: Vec<String> = TABLES.iter().map(|t| t.name.to_string()).collect();
        tables.sort();
        described.sort();
        assert_eq!(tables, described);
        for t in TABLES {
            let cols: Vec<(String, String)> = conn
                .prepare(&format!(
                    "SELECT name, type FROM pragma_table_info('{}')",
                    t.name
                ))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            check(t.name, &cols).unwrap();
        }
    }
}
