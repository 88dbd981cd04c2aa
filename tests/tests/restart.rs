//! Stopping and restarting twofoldd under load (issue 17): SIGTERM answers every request
//! already accepted, checkpoints the database, removes its own socket and exits 0; with the
//! listening socket held by someone else (systemd's `twofoldd.socket`, played here by a small
//! Python holder that passes it as LISTEN_FDS), a restart refuses no request at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use twofold_shared::client::{Client, ClientError};
use twofold_shared::wire::{RequestBody, ResponseBody};
use twofold_tests::*;

/// What a stream of requests from `clients` threads came to while `during` ran.
#[derive(Debug, Default)]
struct Load {
    answered: AtomicUsize,
    /// Could not connect: nobody listened (no socket file).
    unreachable: AtomicUsize,
    /// Connected and then got no answer, or an error: a refused login.
    refused: AtomicUsize,
}

fn under_load(socket: &Path, clients: usize, during: impl FnOnce()) -> Load {
    let load = Load::default();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for i in 0..clients {
            let (load, done) = (&load, &done);
            s.spawn(move || {
                let client = Client::new(socket, Duration::from_secs(10), vec![0, my_uid()]);
                while !done.load(Ordering::SeqCst) {
                    let body = if i % 2 == 0 {
                        RequestBody::Ping {}
                    } else {
                        RequestBody::Preflight {
                            user: "tf-restart".into(),
                            pam: Default::default(),
                            grace_secs: 0,
                            can_enroll: false,
                            combined: false,
                        }
                    };
                    let counter = match client.call(body) {
                        Ok(ResponseBody::Pong { .. } | ResponseBody::Prompt) => &load.answered,
                        Err(ClientError::Unreachable(_)) => &load.unreachable,
                        Ok(_) | Err(_) => &load.refused,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        during();
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::SeqCst);
    });
    load
}

#[test]
fn sigterm_answers_what_was_accepted_and_leaves_nothing_behind() {
    let mut d = Daemon::start("allow", "");
    d.enroll("tf-restart");
    let socket = d.socket.clone();
    let mut status = None;
    let load = under_load(&socket, 20, || status = Some(d.terminate()));
    let status = status.unwrap();
    assert!(status.success(), "exit {status:?}\n{}", d.log());
    assert_eq!(
        load.refused.load(Ordering::SeqCst),
        0,
        "requests connected and never answered: {load:?}"
    );
    assert!(load.answered.load(Ordering::SeqCst) > 100, "{load:?}");
    assert!(!socket.exists(), "the socket file stays behind");
    let log = d.log();
    assert!(
        log.contains("stopped: every request answered, database checkpointed"),
        "{log}"
    );
    let wal = d.database.with_extension("db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the write-ahead log was not checkpointed"
    );
    eprintln!(
        "stop under load: {} answered, {} refused, {} found no socket",
        load.answered.load(Ordering::SeqCst),
        load.refused.load(Ordering::SeqCst),
        load.unreachable.load(Ordering::SeqCst)
    );
}

/// systemd's part: holds the listening socket and starts twofoldd with it as fd 3
/// (`LISTEN_FDS=1`, `LISTEN_PID` its pid), stops it with SIGTERM, starts it again.
const HOLDER: &str = r#"
import ctypes, os, signal, socket, sys, time
path, config, daemon = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); os.chmod(path, 0o666); s.listen(512)
child = None
for line in sys.stdin:
    if line.strip() == "start":
        pid = os.fork()
        if pid == 0:
            # The daemon dies with the holder (a failed test kills the holder).
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)
            if s.fileno() != 3:
                os.dup2(s.fileno(), 3)
            os.set_inheritable(3, True)
            os.environ["LISTEN_FDS"] = "1"
            os.environ["LISTEN_PID"] = str(os.getpid())
            err = os.open(config + ".log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.dup2(err, 2)
            os.execv(daemon, [daemon, "--config", config])
        child = pid
        print("started", pid, flush=True)
    elif line.strip() == "stop":
        os.kill(child, signal.SIGTERM)
        _, status = os.waitpid(child, 0)
        print("stopped", os.waitstatus_to_exitcode(status), flush=True)
    elif line.strip() == "wait":
        for _ in range(200):
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                print("stopped", os.waitstatus_to_exitcode(status), flush=True)
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            print("still running", flush=True)
    elif line.strip() == "shutdown":
        s.shutdown(socket.SHUT_RD)
        print("shut down", flush=True)
"#;

/// A daemon of the kit's enrollment and database, served by daemons started by the holder on
/// its socket (the same configuration, another socket path).
struct Held {
    _holder: KillOnDrop,
    to: std::process::ChildStdin,
    from: BufReader<std::process::ChildStdout>,
    socket: std::path::PathBuf,
    config: std::path::PathBuf,
    _daemon: Daemon,
}

impl Held {
    fn new() -> Held {
        let mut d = Daemon::start("allow", "");
        d.enroll("tf-restart");
        d.stop();
        let socket = d.dir.path().join("held.sock");
        let config = d.dir.path().join("held.toml");
        let text = std::fs::read_to_string(&d.config).unwrap();
        std::fs::write(
            &config,
            text.replace(&format!("{:?}", d.socket), &format!("{socket:?}")),
        )
        .unwrap();
        let mut holder = KillOnDrop(
            Command::new("python3")
                .args(["-c", HOLDER])
                .arg(&socket)
                .arg(&config)
                .arg(twofoldd())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        Held {
            to: holder.0.stdin.take().unwrap(),
            from: BufReader::new(holder.0.stdout.take().unwrap()),
            _holder: holder,
            socket,
            config,
            _daemon: d,
        }
    }

    fn say(&mut self, what: &str) -> String {
        writeln!(self.to, "{what}").unwrap();
        let mut line = String::new();
        self.from.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("toml.log")).unwrap_or_default()
    }

    fn ping(&self) -> Result<ResponseBody, ClientError> {
        Client::new(&self.socket, Duration::from_secs(10), vec![0, my_uid()])
            .call(RequestBody::Ping {})
    }
}

#[test]
fn a_restart_with_the_socket_held_by_systemd_refuses_no_request() {
    let mut held = Held::new();
    assert!(held.say("start").starts_with("started"));
    let mut restarts = Vec::new();
    let socket = held.socket.clone();
    let load = under_load(&socket, 20, || {
        for _ in 0..3 {
            restarts.push(held.say("stop"));
            restarts.push(held.say("start"));
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    assert!(
        restarts.iter().filter(|l| *l == "stopped 0").count() == 3,
        "{restarts:?}\n{}",
        held.log()
    );
    let (answered, refused, unreachable) = (
        load.answered.load(Ordering::SeqCst),
        load.refused.load(Ordering::SeqCst),
        load.unreachable.load(Ordering::SeqCst),
    );
    eprintln!("restart under load: {answered} requests, {refused} refused, {unreachable} unreachable (3 restarts)");
    assert_eq!((refused, unreachable), (0, 0), "{}", held.log());
    assert!(answered > 100);
    assert!(held.log().contains("(from systemd)"), "{}", held.log());
    assert!(socket.exists(), "systemd's socket stays");
    held.say("stop");
}

/// A stop that waits long for a request in flight (a client that sent half a request, held
/// until request_timeout) must leave systemd's socket as it found it: the next instance
/// accepts on it. (twofold 0.1.0 shut the socket down after 2 s, and every later login was
/// refused until twofoldd.socket was restarted.)
#[test]
fn a_slow_stop_leaves_systemds_socket_accepting() {
    let mut held = Held::new();
    assert!(held.say("start").starts_with("started"));
    assert!(matches!(held.ping(), Ok(ResponseBody::Pong { .. })));
    let mut slow = std::os::unix::net::UnixStream::connect(&held.socket).unwrap();
    slow.write_all(&[0, 0]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    assert_eq!(held.say("stop"), "stopped 0", "{}", held.log());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the stop did not wait for the slow client ({took:?})"
    );
    // A connection made while no daemon runs waits in the queue for the next one.
    let (tx, rx) = std::sync::mpsc::channel();
    let client = Client::new(&held.socket, Duration::from_secs(10), vec![0, my_uid()]);
    std::thread::spawn(move || tx.send(client.call(RequestBody::Ping {})).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(held.say("start").starts_with("started"));
    let queued = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        matches!(queued, Ok(ResponseBody::Pong { .. })),
        "{queued:?}\n{}",
        held.log()
    );
    assert!(
        matches!(held.ping(), Ok(ResponseBody::Pong { .. })),
        "{}",
        held.log()
    );
    eprintln!("stop waited {took:?} for the slow client; the socket still accepts");
    held.say("stop");
}

/// A socket that was shut down can never accept again: twofoldd says so and exits non-zero
/// instead of spinning on failed accepts (and its clients fail closed).
#[test]
fn a_shut_down_socket_from_systemd_is_refused_at_start() {
    let mut held = Held::new();
    assert_eq!(held.say("shutdown"), "shut down");
    assert!(held.say("start").starts_with("started"));
    assert_ne!(held.say("wait"), "stopped 0", "{}", held.log());
    assert!(
        held.log().contains("restart twofoldd.socket"),
        "{}",
        held.log()
    );
    assert!(held.ping().is_err());
}

/// Someone removed the socket file (a purge, an administrator): SIGTERM still stops the
/// daemon at once, with status 0.
#[test]
fn a_socket_shut_down_while_serving_stops_the_daemon_loudly() {
    let mut held = Held::new();
    assert!(held.say("start").starts_with("started"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.ping().is_err() {
        assert!(Instant::now() < deadline, "never answered: {}", held.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(held.say("shutdown"), "shut down");
    // It exits with a failure (for systemd to see) instead of spinning on a dead socket.
    let ended = held.say("wait");
    assert!(
        ended.starts_with("stopped ") && ended != "stopped 0",
        "{ended}: {}",
        held.log()
    );
    assert!(
        held.log().contains("restart twofoldd.socket"),
        "{}",
        held.log()
    );
}

#[test]
fn sigterm_stops_even_when_the_socket_file_is_gone() {
    let mut d = Daemon::start("allow", "");
    std::fs::remove_file(&d.socket).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(d.terminate()).unwrap());
        let status = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("twofoldd did not stop on SIGTERM");
        assert!(status.success(), "{status:?}");
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// SIGTERM sent the moment the socket appears (systemd, or a test, may do just that) is the
/// orderly stop, never the signal's default death: the handler is in place before the socket.
#[test]
fn sigterm_the_moment_the_socket_appears_is_an_orderly_stop() {
    let mut d = Daemon::start("allow", "");
    d.stop();
    for round in 0..30 {
        let _ = std::fs::remove_file(&d.socket);
        let mut child = Command::new(twofoldd())
            .arg("--config")
            .arg(&d.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.socket.exists() {
            assert!(Instant::now() < deadline, "round {round}: no socket");
            assert!(child.try_wait().unwrap().is_none(), "round {round}: exited");
            std::thread::sleep(Duration::from_micros(100));
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "round {round}: {status:?}");
    }
}
