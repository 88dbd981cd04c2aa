//! The `[email]` table of twofold.toml: how mail leaves the host, and its checks.

use serde::Deserialize;
use std::path::PathBuf;

/// How mail leaves the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The local `sendmail` program (any MTA provides one).
    #[default]
    Sendmail,
    /// A relay spoken to directly.
    Smtp,
}

/// The `[email]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// Sender address; `twofold@HOSTNAME` when unset.
    pub from: Option<String>,
    pub transport: Transport,
    /// The sendmail program (transport = "sendmail").
    pub sendmail: PathBuf,
    /// The relay (transport = "smtp").
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    /// Require STARTTLS before anything else is said to the relay.
    pub starttls: bool,
    /// SMTP login name; the password is read from `password_file`.
    pub username: Option<String>,
    /// A root-owned file, not readable by group or others, holding the SMTP password.
    pub password_file: Option<PathBuf>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            from: None,
            transport: Transport::Sendmail,
            sendmail: PathBuf::from("/usr/sbin/sendmail"),
            smtp_host: None,
            smtp_port: 25,
            starttls: true,
            username: None,
            password_file: None,
        }
    }
}

impl EmailConfig {
    /// The table's own rules (`email_codes`: whether mail is switched on at all).
    pub fn validate(&self, email_codes: bool) -> Result<(), String> {
        if let Some(from) = &self.from {
            if let Err(why) = super::validate_address(from) {
                return Err(format!("email.from: {why}"));
            }
        }
        if self.username.is_some() != self.password_file.is_some() {
            return Err("email.username and email.password_file go together".into());
        }
        if self.username.is_some() && !self.starttls {
            return Err(
                "email.username with starttls = false would send the relay's password in clear: \
                 keep starttls = true (or use the sendmail transport)"
                    .into(),
            );
        }
        if email_codes
            && self.transport == Transport::Smtp
            && self.smtp_host.as_deref().unwrap_or("").is_empty()
        {
            return Err("email.transport = \"smtp\" needs email.smtp_host".into());
        }
        if !self.sendmail.is_absolute() {
            return Err("email.sendmail must be an absolute path".into());
        }
        if let Some(p) = &self.password_file {
            super::check_password_file(p)?;
        }
        Ok(())
    }
}
