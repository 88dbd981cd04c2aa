//! How twofoldd reaches the database: the URL, TLS (always verified), the password file and
//! channel binding.

use super::*;

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
pub(crate) const TLS_MODES: &[&str] = &["require", "verify-ca", "verify-full"];

pub(crate) fn remote(why: String) -> StoreError {
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
pub(crate) fn parse_url(url: &str) -> Result<(postgres::Config, Transport)> {
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

pub(crate) fn transport_of(
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
pub(crate) fn client_config(
    url: &str,
    password_file: Option<&Path>,
) -> Result<(postgres::Config, Connector)> {
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
pub(crate) fn channel_binding(
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
pub(crate) fn read_password(file: &Path) -> Result<zeroize::Zeroizing<String>> {
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
pub(crate) enum Connector {
    Tls(MakeRustlsConnect),
    Socket,
}

impl Connector {
    pub(crate) fn connect(&self, config: &postgres::Config) -> Result<Client> {
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
pub(crate) fn take_option(url: &str, key: &str) -> (String, Option<String>) {
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
pub(crate) fn tls_connector(root_file: Option<&str>) -> Result<MakeRustlsConnect> {
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

/// What the database says of its replication (for `twofold doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// `synchronous_standby_names` (empty: commits wait for no standby).
    pub standby_names: String,
    /// `synchronous_commit` as this role's session has it.
    pub synchronous_commit: String,
    /// Standbys streaming synchronously now (`sync` or `quorum`); `None`: this role may not
    /// see (pg_stat_replication shows its state to superusers and pg_read_all_stats only).
    pub synchronous: Option<i64>,
}

/// Asks the database at `url` how its commits are replicated.
pub fn replication(url: &str, password_file: Option<&Path>) -> Result<Replication> {
    let (config, connector) = client_config(url, password_file)?;
    let mut client = connector.connect(&config)?;
    let row = client.query_one(
        "SELECT current_setting('synchronous_standby_names'),
                current_setting('synchronous_commit'),
                (SELECT count(*) FROM pg_stat_replication),
                (SELECT count(state) FROM pg_stat_replication),
                (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))",
        &[],
    )?;
    let (rows, visible): (i64, i64) = (row.get(2), row.get(3));
    Ok(Replication {
        standby_names: row.get(0),
        synchronous_commit: row.get(1),
        synchronous: (visible == rows).then(|| row.get(4)),
    })
}
