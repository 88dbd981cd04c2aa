//! A TCP relay on 127.0.0.1 in front of a server, that a test can cut (every connection
//! through it closed, new ones closed at once: the host behind it is cut off) and mend.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relays 127.0.0.1:`port` (the returned `port` is the relay's own).
    pub fn to(port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = Relay {
            port: listener.local_addr().unwrap().port(),
            cut: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (cut, open, stop) = (relay.cut.clone(), relay.open.clone(), relay.stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                // Decided under the lock `cut` takes: no connection slips past a cut.
                let mut list = open.lock().unwrap();
                if cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    continue;
                }
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        relay
    }

    /// Cuts the host off: open connections closed, new ones closed as they come.
    pub fn cut(&self) {
        let mut open = self.open.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accepting thread so that it sees `stop` and returns.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` until either end closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// A relay in front of a PostgreSQL Unix socket (plain text) that can lose the answer to a
/// commit: armed, the next connection that sends `COMMIT` has it passed on, and when the
/// server answers (it has committed) the answer is dropped and the connection closed. The
/// client cannot tell whether its transaction committed.
#[derive(Debug)]
pub struct CommitRelay {
    /// Holds `.s.PGSQL.<port>`: `host=` of a `postgres_url`.
    pub dir: tempfile::TempDir,
    armed: Arc<AtomicBool>,
    lost: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    listening: std::path::PathBuf,
}

impl CommitRelay {
    /// Relays the server's socket `server_dir/.s.PGSQL.<port>`.
    pub fn to(server_dir: &std::path::Path, port: u16) -> CommitRelay {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = crate::open_tempdir();
        let name = format!(".s.PGSQL.{port}");
        let listening = dir.path().join(&name);
        let listener = UnixListener::bind(&listening).unwrap();
        let server = server_dir.join(name);
        let relay = CommitRelay {
            dir,
            armed: Arc::new(AtomicBool::new(false)),
            lost: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            listening,
        };
        let (armed, lost, stop) = (relay.armed.clone(), relay.lost.clone(), relay.stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut client) = client else { continue };
                let Ok(mut to_server) = UnixStream::connect(&server) else {
                    continue;
                };
                let committing = Arc::new(AtomicBool::new(false));
                let (mut from_server, mut to_client) =
                    (to_server.try_clone().unwrap(), client.try_clone().unwrap());
                let (armed, lost, seen) = (armed.clone(), lost.clone(), committing.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = client.read(&mut buf) {
                        let chunk = &buf[..n];
                        if chunk.windows(7).any(|w| w == b"COMMIT\0")
                            && armed.swap(false, Ordering::SeqCst)
                        {
                            seen.store(true, Ordering::SeqCst);
                            lost.fetch_add(1, Ordering::SeqCst);
                        }
                        if to_server.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(Shutdown::Both);
                    let _ = client.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = from_server.read(&mut buf) {
                        if committing.load(Ordering::SeqCst) {
                            break;
                        }
                        if to_client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(Shutdown::Both);
                    let _ = from_server.shutdown(Shutdown::Both);
                });
            }
        });
        relay
    }

    /// Loses the answer to the next commit through the relay.
    pub fn lose_next_commit_answer(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many answers were lost.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for CommitRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees `stop` and returns.
        let _ = std::os::unix::net::UnixStream::connect(&self.listening);
    }
}
