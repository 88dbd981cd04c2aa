//! Audit and diagnostic lines: syslog (LOG_AUTHPRIV) when /dev/log exists, stderr otherwise.
//! Fields that come from clients are escaped and bounded; codes never reach this module.

use std::fmt::Write as _;
use std::sync::Mutex;
use syslog::{Facility, Formatter3164, LoggerBackend};

pub enum Logger {
    Syslog(Mutex<syslog::Logger<LoggerBackend, Formatter3164>>),
    Stderr,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Logger::Syslog(_) => "Logger::Syslog",
            Logger::Stderr => "Logger::Stderr",
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Logger {
    /// Syslog if a syslog socket exists, else stderr.
    pub fn open() -> Logger {
        if !std::path::Path::new("/dev/log").exists() {
            return Logger::Stderr;
        }
        let formatter = Formatter3164 {
            facility: Facility::LOG_AUTHPRIV,
            hostname: None,
            process: "twofoldd".into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(logger) => Logger::Syslog(Mutex::new(logger)),
            Err(_) => Logger::Stderr,
        }
    }

    pub fn log(&self, level: Level, line: &str) {
        match self {
            Logger::Syslog(logger) => {
                if let Ok(mut l) = logger.lock() {
                    let _ = match level {
                        Level::Info => l.info(line),
                        Level::Warning => l.warning(line),
                        Level::Error => l.err(line),
                    };
                }
            }
            Logger::Stderr => {
                let tag = match level {
                    Level::Info => "info",
                    Level::Warning => "warning",
                    Level::Error => "error",
                };
                // One write per line (eprintln! makes one per piece: seven system calls a
                // line), and a full or closed stderr loses the line rather than the request.
                let text = format!("twofoldd[{}]: {tag}: {line}\n", std::process::id());
                let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
            }
        }
    }

    pub fn info(&self, line: &str) {
        self.log(Level::Info, line)
    }
    pub fn warn(&self, line: &str) {
        self.log(Level::Warning, line)
    }
    pub fn error(&self, line: &str) {
        self.log(Level::Error, line)
    }
}

/// A client-supplied value made safe for one log line: printable, no spaces or quotes
/// (escaped as `\xNN`), at most 64 characters.
pub fn field(value: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        if c.is_control()
            || c.is_whitespace()
            || is_invisible(c)
            || c == '"'
            || c == '\\'
            || c == '='
        {
            for b in c.to_string().bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

pub use twofold_shared::wire::is_invisible;

/// Free text that may hold client input (error messages quoting field names): one line,
/// control and invisible characters escaped, at most 200 characters.
pub fn text(value: &str) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == 200 {
            out.push_str("...");
            break;
        }
        if c.is_control() || is_invisible(c) || c == '\\' {
            for b in c.to_string().bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `field` for an optional value.
pub fn opt(value: Option<&str>) -> String {
    value.map(field).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_escaped_and_bounded() {
        assert_eq!(field("alice"), "alice");
        assert_eq!(field(""), "-");
        assert_eq!(field("a b\n\"x\"=1"), "a\\x20b\\x0a\\x22x\\x22\\x3d1");
        assert_eq!(field("\u{1b}[31m"), "\\x1b[31m");
        let long = field(&"x".repeat(1000));
        assert_eq!(long.len(), 67);
        assert_eq!(opt(None), "-");
        assert_eq!(field("a\u{202e}b"), "a\\xe2\\x80\\xaeb");
        // Free text keeps its spaces but not its line breaks.
        assert_eq!(
            text("unknown field `a\nfake: line` at 1"),
            "unknown field `a\\x0afake: line` at 1"
        );
        assert_eq!(text(&"y".repeat(500)).len(), 203);
    }
}
