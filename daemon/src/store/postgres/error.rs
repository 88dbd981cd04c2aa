//! What a driver error means to twofold: an outage (the database did not answer), or an
//! answer that refused.

use super::*;

pub(crate) fn pg_error(e: postgres::Error) -> StoreError {
    // The cause (a refused certificate, a reset connection) is what an administrator needs.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // No answer at all (no connection, a connection lost or timed out), or a server that says
    // it cannot serve: 08 connection exceptions, 57P01-57P03 shutting down, crashed, starting.
    // A refused certificate or password, a statement that failed or was cut short by the
    // timeout, a lock not had in time: the server answered, and that is no outage (a host must
    // not be sent offline by a slow statement or a contended lock).
    const NO_ANSWER: [&str; 3] = [
        "error communicating with the server",
        "error connecting to server",
        "timeout waiting for server",
    ];
    let unanswered = match e.code().map(|c| c.code()) {
        None => e.is_closed() || NO_ANSWER.iter().any(|t| text.starts_with(t)),
        Some(code) => code.starts_with("08") || ["57P01", "57P02", "57P03"].contains(&code),
    };
    match unanswered {
        true => StoreError::Unreachable(text),
        false => StoreError::Remote(text),
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        pg_error(e)
    }
}
