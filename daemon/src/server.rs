//! The Unix socket server: one request per connection, a deadline per connection, a cap on
//! connections served at once, a pool of worker threads that accept for themselves. The caller's identity comes from SO_PEERCRED, never from the
//! message.

use crate::audit::Logger;
use crate::clock;
use crate::engine::Engine;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::collections::HashMap;
use std::io::{self, Read, Write};
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
    if shut_down(&listener)? {
        return Err(io::Error::other(
            "the socket systemd passed was shut down (twofold 0.1.0 did that when stopped \
             while logins arrived) and can never accept again: restart twofoldd.socket",
        ));
    }
    Ok(Some(listener))
}

const SHUT_DOWN: &str = "the listening socket no longer accepts connections (it was shut \
                         down); restart twofoldd.socket";

/// Whether a listening socket was shut down for reading: it then refuses every connection
/// and `accept` fails, for good (nothing undoes a shutdown).
fn shut_down(listener: &UnixListener) -> io::Result<bool> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(listener, EpollEvent::new(EpollFlags::EPOLLRDHUP, 0))?;
    let mut events = [EpollEvent::empty(); 1];
    let n = epoll.wait(&mut events, EpollTimeout::ZERO)?;
    Ok(n > 0 && events[0].events().contains(EpollFlags::EPOLLRDHUP))
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
/// waits starts one more first, so a slow client never delays anyone; the pool is bounded by
/// the connection slots, and shrinks back once [`MAX_IDLE`] workers wait.
///
/// Workers wait in epoll, not in `accept`: on the listening socket with `EPOLLEXCLUSIVE` (one
/// wakes per connection) and on the stop pipe (every one wakes when it is written). Stopping
/// never touches the listening socket itself: systemd's is shared with the next instance, and
/// shutting it down would refuse every later connection.
struct Pool {
    state: Mutex<PoolState>,
    listener: UnixListener,
    slots: Arc<Slots>,
    engine: Arc<Engine>,
    log: Arc<Logger>,
    daemon_uid: u32,
    timeout: Duration,
    /// Stopping: answer what was accepted, then leave.
    stopping: AtomicBool,
    /// Readable once stopping (a byte is written to `stop_tx` and never read).
    stop_rx: UnixStream,
    stop_tx: UnixStream,
    /// The socket is systemd's: connections queued in it are the next instance's to answer.
    inherited: bool,
    /// Why the pool stopped by itself (the socket no longer accepts), if it did.
    failure: Mutex<Option<String>>,
}

#[derive(Default)]
struct PoolState {
    /// Workers waiting for a connection.
    idle: usize,
    /// Workers alive.
    workers: usize,
}

/// Idle workers kept after a burst.
const MAX_IDLE: usize = 16;

const LISTENER: u64 = 0;
const STOP: u64 = 1;

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

    /// A worker's own epoll instance: the listener (exclusive wake-ups) and the stop pipe.
    fn waiter(&self) -> io::Result<Epoll> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            &self.listener,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER),
        )?;
        epoll.add(&self.stop_rx, EpollEvent::new(EpollFlags::EPOLLIN, STOP))?;
        Ok(epoll)
    }

    /// Waits until a connection may be there (true) or the pool stops (false).
    fn wait(&self, epoll: &Epoll) -> bool {
        let mut events = [EpollEvent::empty(); 2];
        loop {
            match epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => {
                    return !self.stopping.load(Ordering::SeqCst)
                        && events[..n].iter().any(|e| e.data() == LISTENER)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    self.log.error(&format!("waiting for connections: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                    return false;
                }
            }
        }
    }

    /// Stops every worker; the first reason given is kept.
    fn begin_stop(&self, failure: Option<String>) {
        if let Some(why) = failure {
            self.failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(why);
        }
        self.stopping.store(true, Ordering::SeqCst);
        let _ = (&self.stop_tx).write(&[1]);
    }

    /// Accepts and serves connections. A `permanent` worker (the one `serve` runs on) never
    /// ends but by stopping; the others end when enough workers are idle without them.
    fn work(self: Arc<Self>, permanent: bool) {
        let _guard = WorkerGuard(self.clone());
        let mut epoll = None;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                // Our own socket's name is gone by now: serve what queued before. Systemd's
                // keeps its queue for the next instance.
                if !self.inherited {
                    self.drain();
                }
                self.lock().workers -= 1;
                return;
            }
            if epoll.is_none() {
                match self.waiter() {
                    Ok(e) => epoll = Some(e),
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        self.log.error(&format!("cannot wait for connections: {e}"));
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
            self.lock().idle += 1;
            let ready = epoll.as_ref().is_some_and(|e| self.wait(e));
            let accepted = if ready {
                Some(self.listener.accept())
            } else {
                None
            };
            let grow = {
                let mut s = self.lock();
                s.idle -= 1;
                // One worker more than there are slots, so that "busy" is still answered. A
                // failed accept (EMFILE) is no reason for another thread.
                let spawn =
                    matches!(accepted, Some(Ok(_))) && s.idle == 0 && s.workers <= self.slots.max;
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
                Some(Ok((stream, _))) => self.serve_caught(stream),
                // Stopping (or the wait failed, and was logged).
                None => {}
                // Another worker took it; or the socket was shut down by anyone holding it: it
                // then stays readable and accept says EAGAIN, for good. Leave, loudly (only a
                // socket made anew accepts again), rather than spin.
                Some(Err(e))
                    if e.kind() == io::ErrorKind::WouldBlock
                        && shut_down(&self.listener).unwrap_or(false) =>
                {
                    self.begin_stop(Some(SHUT_DOWN.into()))
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Some(Err(e)) => {
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

    /// Serves one connection. A panic in one request ends that request (its client hears EOF
    /// and fails closed), never the worker: one of them is the daemon's main thread.
    fn serve_caught(&self, stream: UnixStream) {
        let served =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve_one(stream)));
        if served.is_err() {
            self.log.error("a request panicked; it was refused");
        }
    }

    /// Stopping with a socket of our own: serves every connection already queued.
    fn drain(&self) {
        while let Ok((stream, _)) = self.listener.accept() {
            self.serve_caught(stream);
        }
    }

    /// SIGTERM: no worker waits for new connections any more; every connection accepted is
    /// answered. A socket file of our own (`remove`) is first renamed away, so that no client
    /// connects from then on, and every one connected before is served; it is removed once
    /// all are. Systemd's socket stays as it is, with whatever queues in it for the next start.
    fn stop(&self, socket: &Path, remove: bool) {
        let mut gone = None;
        if remove {
            let mut name = socket.as_os_str().to_owned();
            name.push(".stopping");
            gone = Some(match std::fs::rename(socket, &name) {
                Ok(()) => PathBuf::from(name),
                Err(_) => socket.to_path_buf(),
            });
        }
        self.begin_stop(None);
        while self.lock().workers > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(path) = gone {
            let _ = std::fs::remove_file(path);
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
    /// SIGTERM and SIGINT, caught from before the socket existed (see [`stop_signals`]).
    pub signals: signal_hook::iterator::Signals,
}

/// Catches SIGTERM and SIGINT from now on. Called before the socket is bound: a client (or a
/// test, or systemd) that sees the socket may stop the daemon at once, and that stop must be
/// the orderly one, not the signal's default death.
pub fn stop_signals() -> io::Result<signal_hook::iterator::Signals> {
    signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
}

/// Serves until SIGTERM (or SIGINT): then answers everything already accepted or queued and
/// returns.
pub fn serve(listening: Listening, engine: Arc<Engine>, log: Arc<Logger>) -> io::Result<()> {
    let Listening {
        listener,
        path,
        inherited,
        mut signals,
    } = listening;
    let slots = Arc::new(Slots {
        max: engine.config().max_connections,
        state: Mutex::default(),
    });
    let timeout = Duration::from_secs(engine.config().request_timeout);
    // Workers wait in epoll and accept without blocking (another may have taken it).
    listener.set_nonblocking(true)?;
    let (stop_tx, stop_rx) = UnixStream::pair()?;
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
        stop_rx,
        stop_tx,
        inherited,
        failure: Mutex::new(None),
    });
    let signals_handle = signals.handle();
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
    // The permanent worker leaves only once stopping; the stopper returns when all have (or
    // at once when no signal came: the pool stopped by itself).
    pool.clone().work(true);
    signals_handle.close();
    stopped
        .join()
        .map_err(|_| io::Error::other("the stopping thread panicked"))?;
    // Stopped by itself (no signal): the other workers still finish what they accepted.
    while pool.lock().workers > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let failure = pool
        .failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match failure {
        Some(why) => Err(io::Error::other(why)),
        None => Ok(()),
    }
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
