//! The blocking client shared by the PAM module and the CLI.
//!
//! Every call has one deadline covering connect, write and read. Before anything is sent the
//! server's uid is read from the kernel (SO_PEERCRED) and checked, so a socket planted by another
//! user never sees a code. Sockets are close-on-exec.

use crate::login;
use crate::wire::{self, FrameError, RequestBody, Response, ResponseBody, PROTOCOL_VERSION};
use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt::PeerCredentials, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// A stream whose reads and writes fail with `TimedOut` once `deadline` has passed, however
/// slowly the peer trickles bytes. Used by both the client and the daemon.
#[derive(Debug)]
pub struct DeadlineStream {
    stream: UnixStream,
    deadline: Instant,
}

impl DeadlineStream {
    pub fn new(stream: UnixStream, deadline: Instant) -> Self {
        DeadlineStream { stream, deadline }
    }

    pub fn get_ref(&self) -> &UnixStream {
        &self.stream
    }

    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left.max(Duration::from_millis(1)))
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for DeadlineStream {
    /// Writes with MSG_NOSIGNAL: a peer that hung up must produce EPIPE, never a SIGPIPE that
    /// would kill the process we live in (sshd, sudo).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_write_timeout(Some(left))?;
        loop {
            match socket::send(self.stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
                }
                other => return other.map_err(io::Error::from),
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Where and how to reach twofoldd.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
    pub timeout: Duration,
    /// uids allowed to serve the socket. The PAM module trusts root only (unless configured);
    /// the CLI also trusts a daemon run by the invoking user.
    pub trusted_uids: Vec<u32>,
    /// Largest answer accepted: [`wire::MAX_FRAME`] unless raised (the CLI's `list`, `audit`).
    pub max_response: usize,
}

#[derive(Debug)]
pub enum ClientError {
    /// Nobody listens on the socket, or it does not exist.
    Unreachable(io::Error),
    TimedOut,
    /// The process serving the socket runs as a uid we do not trust.
    UntrustedServer {
        uid: u32,
    },
    Frame(FrameError),
    VersionMismatch {
        daemon: u32,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable(e) => write!(f, "cannot reach twofoldd: {e}"),
            ClientError::TimedOut => f.write_str("twofoldd did not answer in time"),
            ClientError::UntrustedServer { uid } => {
                write!(f, "the socket is served by uid {uid}, which is not trusted; refusing to talk to it")
            }
            ClientError::Frame(e) => write!(f, "bad answer from twofoldd: {e}"),
            ClientError::VersionMismatch { daemon } => write!(
                f,
                "twofoldd speaks protocol version {daemon}, this client speaks {PROTOCOL_VERSION}"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TimedOut => ClientError::TimedOut,
            other => ClientError::Frame(other),
        }
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration, trusted_uids: Vec<u32>) -> Self {
        Client {
            socket: socket.into(),
            timeout,
            trusted_uids,
            max_response: wire::MAX_FRAME,
        }
    }

    /// Sends one request and returns the daemon's answer. Opens and closes its own connection.
    pub fn call(&self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        let frame = wire::encode_frame(&body.into_request(), wire::MAX_FRAME)?;
        let payload = self.exchange(&frame)?;
        if let Some(v) = wire::peek_version(&payload) {
            if v != PROTOCOL_VERSION {
                return Err(ClientError::VersionMismatch { daemon: v });
            }
        }
        let response: Response = wire::decode(&payload)?;
        Ok(response.body)
    }

    /// [`Client::call`] for a login's requests (preflight, verify, a mailed code, the first
    /// code of an enrollment at login), through the hand codec of [`crate::login`]: the same
    /// bytes on the wire, no serde in the caller. Any other request is refused unsent.
    pub fn call_login(&self, body: &RequestBody) -> Result<ResponseBody, ClientError> {
        let frame = login::encode_frame(body).ok_or_else(|| {
            ClientError::Frame(FrameError::Json(format!(
                "{} is not a login's request",
                body.op_name()
            )))
        })?;
        let json_len = frame.len() - 4;
        if json_len > wire::MAX_FRAME {
            return Err(FrameError::TooLarge(json_len as u64, wire::MAX_FRAME).into());
        }
        let payload = self.exchange(&frame)?;
        login::decode_response(&payload).map_err(|e| match e {
            login::DecodeError::Version(daemon) => ClientError::VersionMismatch { daemon },
            login::DecodeError::Frame(e) => e.into(),
        })
    }

    /// Connects, checks who serves the socket, sends one whole frame and reads the answer's.
    fn exchange(&self, frame: &[u8]) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let stream = connect(&self.socket, deadline)?;
        let uid = socket::getsockopt(&stream.as_fd(), PeerCredentials)
            .map_err(|e| ClientError::Unreachable(e.into()))?
            .uid();
        if !self.trusted_uids.contains(&uid) {
            return Err(ClientError::UntrustedServer { uid });
        }
        let mut stream = DeadlineStream::new(stream, deadline);
        let sent = stream
            .write_all(frame)
            .map_err(|e| wire::io_to_frame(e, true));
        // A daemon that refuses early (too busy) answers and hangs up before reading: its
        // answer is still worth reading when our write failed.
        match (
            sent,
            wire::read_frame_limited(&mut stream, self.max_response),
        ) {
            (_, Ok(payload)) => Ok(payload),
            (Err(e), Err(_)) => Err(e.into()),
            (Ok(()), Err(e)) => Err(e.into()),
        }
    }
}

/// Connects a close-on-exec Unix stream socket, giving up at `deadline`. A listener whose
/// backlog is full makes a non-blocking connect fail with EAGAIN; that is retried until the
/// deadline rather than blocking without bound.
fn connect(path: &Path, deadline: Instant) -> Result<UnixStream, ClientError> {
    let addr = UnixAddr::new(path).map_err(|e| ClientError::Unreachable(e.into()))?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ClientError::Unreachable(e.into()))?;
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => {
                if Instant::now() >= deadline {
                    return Err(ClientError::TimedOut);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(ClientError::Unreachable(e.into())),
        }
    }
    let stream = UnixStream::from(fd);
    stream
        .set_nonblocking(false)
        .map_err(ClientError::Unreachable)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PamItems;

    /// A login's request over the frame limit is refused before anything is sent, as
    /// `write_frame` refuses it for every other request (no socket exists at that path).
    #[test]
    fn oversized_login_request_is_refused_unsent() {
        let client = Client::new("/nonexistent/twofold.sock", Duration::from_secs(1), vec![0]);
        let body = RequestBody::SendEmailCode {
            user: "a".repeat(wire::MAX_FRAME),
            pam: PamItems::default(),
        };
        match client.call_login(&body) {
            Err(ClientError::Frame(FrameError::TooLarge(_, limit))) => {
                assert_eq!(limit, wire::MAX_FRAME)
            }
            other => panic!("{other:?}"),
        }
        let small = RequestBody::SendEmailCode {
            user: "alice".into(),
            pam: PamItems::default(),
        };
        assert!(matches!(
            client.call_login(&small),
            Err(ClientError::Unreachable(_))
        ));
    }
}
