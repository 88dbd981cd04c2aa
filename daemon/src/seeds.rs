//! Seed files as hardware-token vendors ship them: a CSV whose header row names its columns.
//! `user` and `secret` (hex or base32; `secret_hex` / `secret_base32` say which) are required;
//! `type` (`totp`, `hotp`), `algorithm`, `digits`, `period`, `counter` and `name` (the
//! authenticator's) are optional. Each line is checked on its own; errors name the line and
//! the column, never a secret.
//!
//! ```text
//! user,secret,type,counter
//! alice,3132333435363738393031323334353637383930,hotp,0
//! ```

use twofold_shared::otp::{Algorithm, OtpKind, TotpParams};
use twofold_shared::secret::{Secret, MAX_SECRET_BYTES, MIN_SECRET_BYTES};
use twofold_shared::wire;

/// One token of a seed file, ready to import.
#[derive(Debug)]
pub struct Seed {
    pub line: usize,
    pub user: String,
    pub secret: Secret,
    pub params: TotpParams,
    /// HOTP: the counter of the token's next code.
    pub counter: Option<u64>,
    pub name: Option<String>,
}

/// How the `secret` column is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Hex,
    Base32,
    /// Hex when it is nothing but an even number of hex digits, base32 otherwise.
    Either,
}

#[derive(Debug, Default)]
struct Columns {
    user: Option<usize>,
    secret: Option<(usize, Option<Encoding>)>,
    kind: Option<usize>,
    algorithm: Option<usize>,
    digits: Option<usize>,
    period: Option<usize>,
    counter: Option<usize>,
    name: Option<usize>,
}

/// A field: surrounding spaces and one pair of double quotes dropped.
fn field(raw: &str) -> &str {
    let t = raw.trim();
    t.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(t)
        .trim()
}

fn header(line: &str) -> Result<Columns, String> {
    let mut c = Columns::default();
    for (i, raw) in line.split(',').enumerate() {
        let name = field(raw).to_ascii_lowercase();
        let slot = match name.as_str() {
            "user" => &mut c.user,
            "type" => &mut c.kind,
            "algorithm" => &mut c.algorithm,
            "digits" => &mut c.digits,
            "period" => &mut c.period,
            "counter" => &mut c.counter,
            "name" => &mut c.name,
            "secret" | "secret_hex" | "secret_base32" => {
                if c.secret.is_some() {
                    return Err("line 1: more than one secret column".into());
                }
                let encoding = match name.as_str() {
                    "secret_hex" => Encoding::Hex,
                    "secret_base32" => Encoding::Base32,
                    _ => Encoding::Either,
                };
                c.secret = Some((i, Some(encoding)));
                continue;
            }
            // Not echoed: a file without its header row has a key where a name should be.
            _ => {
                return Err(format!(
                    "line 1: column {} is none of user, secret, secret_hex, secret_base32, type, algorithm, digits, period, counter, name (the first line must name the columns)",
                    i + 1
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("line 1: the column {name} appears twice"));
        }
        *slot = Some(i);
    }
    if c.user.is_none() || c.secret.is_none() {
        return Err("line 1: the header must name the columns user and secret".into());
    }
    Ok(c)
}

fn decode_secret(text: &str, encoding: Encoding) -> Result<Secret, String> {
    let hexish =
        !text.is_empty() && text.len() % 2 == 0 && text.bytes().all(|b| b.is_ascii_hexdigit());
    let hex = match encoding {
        Encoding::Hex => true,
        Encoding::Base32 => false,
        Encoding::Either => hexish,
    };
    let secret = if hex {
        if !hexish {
            return Err("the secret is not hex".into());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| "the secret is not hex".to_string())?;
        Secret::from_bytes(bytes)
    } else {
        Secret::from_base32(text).map_err(|e| format!("the secret: {e}"))?
    };
    let bits = secret.as_bytes().len() * 8;
    if secret.as_bytes().len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the secret has {bits} bits; twofold refuses keys under {} bits",
            MIN_SECRET_BYTES * 8
        ));
    }
    if secret.as_bytes().len() > MAX_SECRET_BYTES {
        return Err("the secret is too long".into());
    }
    Ok(secret)
}

fn seed(line: usize, fields: &[&str], c: &Columns) -> Result<Seed, String> {
    let get = |i: Option<usize>| {
        i.and_then(|i| fields.get(i))
            .map(|f| field(f))
            .filter(|f| !f.is_empty())
    };
    let user = get(c.user).ok_or("no user")?.to_string();
    wire::validate_name(&user).map_err(|e| format!("user: {e}"))?;
    let (at, encoding) = c.secret.ok_or("no secret column")?;
    let secret = decode_secret(
        get(Some(at)).ok_or("no secret")?,
        encoding.unwrap_or(Encoding::Either),
    )?;
    let kind = match get(c.kind) {
        Some(t) => OtpKind::parse(t).ok_or("type must be totp or hotp")?,
        None => OtpKind::Totp,
    };
    let number = |i: Option<usize>, what: &str| -> Result<Option<u64>, String> {
        get(i)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{what} is not a number"))
            })
            .transpose()
    };
    let mut params = TotpParams::default();
    if let Some(a) = get(c.algorithm) {
        params.algorithm = Algorithm::parse(a).ok_or("algorithm must be SHA1, SHA256 or SHA512")?;
    }
    if let Some(d) = number(c.digits, "digits")? {
        params.digits = u32::try_from(d).map_err(|_| "digits out of range")?;
    }
    if let Some(p) = number(c.period, "period")? {
        if kind == OtpKind::Hotp {
            return Err("a period means nothing for an hotp token".into());
        }
        params.period = p;
    }
    params.validate()?;
    let counter = number(c.counter, "counter")?;
    let counter = match kind {
        OtpKind::Hotp => Some(counter.unwrap_or(0)),
        OtpKind::Totp if counter.is_some() => {
            return Err("a counter means nothing for a totp token".into())
        }
        OtpKind::Totp => None,
    };
    let name = get(c.name).map(str::to_string);
    if let Some(n) = &name {
        wire::validate_authenticator_name(n).map_err(|e| format!("name: {e}"))?;
    }
    Ok(Seed {
        line,
        user,
        secret,
        params,
        counter,
        name,
    })
}

/// A line of a seed file: its seed, or its number (counted from 1, the header's) and why it is
/// refused.
pub type Line = Result<Seed, (usize, String)>;

/// Every line of the file after the header.
pub fn parse(text: &str) -> Result<Vec<Line>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((_, first)) = lines.next() else {
        return Err("the file is empty".into());
    };
    let columns = header(first)?;
    Ok(lines
        .map(|(n, l)| {
            let fields: Vec<&str> = l.split(',').collect();
            seed(n, &fields, &columns).map_err(|why| (n, why))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "3132333435363738393031323334353637383930";

    #[test]
    fn vendor_files() {
        let text = format!(
            "# exported by the vendor\nUser,Secret,Type,Counter,Name\nalice,{HEX},hotp,5,fob\n\"bob\",\"GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\",totp,,\n"
        );
        let seeds: Vec<Seed> = parse(&text)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(seeds.len(), 2);
        assert_eq!(seeds[0].secret.as_bytes(), b"12345678901234567890");
        assert_eq!(
            (seeds[0].counter, seeds[0].name.as_deref()),
            (Some(5), Some("fob"))
        );
        assert_eq!((seeds[0].line, seeds[1].line), (3, 4));
        assert_eq!(seeds[1].secret.as_bytes(), b"12345678901234567890");
        assert_eq!((seeds[1].counter, seeds[1].name.as_deref()), (None, None));
        let typed = parse(&format!(
            "user,secret_hex,algorithm,digits,period\ncarol,{HEX}{HEX},sha256,8,60\n"
        ))
        .unwrap()
        .remove(0)
        .unwrap();
        assert_eq!(typed.params.algorithm, Algorithm::Sha256);
        assert_eq!((typed.params.digits, typed.params.period), (8, 60));
        // All hex digits but meant as base32: the column says so.
        let b32 = parse("user,secret_base32\nd,ABCDEF234567ABCDEF234567ABCDEF23\n")
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(b32.secret.as_bytes().len(), 20);
    }

    #[test]
    fn refusals_name_the_line_and_never_the_secret() {
        assert!(parse("").is_err());
        assert!(parse("user,key\n")
            .unwrap_err()
            .contains("column 2 is none of"));
        let headless = parse(&format!("alice,{HEX}\n")).unwrap_err();
        assert!(
            !headless.contains("alice") && !headless.contains("3132"),
            "{headless}"
        );
        assert!(parse("user\n").unwrap_err().contains("user and secret"));
        assert!(parse("user,secret,secret_hex\n")
            .unwrap_err()
            .contains("more than one"));
        let text = format!(
            "user,secret,type,digits,counter,period\n\
             a,31323334353637383930,totp,,,\n\
             b,{HEX},motp,,,\n\
             c,{HEX},totp,9,,\n\
             d,{HEX},totp,,3,\n\
             e,{HEX},hotp,,,60\n\
             f/x,{HEX},,,,\n\
             ,{HEX},,,,\n\
             g,zz{HEX},,,,\n\
             h,{HEX},hotp,,x,\n\
             ok,{HEX},hotp,,,\n"
        );
        let lines = parse(&text).unwrap();
        let wants = [
            "80 bits",
            "totp or hotp",
            "digits",
            "counter means nothing",
            "period means nothing",
            "user",
            "no user",
            "secret",
            "counter is not a number",
        ];
        for (line, want) in lines.iter().zip(wants) {
            let (n, why) = line.as_ref().unwrap_err();
            assert!(why.contains(want), "line {n}: {why} (wanted {want})");
            assert!(!why.contains(HEX) && !why.contains("3132"), "{why}");
        }
        let ok = lines.last().unwrap().as_ref().unwrap();
        assert_eq!((ok.line, ok.counter), (11, Some(0)));
    }
}
