//! The fleet's schema: created once by `twofold fleet init`, upgraded by twofoldd under a lock.

use super::*;

/// The advisory lock that serialises schema migrations between daemons starting together.
pub(crate) const MIGRATION_LOCK: i64 = 0x7477_6f66_6f6c_6473;

/// Schema versions, in order (the table `twofold_schema` records how many have run).
pub(crate) const MIGRATIONS: &[&str] = &[
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
    // 4: invitations to enroll at the login prompt, helpdesk codes
    "CREATE TABLE invitations (
        name TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        replace BIGINT NOT NULL DEFAULT 0,
        expiry_noted BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE bypass_codes (
        name TEXT PRIMARY KEY,
        hash BYTEA NOT NULL,
        salt BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        uses_left BIGINT NOT NULL
    );",
    // 5: an enrollment's authenticators, each with its own key and high-water mark; every
    // enrollment so far becomes its authenticator `default`
    "CREATE TABLE authenticators (
        name TEXT NOT NULL,
        label TEXT NOT NULL,
        secret BYTEA NOT NULL,
        algorithm TEXT NOT NULL,
        digits BIGINT NOT NULL,
        period BIGINT NOT NULL,
        added_at BIGINT NOT NULL,
        last_step BIGINT NOT NULL,
        last_used BIGINT,
        \"window\" BIGINT,
        PRIMARY KEY (name, label)
    );
    INSERT INTO authenticators
        (name, label, secret, algorithm, digits, period, added_at, last_step, last_used, \"window\")
        SELECT name, 'default', secret, algorithm, digits, period, enrolled_at, last_step,
               last_success, \"window\"
        FROM users;
    ALTER TABLE users DROP COLUMN secret, DROP COLUMN algorithm, DROP COLUMN digits,
        DROP COLUMN period, DROP COLUMN last_step, DROP COLUMN \"window\";
    ALTER TABLE pending ADD COLUMN label TEXT NOT NULL DEFAULT 'default';",
    // 6: counter-based (HOTP) authenticators beside time-based ones
    "ALTER TABLE authenticators ADD COLUMN kind TEXT NOT NULL DEFAULT 'totp';",
    // 7: a login decided in one statement (`Tx::apply_decision`, ARCHITECTURE.md §7): under
    // the user's lock (the one `PgTx::lock` takes), the throttle and the mark must still be
    // what the decision saw; then every write of it, or (false) none. Each statement of a
    // PL/pgSQL function reads what was committed before it began, so the checks see
    // everything that committed while the lock was awaited.
    "CREATE OR REPLACE FUNCTION twofold_decide(
        p_name TEXT, p_failures BIGINT, p_last_failure BIGINT,
        p_throttle INT, p_new_failures BIGINT, p_new_last_failure BIGINT,
        p_label TEXT, p_added_at BIGINT, p_last_step BIGINT, p_step BIGINT, p_now BIGINT,
        p_last_success BIGINT, p_audit JSONB,
        p_service TEXT, p_origin TEXT, p_at BIGINT
    ) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
    DECLARE
        f BIGINT := 0;
        lf BIGINT := 0;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_name, 7243));
        SELECT failures, last_failure INTO f, lf FROM throttle WHERE name = p_name;
        IF NOT FOUND THEN
            f := 0;
            lf := 0;
        END IF;
        IF f <> p_failures OR lf <> p_last_failure THEN
            RETURN FALSE;
        END IF;
        IF p_label IS NOT NULL THEN
            UPDATE authenticators SET last_step = p_step, last_used = p_now
            WHERE name = p_name AND label = p_label AND added_at = p_added_at
              AND last_step = p_last_step AND last_step < p_step;
            IF NOT FOUND THEN
                RETURN FALSE;
            END IF;
        END IF;
        IF p_last_success IS NOT NULL THEN
            UPDATE users SET last_success = p_last_success WHERE name = p_name;
        END IF;
        IF p_throttle = 1 THEN
            INSERT INTO throttle (name, failures, last_failure)
            VALUES (p_name, p_new_failures, p_new_last_failure)
            ON CONFLICT (name) DO UPDATE SET failures = excluded.failures,
                last_failure = excluded.last_failure;
        ELSIF p_throttle = 2 THEN
            DELETE FROM throttle WHERE name = p_name;
        END IF;
        INSERT INTO audit (time, event, \"user\", outcome, method, service, rhost, tty,
            caller_uid, detail)
        SELECT time, event, \"user\", outcome, method, service, rhost, tty, caller_uid, detail
        FROM jsonb_populate_recordset(NULL::audit, p_audit);
        IF p_service IS NOT NULL THEN
            INSERT INTO grace (name, service, origin, at) VALUES (p_name, p_service, p_origin, p_at)
            ON CONFLICT (name, service, origin) DO UPDATE SET at = excluded.at;
        END IF;
        RETURN TRUE;
    END
    $$;",
];

/// twofold's tables, the version table first: `fleet init` refuses a database holding any.
/// Every table twofold keeps in PostgreSQL: those of `store/schema.rs`, and the version.
pub(crate) fn table_names() -> Vec<&'static str> {
    std::iter::once("twofold_schema")
        .chain(crate::store::schema::TABLES.iter().map(|t| t.name))
        .collect()
}

pub(crate) const NO_SCHEMA: &str =
    "the database holds no twofold schema, and twofoldd never creates one \
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
pub(crate) fn schema_version(client: &mut Client) -> Result<Option<i64>> {
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

pub(crate) fn create_schema(client: &mut Client, seal: Option<&Sealer>) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let found: Vec<String> = tx
        .query(
            "SELECT t FROM unnest($1::TEXT[]) AS t WHERE to_regclass(quote_ident(t)) IS NOT NULL",
            &[&table_names()],
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
pub(crate) fn upgrade(client: &mut Client) -> Result<()> {
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
