-- A twofoldd database of schema 9 (before authenticators had names), written by twofold at
-- commit aa75ab1: `twofold import google-authenticator --user tf-legacy` of a file with the
-- key GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ (a test key), WINDOW_SIZE 5 and the scratch codes
-- 11112222 and 33334444; one code accepted, then two wrong ones. Dumped with `sqlite3 .dump`
-- (which leaves out user_version: the last line sets it). Used by tests/tests/authenticators.rs.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE users (
        name TEXT PRIMARY KEY NOT NULL,
        secret BLOB NOT NULL,
        algorithm TEXT NOT NULL,
        digits INTEGER NOT NULL,
        period INTEGER NOT NULL,
        enrolled_at INTEGER NOT NULL,
        last_step INTEGER NOT NULL,
        last_success INTEGER,
        backup_salt BLOB NOT NULL
    , window INTEGER, uid INTEGER);
INSERT INTO users VALUES('tf-legacy',X'3132333435363738393031323334353637383930','SHA1',6,30,1796208030,59873601,1796208034,X'06f5067cc3f5ab4d92a4e18b19f59d66',2,NULL);
CREATE TABLE backup_codes (
        name TEXT NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (name, hash)
    ) WITHOUT ROWID;
INSERT INTO backup_codes VALUES('tf-legacy',X'4eb8b7401ff0e633cdfc6dc2e4f3b16e2927f8d2693d4f4091feac527bc1a819');
INSERT INTO backup_codes VALUES('tf-legacy',X'fdacf0e0f56c5072a69a2cd40a2c627a61b12c1da7b03729d940d8c484b917e0');
CREATE TABLE pending (
        name TEXT PRIMARY KEY NOT NULL,
        secret BLOB NOT NULL,
        algorithm TEXT NOT NULL,
        digits INTEGER NOT NULL,
        period INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        failed_confirms INTEGER NOT NULL DEFAULT 0
    );
CREATE TABLE throttle (
        name TEXT PRIMARY KEY NOT NULL,
        failures INTEGER NOT NULL,
        last_failure INTEGER NOT NULL
    );
INSERT INTO throttle VALUES('tf-legacy',2,1796208034);
CREATE TABLE counters (
        name TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    );
INSERT INTO counters VALUES('unknown_rejections',0);
CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        event TEXT NOT NULL,
        user TEXT,
        outcome TEXT NOT NULL,
        method TEXT,
        service TEXT,
        rhost TEXT,
        tty TEXT,
        caller_uid INTEGER,
        detail TEXT
    );
INSERT INTO audit VALUES(1,1796208030,'import','tf-legacy','enrolled',NULL,NULL,NULL,NULL,0,'SHA1 6 digits 30 s window ±2 backup codes 2');
INSERT INTO audit VALUES(2,1796208034,'login','tf-legacy','accepted','totp',NULL,NULL,NULL,0,NULL);
INSERT INTO audit VALUES(3,1796208034,'login','tf-legacy','rejected',NULL,NULL,NULL,NULL,0,'wrong code');
INSERT INTO audit VALUES(4,1796208034,'login','tf-legacy','rejected',NULL,NULL,NULL,NULL,0,'wrong code');
CREATE TABLE grace (
        name TEXT NOT NULL,
        service TEXT NOT NULL,
        origin TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (name, service, origin)
    ) WITHOUT ROWID;
CREATE TABLE emails (
        name TEXT PRIMARY KEY NOT NULL,
        address TEXT NOT NULL,
        verified INTEGER NOT NULL DEFAULT 0
    , pending TEXT);
CREATE TABLE email_codes (
        name TEXT NOT NULL,
        purpose TEXT NOT NULL,
        hash BLOB NOT NULL,
        salt BLOB NOT NULL,
        sent_at INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (name, purpose)
    ) WITHOUT ROWID;
CREATE TABLE meta (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
CREATE TABLE invitations (
        name TEXT PRIMARY KEY NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        replace INTEGER NOT NULL DEFAULT 0,
        expiry_noted INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
CREATE TABLE bypass_codes (
        name TEXT PRIMARY KEY NOT NULL,
        hash BLOB NOT NULL,
        salt BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        uses_left INTEGER NOT NULL
    ) WITHOUT ROWID;
CREATE INDEX audit_by_time ON audit (time);
CREATE INDEX audit_by_user ON audit (user, time);
CREATE INDEX audit_by_event ON audit (event, user, time);
CREATE INDEX users_by_uid ON users (uid);
COMMIT;
PRAGMA user_version = 9;
