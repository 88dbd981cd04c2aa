//! Email codes: addresses, the six-digit codes mailed to them, and the ways mail leaves the host
//! (an SMTP relay through lettre, or the local sendmail program). Sending never happens inside
//! the store's writer, and always has a deadline.

mod settings;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport as _};
pub use settings::{EmailConfig, Transport};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Longest address accepted (RFC 5321's path limit).
pub const MAX_ADDRESS: usize = 254;
/// How long one delivery may take, relay or sendmail.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(twofold_shared::wire::MAIL_TIMEOUT_SECS);
/// Wrong answers after which a mailed code is discarded.
pub const MAX_TRIES: u32 = 5;
/// Codes mailed per user: at most one per minute and this many per hour.
pub const MAX_PER_HOUR: u32 = 10;

/// Something that delivers one plain-text message.
pub trait Mailer: Send + Sync {
    fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String>;
}

/// Bounded, exactly one `@`, no spaces or control characters, something either side.
pub fn validate_address(address: &str) -> Result<(), String> {
    if address.is_empty() || address.len() > MAX_ADDRESS {
        return Err(format!("an address is 1 to {MAX_ADDRESS} bytes"));
    }
    if address
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | '"'))
    {
        return Err("an address has no spaces, control characters, quotes, ',', '<' or '>'".into());
    }
    let mut parts = address.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) if !local.is_empty() && !domain.is_empty() => {
            if address.parse::<Mailbox>().is_err() {
                return Err("not a valid email address".into());
            }
            Ok(())
        }
        _ => Err("an address has exactly one '@' with text either side".into()),
    }
}

/// `alice@example.org` → `a***@example.org`.
pub fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// Six digits from the OS CSPRNG (rejection sampling: no bias).
pub fn generate_code() -> Result<Zeroizing<String>, crate::backup::RandomError> {
    const LIMIT: u32 = 4_294_000_000; // a multiple of 10^6 below 2^32
    loop {
        let mut raw = Zeroizing::new([0u8; 4]);
        crate::backup::random_bytes(raw.as_mut())?;
        let n = u32::from_be_bytes(*raw);
        if n < LIMIT {
            return Ok(Zeroizing::new(format!("{:06}", n % 1_000_000)));
        }
    }
}

/// `123456` → `123-456`, as the mail shows it.
pub fn display_code(code: &str) -> String {
    let (a, b) = code.split_at(code.len().min(3));
    format!("{a}-{b}")
}

/// Six digits, dashes and spaces ignored; `None` for anything else.
pub fn normalize_code(input: &str) -> Option<Zeroizing<String>> {
    if input.len() > 32 {
        return None;
    }
    let digits: Zeroizing<String> = Zeroizing::new(
        input
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != ' ')
            .collect(),
    );
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// The password file must be a regular file owned by root (or by the daemon's user) and
/// readable by nobody else.
pub fn check_password_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("email.password_file {}: {e}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_file() {
        return Err(format!(
            "email.password_file {} is not a regular file",
            path.display()
        ));
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "email.password_file {} must be owned by root",
            path.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "email.password_file {} must not be readable by group or others (chmod 600)",
            path.display()
        ));
    }
    Ok(())
}

fn sender(cfg: &EmailConfig, hostname: &str) -> String {
    cfg.from
        .clone()
        .unwrap_or_else(|| format!("twofold@{hostname}"))
}

fn message(from: &str, to: &str, subject: &str, body: &str) -> Result<Message, String> {
    let from: Mailbox = from
        .parse()
        .map_err(|_| "the sender address is not valid".to_string())?;
    let to: Mailbox = to
        .parse()
        .map_err(|_| "the recipient address is not valid".to_string())?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body.to_string())
        .map_err(|e| format!("the message could not be built: {e}"))
}

/// Delivery through an SMTP relay.
pub struct SmtpMailer {
    from: String,
    host: String,
    port: u16,
    starttls: bool,
    credentials: Option<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SmtpMailer({}:{})", self.host, self.port)
    }
}

impl Mailer for SmtpMailer {
    fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        let msg = message(&self.from, to, subject, body)?;
        let mut builder = SmtpTransport::builder_dangerous(self.host.as_str())
            .port(self.port)
            .timeout(Some(SEND_TIMEOUT));
        if self.starttls {
            let tls = TlsParameters::new(self.host.clone())
                .map_err(|e| format!("TLS setup for {} failed: {e}", self.host))?;
            builder = builder.tls(Tls::Required(tls));
        }
        if let Some((user, pass)) = &self.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), pass.to_string()));
        }
        builder.build().send(&msg).map(|_| ()).map_err(|e| {
            format!(
                "the mail relay {}:{} did not take the message: {e}",
                self.host, self.port
            )
        })
    }
}

/// Delivery through the local sendmail program (`sendmail -i -f FROM -- TO`, message on stdin).
#[derive(Debug)]
pub struct SendmailMailer {
    from: String,
    program: std::path::PathBuf,
}

impl Mailer for SendmailMailer {
    fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        let msg = message(&self.from, to, subject, body)?;
        let program = self.program.display().to_string();
        let mut child = Command::new(&self.program)
            .args(["-i", "-f", &self.from, "--", to])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .spawn()
            .map_err(|e| format!("{program} could not be started: {e}"))?;
        let written = child
            .stdin
            .take()
            .ok_or_else(|| format!("{program}: no stdin"))
            .and_then(|mut stdin| {
                stdin
                    .write_all(&msg.formatted())
                    .map_err(|e| format!("{program} did not read the message: {e}"))
            });
        let deadline = Instant::now() + SEND_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return written,
                Ok(Some(status)) => return Err(format!("{program} failed ({status})")),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{program} did not finish within {} s",
                        SEND_TIMEOUT.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("{program}: {e}")),
            }
        }
    }
}

/// The mailer the configuration describes. The SMTP password is read now, from its file.
pub fn from_settings(cfg: &EmailConfig) -> Result<Box<dyn Mailer>, String> {
    let hostname = crate::users::hostname();
    let from = sender(cfg, &hostname);
    match cfg.transport {
        Transport::Sendmail => Ok(Box::new(SendmailMailer {
            from,
            program: cfg.sendmail.clone(),
        })),
        Transport::Smtp => {
            let host = cfg
                .smtp_host
                .clone()
                .filter(|h| !h.is_empty())
                .ok_or("email.smtp_host is not set")?;
            let credentials = match (&cfg.username, &cfg.password_file) {
                (Some(user), Some(path)) => {
                    check_password_file(path)?;
                    let text = Zeroizing::new(
                        std::fs::read_to_string(path)
                            .map_err(|e| format!("email.password_file {}: {e}", path.display()))?,
                    );
                    let pass = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string());
                    Some((user.clone(), pass))
                }
                _ => None,
            };
            Ok(Box::new(SmtpMailer {
                from,
                host,
                port: cfg.smtp_port,
                starttls: cfg.starttls,
                credentials,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(validate_address("alice@example.org").is_ok());
        for bad in [
            "",
            "alice",
            "a@b@c",
            "@example.org",
            "alice@",
            "al ice@example.org",
            "alice@exa\nmple.org",
            "<alice@example.org>",
            &format!("{}@example.org", "a".repeat(250)),
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
        assert_eq!(mask("alice@example.org"), "a***@example.org");
    }

    #[test]
    fn codes() {
        for _ in 0..100 {
            let c = generate_code().unwrap();
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
        assert_eq!(display_code("123456"), "123-456");
        assert_eq!(normalize_code("123-456").unwrap().as_str(), "123456");
        assert_eq!(normalize_code(" 123456 ").unwrap().as_str(), "123456");
        assert!(normalize_code("12345").is_none());
        assert!(normalize_code("email").is_none());
        assert!(normalize_code("12a456").is_none());
    }
}
