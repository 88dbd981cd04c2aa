//! otpauth:// URIs in Google's Key Uri Format:
//! `otpauth://totp/ISSUER:NAME?secret=BASE32&issuer=ISSUER[&algorithm=..&digits=..&period=..]`,
//! and `otpauth://hotp/…&counter=N` for counter-based tokens.

use crate::otp::{Algorithm, TotpParams};
use crate::secret::{Secret, SecretError};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::fmt;

/// Everything but RFC 3986's unreserved characters is encoded, in the label and in values.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A parsed or to-be-built TOTP key URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpAuthUri {
    pub issuer: Option<String>,
    pub account: String,
    pub secret: Secret,
    pub params: TotpParams,
    /// A counter-based (HOTP) key: the counter of its next code. `None`: time-based.
    pub counter: Option<u64>,
}

impl OtpAuthUri {
    /// The URI text. Parameters equal to the defaults are left out, because some apps mishandle
    /// them.
    pub fn to_uri(&self) -> String {
        let enc = |s: &str| utf8_percent_encode(s, COMPONENT).to_string();
        let label = match &self.issuer {
            Some(issuer) => format!("{}:{}", enc(issuer), enc(&self.account)),
            None => enc(&self.account),
        };
        let kind = if self.counter.is_some() {
            "hotp"
        } else {
            "totp"
        };
        let mut uri = format!(
            "otpauth://{kind}/{label}?secret={}",
            self.secret.to_base32()
        );
        if let Some(issuer) = &self.issuer {
            uri.push_str("&issuer=");
            uri.push_str(&enc(issuer));
        }
        let defaults = TotpParams::default();
        if self.params.algorithm != defaults.algorithm {
            uri.push_str("&algorithm=");
            uri.push_str(self.params.algorithm.name());
        }
        if self.params.digits != defaults.digits {
            uri.push_str(&format!("&digits={}", self.params.digits));
        }
        if self.params.period != defaults.period && self.counter.is_none() {
            uri.push_str(&format!("&period={}", self.params.period));
        }
        if let Some(counter) = self.counter {
            uri.push_str(&format!("&counter={counter}"));
        }
        uri
    }

    /// Parses a URI as apps and token vendors export it; an HOTP URI must name its counter.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let rest = text
            .strip_prefix("otpauth://")
            .ok_or(UriError::Invalid("it does not start with otpauth://"))?;
        let (kind, rest) = rest.split_once('/').ok_or(UriError::Invalid("no label"))?;
        let hotp = match kind.to_ascii_lowercase().as_str() {
            "totp" => false,
            "hotp" => true,
            _ => return Err(UriError::Invalid("unknown OTP type")),
        };
        let mut counter = None;
        let (label, query) = rest.split_once('?').unwrap_or((rest, ""));
        // "issuer:account", the colon written plain or as %3A. A plain one wins: then a colon
        // inside the issuer's own name (written %3A) cannot move the split.
        let split = label.split_once(':').or_else(|| {
            let at = label.to_ascii_lowercase().find("%3a")?;
            Some((&label[..at], &label[at + 3..]))
        });
        let (label_issuer, account) = match split {
            Some((issuer, account)) => (
                Some(decode(issuer)?.trim().to_string()),
                decode(account)?.trim().to_string(),
            ),
            None => (None, decode(label)?.trim().to_string()),
        };
        if account.is_empty() {
            return Err(UriError::Invalid("empty account name"));
        }
        if has_control(&account) || label_issuer.as_deref().is_some_and(has_control) {
            return Err(UriError::Invalid("control characters in the label"));
        }
        let mut secret = None;
        let mut issuer_param = None;
        let mut params = TotpParams::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value)?;
            match key.to_ascii_lowercase().as_str() {
                "secret" => secret = Some(Secret::from_base32(&value).map_err(UriError::Secret)?),
                "issuer" if has_control(&value) => {
                    return Err(UriError::Invalid("control characters in the issuer"))
                }
                "issuer" => issuer_param = Some(value.trim().to_string()),
                "algorithm" => {
                    params.algorithm =
                        Algorithm::parse(&value).ok_or(UriError::Invalid("unknown algorithm"))?
                }
                "digits" => {
                    params.digits = value.parse().map_err(|_| UriError::Invalid("bad digits"))?
                }
                "period" => {
                    params.period = value.parse().map_err(|_| UriError::Invalid("bad period"))?
                }
                "counter" => {
                    counter = Some(
                        value
                            .parse()
                            .map_err(|_| UriError::Invalid("bad counter"))?,
                    )
                }
                _ => {} // apps add their own parameters (image, color, …)
            }
        }
        params
            .validate()
            .map_err(|_| UriError::Invalid("digits or period out of range"))?;
        let secret = secret.ok_or(UriError::Invalid("no secret"))?;
        let counter = match (hotp, counter) {
            (true, None) => return Err(UriError::Invalid("an hotp URI without its counter")),
            (true, c) => c,
            (false, _) => None,
        };
        if hotp {
            // A counter-based key has no period.
            params.period = TotpParams::default().period;
        }
        if let (Some(a), Some(b)) = (&label_issuer, &issuer_param) {
            if a != b {
                return Err(UriError::Invalid(
                    "the label's issuer differs from the issuer parameter",
                ));
            }
        }
        Ok(OtpAuthUri {
            issuer: issuer_param.or(label_issuer),
            account,
            secret,
            params,
            counter,
        })
    }
}

/// Control characters (a terminal escape, a NUL) have no place in a name shown to people.
fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

fn decode(text: &str) -> Result<String, UriError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| UriError::Invalid("not UTF-8 after percent-decoding"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriError {
    Invalid(&'static str),
    Secret(SecretError),
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriError::Invalid(why) => write!(f, "not a valid otpauth URI: {why}"),
            UriError::Secret(e) => write!(f, "not a valid otpauth URI: {e}"),
        }
    }
}

impl std::error::Error for UriError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_and_what_parses_prints_back() {
        // Found by the otpauth fuzz target: NULs in the issuer broke the round trip.
        let found = format!(
            "otpauth://totp/hostwalice?sEcret=GEZDGNBVGY3TQOJQ&issuer=ho{}s://totp/t",
            "\0".repeat(40)
        );
        assert!(OtpAuthUri::parse(&found).is_err());
        for bad in [
            "otpauth://totp/a%1B%5B31mb?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            "otpauth://totp/x%00:b?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            "otpauth://totp/b?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=a%0Ab",
        ] {
            assert!(
                matches!(OtpAuthUri::parse(bad), Err(UriError::Invalid(m)) if m.contains("control")),
                "{bad}"
            );
        }
        let spaced = OtpAuthUri::parse(
            "otpauth://totp/b?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=%20Acme%20",
        )
        .unwrap();
        assert_eq!(spaced.issuer.as_deref(), Some("Acme"));
        let again = OtpAuthUri::parse(&spaced.to_uri()).unwrap();
        assert_eq!(again.to_uri(), spaced.to_uri());
        // Found by the fuzzer: a colon inside the issuer's name.
        let colon = OtpAuthUri::parse(
            "otpauth://totp/acct?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=ACME%20Co:JJ",
        )
        .unwrap();
        assert_eq!(colon.issuer.as_deref(), Some("ACME Co:JJ"));
        let again = OtpAuthUri::parse(&colon.to_uri()).unwrap();
        assert_eq!((again.issuer, again.account), (colon.issuer, colon.account));
        let encoded = OtpAuthUri::parse(
            "otpauth://totp/Acme%3Aalice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
        )
        .unwrap();
        assert_eq!(
            (encoded.issuer.as_deref(), encoded.account.as_str()),
            (Some("Acme"), "alice")
        );
    }

    fn sample() -> OtpAuthUri {
        OtpAuthUri {
            issuer: Some("bastion.example.org".into()),
            account: "alice".into(),
            secret: Secret::from_bytes(b"12345678901234567890".to_vec()),
            params: TotpParams::default(),
            counter: None,
        }
    }

    #[test]
    fn counter_based_keys() {
        let mut u = sample();
        u.counter = Some(42);
        let text = u.to_uri();
        assert!(text.starts_with("otpauth://hotp/"), "{text}");
        assert!(text.ends_with("&counter=42"), "{text}");
        assert_eq!(OtpAuthUri::parse(&text), Ok(u));
        let k = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
        assert!(OtpAuthUri::parse(&format!("otpauth://hotp/a?secret={k}")).is_err());
        assert!(OtpAuthUri::parse(&format!("otpauth://hotp/a?secret={k}&counter=x")).is_err());
        // A counter on a TOTP URI means nothing.
        let t = OtpAuthUri::parse(&format!("otpauth://totp/a?secret={k}&counter=3")).unwrap();
        assert_eq!(t.counter, None);
    }

    #[test]
    fn builds_google_key_uri_format() {
        assert_eq!(
            sample().to_uri(),
            "otpauth://totp/bastion.example.org:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=bastion.example.org"
        );
    }

    #[test]
    fn percent_encodes_label_and_issuer() {
        let mut u = sample();
        u.issuer = Some("ACME Co & Sons".into());
        u.account = "j.doe@ex ample".into();
        u.params = TotpParams {
            algorithm: Algorithm::Sha256,
            digits: 8,
            period: 60,
        };
        let text = u.to_uri();
        assert!(
            text.starts_with("otpauth://totp/ACME%20Co%20%26%20Sons:j.doe%40ex%20ample?"),
            "{text}"
        );
        assert!(text.contains("&issuer=ACME%20Co%20%26%20Sons"));
        assert!(text.ends_with("&algorithm=SHA256&digits=8&period=60"));
        assert_eq!(OtpAuthUri::parse(&text), Ok(u));
    }

    #[test]
    fn parses_what_apps_export() {
        let u = OtpAuthUri::parse(
            "otpauth://totp/Example%3Aalice%40google.com?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=Example&image=x",
        )
        .unwrap();
        assert_eq!(u.issuer.as_deref(), Some("Example"));
        assert_eq!(u.account, "alice@google.com");
        // no issuer at all
        let u = OtpAuthUri::parse("otpauth://totp/bob?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
            .unwrap();
        assert_eq!((u.issuer, u.account.as_str()), (None, "bob"));
    }

    #[test]
    fn refuses_bad_uris() {
        let k = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
        assert!(OtpAuthUri::parse(&format!("otpauth://motp/a?secret={k}")).is_err());
        assert!(OtpAuthUri::parse("https://totp/a?secret=X").is_err());
        assert!(OtpAuthUri::parse("otpauth://totp/a?issuer=x").is_err());
        assert!(OtpAuthUri::parse(&format!("otpauth://totp/A:a?secret={k}&issuer=B")).is_err());
        assert!(OtpAuthUri::parse(&format!("otpauth://totp/a?secret={k}&digits=10")).is_err());
        assert!(matches!(
            OtpAuthUri::parse("otpauth://totp/a?secret=JBSWY3DP"),
            Err(UriError::Secret(SecretError::TooShort(_)))
        ));
        assert!(OtpAuthUri::parse(&format!("otpauth://totp/%FF?secret={k}")).is_err());
    }
}
