//! `/etc/twofold/twofold.toml`: unknown keys are an error, every key has a default.

use crate::throttle::ThrottleConfig;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/twofold/twofold.toml";
pub const DEFAULT_DATABASE: &str = "/var/lib/twofold/twofold.db";
/// The largest window twofold accepts (±10 steps), configured or imported.
pub const MAX_WINDOW: u32 = 10;

/// Where enrollments live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// An SQLite file on this host (`database`).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by many hosts (`postgres_url`).
    Postgres,
}

/// What a login on the PostgreSQL store does when the database does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Offline {
    /// Refused: fails closed, as every error does.
    #[default]
    Deny,
    /// Decided by this host alone from its sealed copy of the fleet's enrollments, under
    /// stricter rules, and merged into the fleet when the database answers again.
    Cached,
}

/// What happens to users who have not enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unenrolled {
    /// The module answers PAM_IGNORE: the rest of the stack decides.
    #[default]
    Allow,
    /// The login is refused with the enrollment message.
    Deny,
}

/// Who may enroll in the login's own conversation (QR code, first code, backup codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EnrollAtLogin {
    Never,
    /// Accounts root invited (`twofold invite`), while the invitation is open.
    #[default]
    Invited,
    /// Every account without a factor, at its first login (trust on first use).
    Always,
}

impl EnrollAtLogin {
    pub fn name(self) -> &'static str {
        match self {
            EnrollAtLogin::Never => "never",
            EnrollAtLogin::Invited => "invited",
            EnrollAtLogin::Always => "always",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub socket: PathBuf,
    pub database: PathBuf,
    /// Shown in authenticator apps; the host name when unset.
    pub issuer: Option<String>,
    /// Off: the module answers PAM_IGNORE for everyone.
    pub enabled: bool,
    /// Time steps accepted either side of now (0..=10).
    pub window: u32,
    pub unenrolled: Unenrolled,
    /// Members of these groups are refused until they enroll, whatever `unenrolled` says.
    pub require_groups: Vec<String>,
    /// Whether users may enroll themselves (otherwise only root enrolls).
    pub self_enroll: bool,
    pub enroll_at_login: EnrollAtLogin,
    /// Backup codes issued per user.
    pub backup_codes: u32,
    /// Authenticators (apps, tokens) one account may have.
    pub max_authenticators: u32,
    /// Codes a counter-based (HOTP) token may be ahead of the last one accepted (1..=100).
    pub hotp_window: u32,
    /// Connections served at once; more are answered "busy".
    pub max_connections: usize,
    /// Seconds a client has to send its request.
    pub request_timeout: u64,
    /// Seconds a pending enrollment waits for its first code.
    pub pending_ttl: u64,
    /// Days the audit trail is kept in the database.
    pub audit_days: u64,
    /// Entries the audit trail keeps at most (the oldest go first), whatever their age.
    pub audit_max_entries: u64,
    pub throttle: ThrottleConfig,
    /// Whether users may have one-time codes mailed to their verified address.
    pub email_codes: bool,
    /// A user with a verified address and no authenticator app gets an emailed code at login.
    pub email_auto: bool,
    /// Seconds a mailed code (login or address verification) stays valid.
    pub email_code_ttl: u64,
    /// Seconds before another code of the same kind may be mailed to a user (0 to 3600).
    pub email_resend_secs: u64,
    pub email: crate::email::EmailConfig,
    /// A key file (32 random bytes, root only; `twofold seal init` makes one): when set, TOTP
    /// secrets are sealed in the database with it. Unset: stored as they are.
    pub seal_key_file: Option<PathBuf>,
    /// `sqlite` (default) or `postgres`.
    pub store: StoreKind,
    /// With `store = "postgres"`: a libpq-style URL or key=value string, without the password.
    pub postgres_url: Option<String>,
    /// A root-owned file (not readable by others) holding the PostgreSQL password.
    pub postgres_password_file: Option<PathBuf>,
    /// With `store = "postgres"`: `deny` (default) or `cached` (outage mode).
    pub offline: Offline,
    /// Outage mode's sealed copy of the fleet (an SQLite file); default `fleet-cache.db`
    /// beside `database`.
    pub offline_cache: Option<PathBuf>,
    /// Seconds between refreshes of that copy while the database answers.
    pub offline_refresh: u64,
    /// Consecutive failures that lock a user out of offline logins on this host.
    pub offline_lockout_after: u32,
    /// Whether backup codes are copied and accepted offline (each is then spent on the
    /// first host that sees it; the fleet learns of it when that host reconnects).
    pub offline_backup_codes: bool,
    /// Where twofoldd writes its metrics every 15 s for node_exporter's textfile collector
    /// (a `.prom` file in its directory). Unset: not written (`twofold metrics` still prints them).
    pub metrics_textfile: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from(twofold_shared::DEFAULT_SOCKET),
            database: PathBuf::from(DEFAULT_DATABASE),
            issuer: None,
            enabled: true,
            window: 1,
            unenrolled: Unenrolled::Allow,
            require_groups: Vec::new(),
            self_enroll: true,
            enroll_at_login: EnrollAtLogin::Invited,
            backup_codes: 12,
            max_authenticators: 5,
            hotp_window: 10,
            max_connections: 256,
            request_timeout: 5,
            pending_ttl: 900,
            audit_days: 90,
            audit_max_entries: 1_000_000,
            throttle: ThrottleConfig::default(),
            email_codes: false,
            email_auto: false,
            email_code_ttl: 600,
            email_resend_secs: 60,
            email: crate::email::EmailConfig::default(),
            seal_key_file: None,
            store: StoreKind::Sqlite,
            postgres_url: None,
            postgres_password_file: None,
            offline: Offline::Deny,
            offline_cache: None,
            offline_refresh: 60,
            offline_lockout_after: 10,
            offline_backup_codes: false,
            metrics_textfile: None,
        }
    }
}

/// `postgres://user:secret@host/...`: a password in the URL's user part.
fn url_has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

impl Unenrolled {
    pub fn name(self) -> &'static str {
        match self {
            Unenrolled::Allow => "allow",
            Unenrolled::Deny => "deny",
        }
    }
}

#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Outage mode's sealed copy of the fleet.
    pub fn offline_cache_path(&self) -> PathBuf {
        self.offline_cache.clone().unwrap_or_else(|| {
            self.database
                .parent()
                .unwrap_or(Path::new("/"))
                .join("fleet-cache.db")
        })
    }

    fn validate_offline(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_string()));
        if self.offline == Offline::Deny {
            return Ok(());
        }
        if self.store != StoreKind::Postgres {
            return fail("offline = \"cached\" is for store = \"postgres\" (an SQLite store is always on this host)");
        }
        if self.seal_key_file.is_none() {
            return fail("offline = \"cached\" needs seal_key_file: the host's copy of the fleet's secrets is sealed with the fleet's key");
        }
        if self.offline_cache_path() == self.database {
            return fail("offline_cache must not be the database file");
        }
        if !(1..=86_400).contains(&self.offline_refresh) {
            return fail("offline_refresh is out of range (1 to 86400 s)");
        }
        if !(1..=100).contains(&self.offline_lockout_after) {
            return fail("offline_lockout_after is out of range (1 to 100)");
        }
        Ok(())
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path`. A missing file is an error only when `explicit` (given with --config).
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                Config::parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(e) => Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.store == StoreKind::Postgres && self.postgres_url.is_none() {
            return fail("store = \"postgres\" needs postgres_url".into());
        }
        if self
            .postgres_url
            .as_deref()
            .is_some_and(|u| u.contains("password=") || url_has_password(u))
        {
            return fail(
                "postgres_url must not hold the password: put it in postgres_password_file".into(),
            );
        }
        self.validate_offline()?;
        if self.window > MAX_WINDOW {
            return fail(format!(
                "window = {} is out of range (0 to {MAX_WINDOW})",
                self.window
            ));
        }
        if !(1..=100).contains(&self.backup_codes) {
            return fail(format!(
                "backup_codes = {} is out of range (1 to 100)",
                self.backup_codes
            ));
        }
        if !(1..=24).contains(&self.max_authenticators) {
            return fail(format!(
                "max_authenticators = {} is out of range (1 to 24)",
                self.max_authenticators
            ));
        }
        if !(1..=100).contains(&self.hotp_window) {
            return fail(format!(
                "hotp_window = {} is out of range (1 to 100)",
                self.hotp_window
            ));
        }
        if !(1..=100_000).contains(&self.max_connections) {
            return fail(format!(
                "max_connections = {} is out of range (1 to 100000)",
                self.max_connections
            ));
        }
        if !(1..=300).contains(&self.request_timeout) {
            return fail(format!(
                "request_timeout = {} is out of range (1 to 300 s)",
                self.request_timeout
            ));
        }
        if !(60..=86_400).contains(&self.pending_ttl) {
            return fail(format!(
                "pending_ttl = {} is out of range (60 to 86400 s)",
                self.pending_ttl
            ));
        }
        if let Some(p) = &self.metrics_textfile {
            let named = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".prom"));
            if !p.is_absolute() || !named {
                return fail(format!(
                    "metrics_textfile = {:?} must be an absolute path ending in .prom (node_exporter reads no other)",
                    p.display().to_string()
                ));
            }
        }
        if !(1..=3650).contains(&self.audit_days) {
            return fail(format!(
                "audit_days = {} is out of range (1 to 3650)",
                self.audit_days
            ));
        }
        if !(1_000..=100_000_000).contains(&self.audit_max_entries) {
            return fail(format!(
                "audit_max_entries = {} is out of range (1000 to 100000000)",
                self.audit_max_entries
            ));
        }
        if let Some(issuer) = &self.issuer {
            if issuer.is_empty()
                || issuer.len() > 64
                || issuer.contains(':')
                || issuer.chars().any(char::is_control)
            {
                return fail(
                    "issuer must be 1 to 64 characters, without ':' or control characters".into(),
                );
            }
        }
        if let Some(bad) = self
            .require_groups
            .iter()
            .find(|g| crate::users::validate_name(g).is_err())
        {
            return fail(format!("require_groups: {bad:?} is not a valid group name"));
        }
        if !(60..=86_400).contains(&self.email_code_ttl) {
            return fail(format!(
                "email_code_ttl = {} is out of range (60 to 86400 s)",
                self.email_code_ttl
            ));
        }
        if self.email_resend_secs > 3600 {
            return fail(format!(
                "email_resend_secs = {} is out of range (0 to 3600 s)",
                self.email_resend_secs
            ));
        }
        self.email.validate(self.email_codes).map_err(ConfigError)?;
        if self.throttle.max_delay < self.throttle.base_delay {
            return fail("throttle.max_delay must not be below throttle.base_delay".into());
        }
        Ok(())
    }

    /// The issuer apps show: the configured one or the host name.
    pub fn issuer_or_hostname(&self) -> String {
        self.issuer.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .map(|h| h.replace(':', "-"))
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "twofold".to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::{EmailConfig, Transport};

    #[test]
    fn outage_mode_needs_the_shared_store_and_a_seal_key() {
        let pg = "store = \"postgres\"\npostgres_url = \"host=/run/postgresql\"\n";
        let c = Config::parse(pg).unwrap();
        assert_eq!(c.offline, Offline::Deny);
        let cached = format!("{pg}offline = \"cached\"\n");
        let e = Config::parse(&cached).unwrap_err().to_string();
        assert!(e.contains("seal_key_file"), "{e}");
        let e = Config::parse("offline = \"cached\"\nseal_key_file = \"/k\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store = \"postgres\""), "{e}");
        let sealed = format!("{cached}seal_key_file = \"/k\"\ndatabase = \"/v/t.db\"\n");
        let c = Config::parse(&sealed).unwrap();
        assert_eq!(c.offline_cache_path(), PathBuf::from("/v/fleet-cache.db"));
        assert_eq!((c.offline_lockout_after, c.offline_refresh), (10, 60));
        assert!(!c.offline_backup_codes);
        for bad in [
            "offline_lockout_after = 0",
            "offline_refresh = 0",
            "offline_cache = \"/v/t.db\"",
        ] {
            assert!(Config::parse(&format!("{sealed}{bad}\n")).is_err(), "{bad}");
        }
        assert!(Config::parse(&format!("{pg}offline = \"sometimes\"\n")).is_err());
    }

    #[test]
    fn defaults_and_full_file() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let c = Config::parse(
            r#"
            socket = "/tmp/s"
            database = "/tmp/d.db"
            issuer = "Bastion"
            enabled = false
            window = 2
            unenrolled = "deny"
            self_enroll = false
            enroll_at_login = "always"
            backup_codes = 10
            [throttle]
            free_failures = 3
            lockout_after = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.unenrolled, Unenrolled::Deny);
        assert_eq!(c.enroll_at_login, EnrollAtLogin::Always);
        assert!(Config::parse("enroll_at_login = \"sometimes\"").is_err());
        assert_eq!(Config::default().enroll_at_login, EnrollAtLogin::Invited);
        assert_eq!(c.throttle.free_failures, 3);
        assert_eq!(c.throttle.base_delay, 30); // default kept inside the table
        assert!(!c.enabled);
        let c = Config::parse(
            r#"
            email_codes = true
            email_auto = true
            email_code_ttl = 300
            [email]
            from = "2fa@example.org"
            transport = "smtp"
            smtp_host = "relay.example.org"
            smtp_port = 587
            starttls = true
            "#,
        )
        .unwrap();
        assert!(c.email_codes && c.email_auto);
        assert_eq!(c.email.transport, Transport::Smtp);
        assert_eq!(c.email.smtp_port, 587);
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        for bad in [
            "windw = 1",
            "window = 11",
            "unenrolled = \"maybe\"",
            "[throttle]\nfree = 1",
            "backup_codes = 0",
            "max_authenticators = 0",
            "max_authenticators = 25",
            "hotp_window = 0",
            "hotp_window = 101",
            "issuer = \"a:b\"",
            "[throttle]\nbase_delay = 100\nmax_delay = 10",
            "window = -1",
            "email_code_ttl = 5",
            "[email]\nfrom = \"not an address\"",
            "[email]\ntransport = \"carrier-pigeon\"",
            "[email]\npassword = \"x\"",
            "[email]\nusername = \"u\"",
            "email_codes = true\n[email]\ntransport = \"smtp\"",
            "[email]\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    /// Finding 9 of the 2026-11 review: SMTP credentials were sent in clear with
    /// `starttls = false`.
    #[test]
    fn refuses_smtp_credentials_without_starttls() {
        let err = Config::parse(
            "[email]\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\nstarttls = false",
        )
        .unwrap_err();
        assert!(err.to_string().contains("in clear"), "{err}");
    }

    #[test]
    fn shipped_file_parses_uncommented() {
        // As scripts/package-test.sh does: `#key = ` lines and the table headers.
        let shipped = include_str!("../../debian/twofold.toml");
        let uncommented: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| {
                l.starts_with("[throttle]")
                    || l.starts_with("[email]")
                    || l.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(uncommented.contains("smtp_port = 25"), "{uncommented}");
        let c = Config::parse(&uncommented).unwrap();
        assert_eq!(
            c.email,
            EmailConfig {
                from: Some("twofold@localhost".into()),
                smtp_host: Some("localhost".into()),
                ..EmailConfig::default()
            }
        );
    }

    #[test]
    fn missing_file_only_fails_when_named() {
        let p = Path::new("/nonexistent/twofold.toml");
        assert!(Config::load(p, false).is_ok());
        assert!(Config::load(p, true).is_err());
    }
}
