//! An enrollment made before authenticators had names (SQLite schema 9, PostgreSQL schema 4) is
//! its account's authenticator `default` after the upgrade, with its key (sealed or not), its
//! high-water mark, window, backup codes and throttle; it still logs in, and its spent codes
//! stay spent. A migration that fails leaves the old schema as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use twofold_shared::otp::{self, TotpParams};

/// Schema 9's last version: before authenticators.
const SQLITE_BEFORE: usize = 9;
const POSTGRES_BEFORE: usize = 4;
const NOW: u64 = 1_800_000_000;

fn secret() -> Secret {
    Secret::from_bytes((1..=20).collect())
}

/// The upgraded store has everything of `old`; its next step's code matches and may be spent
/// once, its spent step stays spent, its backup code is there.
fn check_upgraded(store: Store) {
    let user = store.read(|tx| tx.user("old")).unwrap().unwrap();
    assert_eq!(user.authenticators.len(), 1);
    let a = &user.authenticators[0];
    assert_eq!(a.label, DEFAULT_AUTHENTICATOR);
    assert_eq!(a.kind, twofold_shared::otp::OtpKind::Totp);
    assert_eq!(a.secret, secret());
    assert_eq!(
        (a.last_step, a.window, a.added_at),
        ((NOW / 30) as i64, Some(2), NOW - 600)
    );
    assert_eq!(
        (user.enrolled_at, user.last_success),
        (NOW - 600, Some(NOW - 5))
    );
    assert_eq!(user.uid, Some(4242));
    assert_eq!(store.read(|tx| tx.backup_codes_left("old")).unwrap(), 1);
    assert_eq!(store.read(|tx| tx.throttle("old")).unwrap().failures, 2);
    let next = otp::totp_at(&secret(), &TotpParams::default(), NOW + 30);
    let steps = otp::matching_steps(&a.secret, &a.params, &next, (NOW + 30) / 30, 0);
    assert_eq!(steps, [(NOW + 30) / 30]);
    let d = DEFAULT_AUTHENTICATOR;
    let spent = (NOW / 30) as i64;
    assert!(!store
        .write(move |tx| tx.advance_step("old", d, spent, NOW + 5))
        .unwrap());
    assert!(store
        .write(move |tx| tx.advance_step("old", d, spent + 1, NOW + 30))
        .unwrap());
    let hash = crate::backup::hash("12345678", &[3u8; crate::backup::SALT_BYTES]).unwrap();
    assert!(store
        .write(move |tx| tx.consume_backup_code("old", &hash, NOW + 31))
        .unwrap());
}

/// A database as twofoldd wrote it before this version, with one enrollment of `old`.
fn sqlite_before(path: &Path, seal: Option<&Sealer>) {
    let conn = Connection::open(path).unwrap();
    for sql in &sqlite::MIGRATIONS[..SQLITE_BEFORE] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", SQLITE_BEFORE as i64)
        .unwrap();
    let stored = match seal {
        Some(s) => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('seal_check', ?1)",
                [s.check_value().unwrap()],
            )
            .unwrap();
            s.seal("users", "old", secret().as_bytes()).unwrap()
        }
        None => secret().as_bytes().to_vec(),
    };
    conn.execute(
        "INSERT INTO users (name, secret, algorithm, digits, period, enrolled_at, last_step,
           last_success, backup_salt, window, uid)
         VALUES ('old', ?1, 'SHA1', 6, 30, ?2, ?3, ?4, ?5, 2, 4242)",
        params![
            stored,
            (NOW - 600) as i64,
            (NOW / 30) as i64,
            (NOW - 5) as i64,
            vec![3u8; crate::backup::SALT_BYTES]
        ],
    )
    .unwrap();
    let hash = crate::backup::hash("12345678", &[3u8; crate::backup::SALT_BYTES]).unwrap();
    conn.execute(
        "INSERT INTO backup_codes (name, hash) VALUES ('old', ?1)",
        [hash.as_bytes()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO throttle (name, failures, last_failure) VALUES ('old', 2, ?1)",
        [(NOW - 100) as i64],
    )
    .unwrap();
}

#[test]
fn an_sqlite_enrollment_of_schema_9_becomes_its_default_authenticator() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    sqlite_before(&path, None);
    check_upgraded(Store::open(&path).unwrap());
    let key = Sealer::from_key(&Sealer::generate_key().unwrap());
    let sealed = dir.path().join("sealed.db");
    sqlite_before(&sealed, Some(&key));
    let (store, which) = Store::open_sealed(&sealed, vec![key]).unwrap();
    assert_eq!(which, Some(0));
    check_upgraded(store);
}

#[test]
fn a_failed_migration_leaves_the_old_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    sqlite_before(&path, None);
    // Something in the way of the migration's first statement.
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE authenticators (x INTEGER)")
        .unwrap();
    assert!(Store::open(&path).is_err());
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SQLITE_BEFORE as i64);
    let (stored, last_step): (Vec<u8>, i64) = conn
        .query_row(
            "SELECT secret, last_step FROM users WHERE name = 'old'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (stored, last_step),
        (secret().as_bytes().to_vec(), (NOW / 30) as i64)
    );
}

#[test]
fn a_postgres_enrollment_of_schema_4_becomes_its_default_authenticator() {
    let Some(server) = twofold_tests::Postgres::start("upgrade::postgres") else {
        return;
    };
    let url = server.socket_url();
    let mut client = postgres::connect_with_schema(&url, None).unwrap();
    // Back to schema 4, as an older twofold made it.
    client
        .batch_execute(
            "DROP TABLE authenticators;
             ALTER TABLE users ADD COLUMN secret BYTEA NOT NULL DEFAULT '',
               ADD COLUMN algorithm TEXT NOT NULL DEFAULT 'SHA1',
               ADD COLUMN digits BIGINT NOT NULL DEFAULT 6,
               ADD COLUMN period BIGINT NOT NULL DEFAULT 30,
               ADD COLUMN last_step BIGINT NOT NULL DEFAULT -1,
               ADD COLUMN \"window\" BIGINT;
             ALTER TABLE pending DROP COLUMN label;
             UPDATE twofold_schema SET version = 4;",
        )
        .unwrap();
    // Schema 5 made the authenticators; 6 gave them a kind (time- or counter-based); 7 the
    // one-statement login decision.
    assert_eq!(postgres::MIGRATIONS.len(), POSTGRES_BEFORE + 3);
    client
        .execute(
            "INSERT INTO users (name, secret, algorithm, digits, period, enrolled_at, last_step,
               last_success, backup_salt, \"window\", uid)
             VALUES ('old', $1, 'SHA1', 6, 30, $2, $3, $4, $5, 2, 4242)",
            &[
                &secret().as_bytes().to_vec(),
                &((NOW - 600) as i64),
                &((NOW / 30) as i64),
                &((NOW - 5) as i64),
                &vec![3u8; crate::backup::SALT_BYTES],
            ],
        )
        .unwrap();
    let hash = crate::backup::hash("12345678", &[3u8; crate::backup::SALT_BYTES]).unwrap();
    client
        .execute(
            "INSERT INTO backup_codes (name, hash) VALUES ('old', $1)",
            &[&hash.as_bytes()],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO throttle (name, failures, last_failure) VALUES ('old', 2, $1)",
            &[&((NOW - 100) as i64)],
        )
        .unwrap();
    drop(client);
    let (store, _) = Store::open_postgres(&url, None, Vec::new()).unwrap();
    check_upgraded(store);
}
