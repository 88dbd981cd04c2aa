//! A mail relay inside the test.

use super::*;

// ---------------------------------------------------------------------------------------------
// A mail relay inside the test

/// A plain SMTP server on 127.0.0.1 (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) keeping
/// every message it receives. Dropping it closes the port: the relay is then down.
#[derive(Debug)]
pub struct SmtpSink {
    pub port: u16,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kept, stopped) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(10)))
                            .unwrap();
                        let kept = kept.clone();
                        std::thread::spawn(move || smtp_session(stream, &kept));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SmtpSink {
            port,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    /// `[email]` settings that send to this sink.
    pub fn config(&self) -> String {
        format!(
            "[email]\nfrom = \"twofold@pam-test.example\"\ntransport = \"smtp\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nstarttls = false\n",
            self.port
        )
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits up to 15 s for the `n`-th message (1-based) and returns it.
    pub fn wait_for(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(m) = self.messages().get(n - 1) {
                return m.clone();
            }
            assert!(Instant::now() < deadline, "no mail number {n} arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes the port (the relay goes down).
    pub fn shut(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.shut();
    }
}

pub(crate) fn smtp_session(stream: std::net::TcpStream, kept: &std::sync::Mutex<Vec<String>>) {
    use std::io::BufRead;
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut reader = std::io::BufReader::new(stream);
    let mut say = |text: &str| out.write_all(text.as_bytes()).is_ok();
    if !say("220 sink.test ESMTP\r\n") {
        return;
    }
    let mut line = String::new();
    let mut envelope = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let ok = match verb.as_str() {
            "EHLO" => say("250-sink.test\r\n250 8BITMIME\r\n"),
            "HELO" => say("250 sink.test\r\n"),
            "MAIL" | "RCPT" => {
                envelope.push_str(&line);
                say("250 OK\r\n")
            }
            "DATA" => {
                if !say("354 go ahead\r\n") {
                    return;
                }
                let mut data = envelope.clone();
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).unwrap_or(0) == 0 {
                        return;
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    data.push_str(&l);
                }
                kept.lock().unwrap().push(data);
                envelope.clear();
                say("250 queued\r\n")
            }
            "QUIT" => {
                let _ = say("221 bye\r\n");
                return;
            }
            _ => say("250 OK\r\n"),
        };
        if !ok {
            return;
        }
    }
}

/// The `123-456` code in a mail.
pub fn mailed_code(message: &str) -> String {
    message
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .find(|w| {
            w.len() == 7
                && w.as_bytes()[3] == b'-'
                && w.bytes()
                    .enumerate()
                    .all(|(i, b)| i == 3 || b.is_ascii_digit())
        })
        .unwrap_or_else(|| panic!("no 123-456 code in the mail:\n{message}"))
        .to_string()
}
