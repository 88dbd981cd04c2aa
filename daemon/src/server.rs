//! The Unix socket server: one request per connection, a deadline per connection, a cap on
//! connections served at once, a pool of worker threads that accept for themselves. The caller's identity comes from SO_PEERCRED, never from the
//! message.

use crate::audit::Logger;
use crate::clock;
use crate::engine::Engine;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twofold_shared::client::DeadlineStream;
use twofold_shared::wire::{self, ErrorKind, FrameError, Response, ResponseBody, PROTOCOL_VERSION};

/// The listening socket handed over by systemd (`twofoldd.socket`: `LISTEN_PID` is this
/// process, `LISTEN_FDS` is 1), checked to be a listening Unix stream socket; `None` when
/// started without one. Connections queued in it survive a restart of the daemon.
pub fn inherited() -> io::Result<Option<UnixListener>> {
    let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    if !ours || std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(None);
    }
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() != 1 {
        return Err(io::Error::other(format!(
            "systemd passed {} sockets; twofoldd takes exactly one",
            fds.len()
        )));
    }
    let Some(listener) = fds.take_unix_listener(0)? else {
        return Ok(None);
    };
    let listening =
        getsockopt(&listener, nix::sys::socket::sockopt::AcceptConn).map_err(io::Error::from)?;
    if !listening {
        return Err(io::Error::other(
            "the socket systemd passed is not listening",
        ));
    }
    // A previous instance drained it without blocking; this one waits in accept.
    listener.set_nonblocking(false)?;
    Ok(Some(listener))
}

/// Binds the socket: creates its directory if needed, replaces a stale socket (one nobody
/// answers on), refuses to replace a live one or anything that is not a socket, and makes
/// it connectable by every local user (0666): the daemon decides per request.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another twofoldd is already serving {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

fn respond(stream: UnixStream, body: ResponseBody, timeout: Duration) {
    let mut out = DeadlineStream::new(stream, Instant::now() + timeout);
    // Answers may exceed the request limit (`list` of a large host); only the CLI asks for those.
    let response = Response {
        v: PROTOCOL_VERSION,
        body,
    };
    let _ = wire::write_frame_limited(&mut out, &response, wire::MAX_LARGE_FRAME);
}

/// Answers "busy" without a thread and without blocking the accept loop. Whatever the client
/// already sent is drained first: closing a Unix socket with unread data would turn our answer
/// into ECONNRESET on the client's side.
fn refuse_busy(stream: UnixStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    for _ in 0..17 {
        match (&stream).read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let busy = Response {
        v: PROTOCOL_VERSION,
        body: ResponseBody::Error {
            kind: ErrorKind::Busy,
            message: "too many connections; try again".into(),
        },
    };
    let mut out = DeadlineStream::new(stream, Instant::now() + Duration::from_millis(10));
    let _ = wire::write_frame(&mut out, &busy);
    let _ = out.get_ref().read(&mut sink);
}

/// Connections in progress, by peer uid. Unprivileged users share three quarters of
/// `max_connections` and may hold at most [`PER_USER`] each, so that no local user can take
/// every slot and lock root out of sudo and ssh.
struct Slots {
    max: usize,
    state: Mutex<SlotCounts>,
}

#[derive(Default)]
struct SlotCounts {
    total: usize,
    unprivileged: usize,
    by_uid: HashMap<u32, usize>,
}

/// Connections one unprivileged uid may have open at once.
pub const PER_USER: usize = 8;

impl Slots {
    fn take(self: &Arc<Self>, uid: u32, privileged: bool) -> Option<Slot> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.total >= self.max {
            return None;
        }
        if !privileged {
            let mine = s.by_uid.get(&uid).copied().unwrap_or(0);
            if mine >= PER_USER || s.unprivileged >= self.max * 3 / 4 {
                return None;
            }
            s.by_uid.insert(uid, mine + 1);
            s.unprivileged += 1;
        }
        s.total += 1;
        Some(Slot {
            slots: self.clone(),
            uid,
            privileged,
        })
    }
}

/// Gives a connection's slot back when its thread ends, however it ends.
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
    privileged: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if !self.privileged {
            s.unprivileged = s.unprivileged.saturating_sub(1);
            if let Some(n) = s.by_uid.get_mut(&self.uid) {
                *n -= 1;
                if *n == 0 {
                    s.by_uid.remove(&self.uid);
                }
            }
        }
    }
}

/// Worker threads that outlive their connections, each accepting its own: starting a thread
/// per connection cost more than the request itself (a 2 MiB stack mapped, guarded and
/// unmapped, with TLB shootdowns across cores), and handing an accepted connection to another
/// thread cost a wake-up per request. A worker that accepts a connection while no other worker
/// waits in `accept` starts one more first, so a slow client never delays anyone; the pool is
/// bounded by the connection slots, and shrinks back once [`MAX_IDLE`] workers wait.
struct Pool {
    state: Mutex<PoolState>,
    listener: UnixListener,
    slots: Arc<Slots>,
    engine: Arc<Engine>,
    log: Arc<Logger>,
    daemon_uid: u32,
    timeout: Duration,
    /// SIGTERM came: answer what was accepted, then leave.
    stopping: AtomicBool,
}

#[derive(Default)]
struct PoolState {
    /// Workers waiting in `accept`.
    idle: usize,
    /// Workers alive.
    workers: usize,
}

/// Idle workers kept after a burst.
const MAX_IDLE: usize = 16;

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts one more worker (already counted in `workers`).
    fn grow(self: &Arc<Self>) {
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || pool.work(false));
        if let Err(e) = spawned {
            self.lock().workers -= 1;
            self.log
                .error(&format!("cannot start a connection thread: {e}"));
        }
    }

    /// Accepts and serves connections. A `permanent` worker (the one `serve` runs on) never
    /// ends; the others end when enough workers are idle without them.
    fn work(self: Arc<Self>, permanent: bool) {
        let _guard = WorkerGuard(self.clone());
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                self.drain();
                self.lock().workers -= 1;
                return;
            }
            self.lock().idle += 1;
            let accepted = self.listener.accept();
            let grow = {
                let mut s = self.lock();
                s.idle -= 1;
                // One worker more than there are slots, so that "busy" is still answered. A
                // failed accept (EMFILE) is no reason for another thread.
                let spawn = accepted.is_ok() && s.idle == 0 && s.workers <= self.slots.max;
                if spawn {
                    s.workers += 1;
                }
                spawn
            };
            if grow {
                // If no thread could be started, this connection is served anyway and the
                // next worker to finish accepts again.
                self.grow();
            }
            match accepted {
                Ok((stream, _)) => {
                    // A panic in one request ends that request (its client hears EOF and
                    // fails closed), never the worker: one of them is the daemon's main thread.
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.serve_one(stream)
                    }));
                    if served.is_err() {
                        self.log.error("a request panicked; it was refused");
                    }
                }
                // Stopping, and the socket was shut down to wake this worker.
                Err(_) if self.stopping.load(Ordering::SeqCst) => {}
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    self.log.error(&format!("accept failed: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if !permanent {
                let mut s = self.lock();
                if s.idle >= MAX_IDLE {
                    s.workers -= 1;
                    return;
                }
            }
        }
    }

    /// Stopping: serves every connection already queued, without waiting for more.
    fn drain(&self) {
        if self.listener.set_nonblocking(true).is_err() {
            return;
        }
        while let Ok((stream, _)) = self.listener.accept() {
            // Accepted sockets inherit nothing from the listener on Linux, but be sure.
            let _ = stream.set_nonblocking(false);
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve_one(stream)));
        }
    }

    /// SIGTERM: no worker waits for new connections any more. A socket file of our own
    /// (`remove`) is first renamed away, so that no client connects from then on, and every
    /// one connected before is served; systemd's stays, with whatever queues in it for the
    /// next start. Workers blocked in `accept` are woken by connections of our own (closed at
    /// once: they send nothing and are not answered) until every worker has served what was
    /// queued and left. When that name no longer reaches this socket (removed, or another
    /// server's now), the workers are woken by shutting the socket down instead: nobody can
    /// connect to it any more anyway.
    fn stop(&self, socket: &Path, remove: bool) {
        let mut poke = socket.to_path_buf();
        if remove {
            let mut name = socket.as_os_str().to_owned();
            name.push(".stopping");
            if std::fs::rename(socket, &name).is_ok() {
                poke = PathBuf::from(name);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.lock().workers > 0 {
            let reached = UnixStream::connect(&poke).is_ok();
            if !reached || Instant::now() > deadline {
                use std::os::fd::AsRawFd;
                let fd = self.listener.as_raw_fd();
                let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Read);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if remove {
            let _ = std::fs::remove_file(&poke);
        }
    }

    fn serve_one(&self, stream: UnixStream) {
        let (uid, pid) = match getsockopt(&stream, PeerCredentials) {
            Ok(cred) => (cred.uid(), cred.pid()),
            Err(e) => {
                self.log
                    .error(&format!("cannot read peer credentials: {e}"));
                return;
            }
        };
        let privileged = uid == 0 || uid == self.daemon_uid;
        match self.slots.take(uid, privileged) {
            Some(_slot) => handle(stream, uid, pid, &self.engine, self.timeout),
            None => refuse_busy(stream),
        }
    }
}

/// Counts a worker out if a panic in a request ends its thread.
struct WorkerGuard(Arc<Pool>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().workers -= 1;
        }
    }
}

/// Where the server listens, and whether the socket file is its own (bound by it, removed
/// when it stops) or systemd's (kept, with the connections queued in it, for the next start).
pub struct Listening {
    pub listener: UnixListener,
    pub path: PathBuf,
    pub inherited: bool,
}

/// Serves until SIGTERM (or SIGINT): then answers everything already accepted or queued and
/// returns.
pub fn serve(listening: Listening, engine: Arc<Engine>, log: Arc<Logger>) -> io::Result<()> {
    let Listening {
        listener,
        path,
        inherited,
    } = listening;
    let slots = Arc::new(Slots {
        max: engine.config().max_connections,
        state: Mutex::default(),
    });
    let timeout = Duration::from_secs(engine.config().request_timeout);
    let pool = Arc::new(Pool {
        state: Mutex::new(PoolState {
            idle: 0,
            workers: 1,
        }),
        listener,
        slots,
        engine,
        log: log.clone(),
        daemon_uid: nix::unistd::geteuid().as_raw(),
        timeout,
        stopping: AtomicBool::new(false),
    });
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let stopper = pool.clone();
    let stop_log = log.clone();
    let stopped = std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                stop_log.info("stopping: answering the requests already accepted");
                stopper.stop(&path, !inherited);
            }
        })?;
    // The permanent worker leaves only once stopping; the stopper returns when all have.
    pool.work(true);
    stopped
        .join()
        .map_err(|_| io::Error::other("the stopping thread panicked"))
}

fn handle(stream: UnixStream, uid: u32, pid: i32, engine: &Engine, timeout: Duration) {
    let mut input = DeadlineStream::new(stream, Instant::now() + timeout);
    let reply = match wire::read_frame(&mut input) {
        Ok(payload) => engine.handle_payload(uid, Some(pid), &payload, clock::now()),
        // Connected and left: nothing to answer (also what health checks do).
        Err(FrameError::Closed) => return,
        Err(e) => {
            engine.warn_repeated(
                &format!("bad-frame:{uid}"),
                clock::now(),
                &format!("bad frame from uid {uid}: {e}"),
            );
            ResponseBody::Error {
                kind: ErrorKind::BadRequest,
                message: e.to_string(),
            }
        }
    };
    let stream = match input.get_ref().try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    respond(stream, reply, timeout);
}
