//! A real PostgreSQL server inside the test (Debian's postgresql package, a private data
//! directory).

use super::*;

// ---------------------------------------------------------------------------------------------
// A PostgreSQL server inside the test (Debian's postgresql package, a private data directory)

/// A real PostgreSQL on 127.0.0.1 with its data in a temp directory, run as the `postgres`
/// account (it refuses root) and stopped by its pid. `trust` authentication: loopback only.
/// It also listens on a Unix socket in `dir/sock` (`socket_url`, `psql`).
#[derive(Debug)]
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
}

impl Postgres {
    /// Initialises and starts a server; `None` (after saying why) when not root.
    pub fn start(test: &str) -> Option<Postgres> {
        Postgres::start_with(test, false)
    }

    /// A server that accepts TLS connections only over TCP (a self-signed certificate for
    /// 127.0.0.1, in `dir/ca.pem`; plain TCP connections are rejected by pg_hba.conf; its Unix
    /// socket is trusted, for `psql`).
    pub fn start_tls(test: &str) -> Option<Postgres> {
        Postgres::start_with(test, true)
    }

    fn start_with(test: &str, tls: bool) -> Option<Postgres> {
        if skip_unless_root(test, "run PostgreSQL as the postgres account") {
            return None;
        }
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL is required (Debian package postgresql; scripts/deps.sh installs it)",
            )
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/initdb");
        let dir = open_tempdir();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        let pg = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("the postgres account (made by the postgresql package)");
        nix::unistd::chown(&data, Some(pg.uid), Some(pg.gid)).unwrap();
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(&sock, Some(pg.uid), Some(pg.gid)).unwrap();
        let out = as_postgres(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "twofold",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            let (crt, key) = (data.join("server.crt"), data.join("server.key"));
            let out = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-addext",
                    "basicConstraints=critical,CA:FALSE",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&crt)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for f in [&crt, &key] {
                nix::unistd::chown(f, Some(pg.uid), Some(pg.gid)).unwrap();
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            std::fs::copy(&crt, dir.path().join("ca.pem")).unwrap();
            std::fs::set_permissions(
                dir.path().join("ca.pem"),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .unwrap();
            writeln!(
                conf,
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
            )
            .unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nlocal replication all trust\n\
                 hostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Postgres {
            dir,
            port,
            bin,
            child: None,
        };
        server.restart();
        Some(server)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R` over the primary's Unix socket,
    /// so its settings, certificate and pg_hba.conf too), on a port and socket of its own,
    /// known to the primary as `name` (its `application_name`, for
    /// `synchronous_standby_names`). Read-only until [`Postgres::promote`].
    pub fn standby_of(primary: &Postgres, name: &str) -> Postgres {
        let dir = open_tempdir();
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        for d in [&data, &sock] {
            std::fs::create_dir(d).unwrap();
            let mode = if *d == data { 0o700 } else { 0o755 };
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
            nix::unistd::chown(d, Some(pg.uid), Some(pg.gid)).unwrap();
        }
        let from = format!(
            "host={} port={} user=twofold application_name={name}",
            primary.dir.path().join("sock").display(),
            primary.port
        );
        let out = as_postgres(&primary.bin.join("pg_basebackup"))
            .args([
                "-d",
                &from,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut standby = Postgres {
            dir,
            port,
            bin: primary.bin.clone(),
            child: None,
        };
        standby.restart();
        standby
    }

    /// Makes commits wait until the standby `name` has them (synchronous replication), and
    /// waits until it is streaming synchronously.
    pub fn require_sync_standby(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("ALTER SYSTEM SET synchronous_standby_names = '{name}'"),
        );
        self.psql("postgres", "SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(30);
        let sql =
            format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'");
        while self.psql("postgres", &sql).trim() != "sync" {
            assert!(
                Instant::now() < deadline,
                "{name} did not become synchronous"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Promotes a standby to a primary; returns once it accepts writes.
    pub fn promote(&self) {
        assert_eq!(
            self.psql("postgres", "SELECT pg_promote(true, 30)").trim(),
            "t"
        );
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server and every backend of it: a database
    /// that is up but does not answer.
    pub fn freeze(&self, frozen: bool) {
        let Some(child) = &self.child else { return };
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let pid = child.id().to_string();
        let _ = Command::new("pkill").args([signal, "-P", &pid]).status();
        let _ = Command::new("kill").args([signal, &pid]).status();
    }

    /// Stops (SIGSTOP) the processes that stream WAL to standbys: the standbys hear nothing
    /// more, as if the network to them had stalled. `crash` or `stop` ends it.
    pub fn stall_replication(&self) {
        let pids = self.psql("postgres", "SELECT pid FROM pg_stat_replication");
        assert!(!pids.trim().is_empty(), "no standby is streaming");
        for pid in pids.split_whitespace() {
            let pid = nix::unistd::Pid::from_raw(pid.parse().unwrap());
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        }
    }

    /// The host dies: the server and every backend stop at once (frozen, then killed), with
    /// nothing flushed or sent to a standby on the way out.
    pub fn crash(&mut self) {
        self.freeze(true);
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's programs (psql, pg_isready, …).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// What `postgres_url` says to reach it.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=twofold dbname=postgres",
            self.port
        )
    }

    /// `postgres_url` over the server's Unix socket (no TLS there).
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=twofold dbname=postgres",
            self.dir.path().join("sock").display(),
            self.port
        )
    }

    /// `postgres_url` over TCP with TLS, the certificate verified against `dir/ca.pem` (a
    /// server from `start_tls`).
    pub fn tls_url(&self) -> String {
        format!(
            "{} sslmode=verify-full sslrootcert={}",
            self.url(),
            self.dir.path().join("ca.pem").display()
        )
    }

    /// Runs one SQL command as the superuser `twofold` through the Unix socket; its output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.dir.path().join("sock"))
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "twofold",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Replaces pg_hba.conf and waits until the server has reloaded it.
    pub fn set_hba(&self, text: &str) {
        let data = self.dir.path().join("data");
        std::fs::write(data.join("pg_hba.conf"), text).unwrap();
        let log = self.dir.path().join("postgres.log");
        let reloads = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("reloading configuration files")
                .count()
        };
        let before = reloads();
        let child = self.child.as_ref().expect("server running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads() <= before {
            assert!(Instant::now() < deadline, "PostgreSQL did not reload");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The postmaster logs before it has read the files; give it a moment.
        std::thread::sleep(Duration::from_millis(200));
    }

    /// (Re)starts the server on the same data directory and port; waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let data = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).unwrap();
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().join("sock").display()
            ))
            .args(["-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "twofold",
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGINT: fast shutdown) by its pid and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        "postgres",
        "--regid",
        "postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    c
}
