//! Stopping and restarting twofoldd under load (issue 17): SIGTERM answers every request
//! already accepted, checkpoints the database, removes its own socket and exits 0; with the
//! listening socket held by someone else (systemd's `twofoldd.socket`, played here by a small
//! Python holder that passes it as LISTEN_FDS), a restart refuses no request at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
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
import os, signal, socket, sys
path, config, daemon = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); os.chmod(path, 0o666); s.listen(512)
child = None
for line in sys.stdin:
    if line.strip() == "start":
        pid = os.fork()
        if pid == 0:
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
"#;

#[test]
fn a_restart_with_the_socket_held_by_systemd_refuses_no_request() {
    // The enrollment and its database, made by a daemon of the kit, then served by the held
    // socket's daemons (the same configuration, another socket path).
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
    let mut to = holder.0.stdin.take().unwrap();
    let mut from = BufReader::new(holder.0.stdout.take().unwrap());
    let mut say = |what: &str| -> String {
        writeln!(to, "{what}").unwrap();
        let mut line = String::new();
        from.read_line(&mut line).unwrap();
        line
    };
    assert!(say("start").starts_with("started"));
    let log = || std::fs::read_to_string(config.with_extension("toml.log")).unwrap_or_default();
    let mut restarts = Vec::new();
    let load = under_load(&socket, 20, || {
        for _ in 0..3 {
            restarts.push(say("stop"));
            restarts.push(say("start"));
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    assert!(
        restarts.iter().filter(|l| l.trim() == "stopped 0").count() == 3,
        "{restarts:?}\n{}",
        log()
    );
    let (answered, refused, unreachable) = (
        load.answered.load(Ordering::SeqCst),
        load.refused.load(Ordering::SeqCst),
        load.unreachable.load(Ordering::SeqCst),
    );
    eprintln!("restart under load: {answered} requests, {refused} refused, {unreachable} unreachable (3 restarts)");
    assert_eq!((refused, unreachable), (0, 0), "{}", log());
    assert!(answered > 100);
    assert!(log().contains("(from systemd)"), "{}", log());
    assert!(socket.exists(), "systemd's socket stays");
    say("stop");
}

/// Someone removed the socket file (a purge, an administrator): SIGTERM still stops the
/// daemon at once, with status 0.
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
