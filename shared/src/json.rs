//! A small, strict JSON reader and writer for the login's messages ([`crate::login`]): what the
//! PAM module sends and reads, without serde_json in `pam_twofold.so`.
//!
//! The reader takes what serde_json would accept for the login's types and nothing more: one
//! value, JSON whitespace around it, no duplicate keys, strings of valid UTF-8 without raw
//! control characters and without lone surrogates, and numbers only as non-negative integers
//! that fit a u64 (the only numbers the login reads). Nesting is bounded. Strings are decoded
//! into buffers sized once and zeroed on drop: they may hold secrets (an enrollment's key, its
//! QR code, backup codes). Errors name the problem and its position, never a value.

use std::fmt;
use zeroize::Zeroizing;

/// Deeper nesting is refused (the deepest login message nests four levels).
const MAX_DEPTH: usize = 16;

#[derive(Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(u64),
    Str(Zeroizing<String>),
    Array(Vec<Value>),
    /// Keys in the order they came, each once.
    Object(Vec<(String, Value)>),
}

/// What is wrong with a document, and where (a byte offset).
#[derive(Debug, PartialEq, Eq)]
pub struct Error {
    pub what: &'static str,
    pub at: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Parses one JSON document.
pub fn parse(input: &[u8]) -> Result<Value, Error> {
    let mut r = Reader { input, at: 0 };
    let value = r.value(0)?;
    r.skip_space();
    if r.at != input.len() {
        return Err(r.error("trailing characters"));
    }
    Ok(value)
}

struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn error(&self, what: &'static str) -> Error {
        Error { what, at: self.at }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, Error> {
        if self.input[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("invalid JSON"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.skip_space();
        match self.peek() {
            None => Err(self.error("JSON ends early")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'0'..=b'9') => self.integer(),
            Some(b'-') => Err(self.error("unexpected value (a negative number)")),
            Some(_) => Err(self.error("invalid JSON")),
        }
    }

    /// A non-negative integer without fraction or exponent, no leading zero, within u64.
    fn integer(&mut self) -> Result<Value, Error> {
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            if self.at > start && self.input[start] == b'0' {
                return Err(self.error("invalid number (a leading zero)"));
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or_else(|| self.error("unexpected value (a number out of range)"))?;
            self.at += 1;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(self.error("unexpected value (not an integer)"));
        }
        Ok(Value::Int(n))
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                None => return Err(self.error("JSON ends early")),
                Some(_) => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        self.at += 1;
        let mut fields: Vec<(String, Value)> = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(fields));
        }
        loop {
            self.skip_space();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key"));
            }
            let key_at = self.at;
            let key = std::mem::take(&mut *self.string()?);
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(Error {
                    what: "duplicate key",
                    at: key_at,
                });
            }
            self.skip_space();
            if self.peek() != Some(b':') {
                return Err(self.error("expected `:`"));
            }
            self.at += 1;
            let value = self.value(depth + 1)?;
            fields.push((key, value));
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(fields));
                }
                None => return Err(self.error("JSON ends early")),
                Some(_) => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    /// A string literal, decoded into a buffer allocated once (its raw length bounds the
    /// decoded one), so no copy of a secret is left behind by a reallocation.
    fn string(&mut self) -> Result<Zeroizing<String>, Error> {
        self.at += 1;
        let start = self.at;
        let mut end = start;
        loop {
            match self.input.get(end) {
                None => {
                    self.at = end;
                    return Err(self.error("JSON ends early"));
                }
                Some(b'"') => break,
                Some(b'\\') => end += 2,
                Some(_) => end += 1,
            }
        }
        let raw = &self.input[start..end];
        if std::str::from_utf8(raw).is_err() {
            return Err(self.error("invalid UTF-8 in a string"));
        }
        let mut out = Zeroizing::new(String::with_capacity(raw.len()));
        while self.at < end {
            let b = self.input[self.at];
            if b < 0x20 {
                return Err(self.error("a control character in a string"));
            }
            if b != b'\\' {
                // Copy the run up to the next escape or control character as it is.
                let run = raw[self.at - start..]
                    .iter()
                    .position(|&c| c == b'\\' || c < 0x20)
                    .map_or(end, |p| self.at + p);
                let text = std::str::from_utf8(&self.input[self.at..run])
                    .map_err(|_| self.error("invalid UTF-8 in a string"))?;
                out.push_str(text);
                self.at = run;
                continue;
            }
            let c = match self.input.get(self.at + 1) {
                Some(b'"') => '"',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'b') => '\u{8}',
                Some(b'f') => '\u{c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => {
                    let c = self.unicode_escape()?;
                    out.push(c);
                    continue;
                }
                _ => return Err(self.error("invalid escape in a string")),
            };
            out.push(c);
            self.at += 2;
        }
        self.at = end + 1;
        Ok(out)
    }

    /// `\uXXXX`, or a surrogate pair of two; a lone surrogate is refused.
    fn unicode_escape(&mut self) -> Result<char, Error> {
        let first = self.hex4(self.at + 2)?;
        self.at += 6;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.input[self.at..].starts_with(b"\\u") {
                    return Err(self.error("a lone surrogate in a string"));
                }
                let second = self.hex4(self.at + 2)?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("a lone surrogate in a string"));
                }
                self.at += 6;
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("a lone surrogate in a string")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid escape in a string"))
    }

    fn hex4(&self, at: usize) -> Result<u32, Error> {
        let digits = self
            .input
            .get(at..at + 4)
            .ok_or_else(|| self.error("invalid escape in a string"))?;
        let mut n = 0u32;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid escape in a string"))?;
            n = n * 16 + v;
        }
        Ok(n)
    }
}

/// Appends `s` as a JSON string literal, escaped as serde_json escapes it (so that the bytes
/// match what the daemon's own encoder writes).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// The most bytes [`write_str`] can write for `s`: every byte escaped as `\u00XX`, and quotes.
pub fn max_str_len(s: &str) -> usize {
    6 * s.len() + 2
}

/// Appends a decimal integer.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests;
