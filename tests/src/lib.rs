//! Harness for the end-to-end tests: the real `twofoldd`, `twofold` and `libpam_twofold.so`
//! from the workspace's target directory, a throwaway daemon per test, pamtester under
//! pam_wrapper with a private service directory, and codes from oathtool (an independent TOTP
//! implementation).
//!
//! Build first: `cargo build --workspace` (scripts/test.sh does).
// A harness reports failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const PAM_WRAPPER: &str = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so";
pub const PAM_PERMIT: &str = "/usr/lib/x86_64-linux-gnu/security/pam_permit.so";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The name of the account running the tests: a real account, as PAM needs.
pub fn my_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .expect("the test user has no account name")
        .name
}

/// The workspace's `target/debug`, or `$CARGO_TARGET_DIR/debug`.
pub fn target_dir() -> PathBuf {
    let base = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    };
    base.join("debug")
}

/// A built artifact; fails the test with instructions when it is missing.
pub fn artifact(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path.canonicalize().unwrap()
}

pub fn twofoldd() -> PathBuf {
    artifact("twofoldd")
}

pub fn twofold_cli() -> PathBuf {
    artifact("twofold")
}

pub fn pam_module() -> PathBuf {
    artifact("libpam_twofold.so")
}

/// A temp directory other users can enter (the non-root daemon and pamtester need that).
pub fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Waits until something accepts connections on `socket`.
pub fn wait_for_socket(socket: &Path, child: &mut Child, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(socket).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up ({status}): {}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A twofoldd of its own: temp socket, database and config; killed when dropped. One kit for
/// the daemon's own tests (`start_with`, issuer `test-host`) and the end-to-end tests
/// (`start`, issuer `pam-test` and an `unenrolled` policy).
#[derive(Debug)]
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub database: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

/// What `twofold enroll` + `twofold confirm` handed out.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub secret: String,
    pub backup_codes: Vec<String>,
}

/// What a CLI run printed and how it ended; it is also the `Output` it wraps.
#[derive(Debug)]
pub struct Run(pub Output);

impl std::ops::Deref for Run {
    type Target = Output;
    fn deref(&self) -> &Output {
        &self.0
    }
}

impl Run {
    /// The exit status (-1 when killed by a signal).
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
}

impl Daemon {
    /// For the end-to-end tests: `unenrolled` is "allow" or "deny"; `extra` is appended to the
    /// config file.
    pub fn start(unenrolled: &str, extra: &str) -> Daemon {
        Daemon::launch(&format!(
            "issuer = \"pam-test\"\nunenrolled = {unenrolled:?}\n{extra}\n"
        ))
    }

    /// For the daemon's own tests: `extra` is all the config file says besides the paths.
    pub fn start_with(extra: &str) -> Daemon {
        Daemon::launch(&format!("issuer = \"test-host\"\n{extra}\n"))
    }

    fn launch(policy: &str) -> Daemon {
        let dir = open_tempdir();
        let socket = dir.path().join("twofold.sock");
        // twofoldd refuses a database in a directory others can read.
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let database = state.join("twofold.db");
        let config = dir.path().join("twofold.toml");
        std::fs::write(
            &config,
            format!("socket = {socket:?}\ndatabase = {database:?}\n{policy}"),
        )
        .unwrap();
        let mut d = Daemon {
            dir,
            socket,
            database,
            config,
            child: None,
        };
        d.restart();
        d
    }

    /// (Re)starts the process on the same socket, database and config.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("twofoldd.log")).unwrap();
        let mut child = Command::new(twofoldd())
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn twofoldd");
        let log_path = self.dir.path().join("twofoldd.log");
        wait_for_socket(&self.socket, &mut child, "twofoldd", || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        });
        self.child = Some(child);
    }

    /// Rewrites the configuration (socket and database kept, `unenrolled` and `extra` new) and
    /// sends SIGHUP; waits until the daemon's log says it reloaded.
    pub fn reconfigure(&self, unenrolled: &str, extra: &str) {
        let log_path = self.dir.path().join("twofoldd.log");
        let before = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches("policy reloaded")
            .count();
        std::fs::write(
            &self.config,
            format!(
                "socket = {:?}\ndatabase = {:?}\nissuer = \"pam-test\"\nunenrolled = {unenrolled:?}\n{extra}\n",
                self.socket, self.database,
            ),
        )
        .unwrap();
        let pid = self.pid().expect("daemon running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches("policy reloaded")
            .count()
            <= before
        {
            assert!(Instant::now() < deadline, "twofoldd did not reload");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon (SIGKILL, by its pid: nothing may depend on a clean shutdown) and waits
    /// for it; the socket file stays behind.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The daemon's log (its stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("twofoldd.log")).unwrap_or_default()
    }

    /// Runs `twofold --socket S ARGS...`, never through `$TWOFOLD_SOCKET`.
    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_as(None, args, None)
    }

    /// Runs the CLI, optionally as another user (via setpriv) and with standard input.
    pub fn cli_as(&self, user: Option<&str>, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", u, "--regid", u, "--init-groups", "--"])
                    .arg(twofold_cli());
                c
            }
            None => Command::new(twofold_cli()),
        };
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("TWOFOLD_SOCKET")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn twofold");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        Run(child.wait_with_output().expect("wait twofold"))
    }

    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "twofold {args:?} failed ({}): {} {}",
            out.status,
            out.stdout(),
            out.stderr()
        );
        out.json()
    }

    /// Enrolls `user` and confirms with oathtool's current code (which consumes this step),
    /// first waiting for a step with time to spare.
    pub fn enroll(&self, user: &str) -> Enrollment {
        let started = self.cli_json(&["enroll", "--user", user, "--json"]);
        let secret = started["secret"].as_str().unwrap().to_string();
        ensure_step_time(8);
        self.confirm(user, secret)
    }

    /// `enroll` without waiting for a fresh step (the daemon's own tests time their steps).
    pub fn enroll_now(&self, user: &str) -> (String, Vec<String>) {
        let started = self.cli_json(&["enroll", "--user", user, "--json"]);
        let secret = started["secret"].as_str().unwrap().to_string();
        let e = self.confirm(user, secret);
        (e.secret, e.backup_codes)
    }

    fn confirm(&self, user: &str, secret: String) -> Enrollment {
        let confirmed =
            self.cli_json(&["confirm", &oathtool(&secret, 0), "--user", user, "--json"]);
        let backup_codes = confirmed["backup_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        Enrollment {
            secret,
            backup_codes,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// twofoldd's exit status and standard error when started on `config` (expected to refuse).
pub fn refused_start(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(twofoldd())
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A name unique to this process and test: `PREFIX-PID-N`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// A group made for the test (root only), removed when dropped.
#[derive(Debug)]
pub struct TestGroup(pub String);

impl TestGroup {
    pub fn create(name: &str) -> TestGroup {
        let _ = Command::new("groupdel").arg(name).output();
        let out = run_account_tool("groupadd", &[name], None);
        assert!(
            out.status.success(),
            "groupadd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestGroup(name.to_string())
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = run_account_tool("groupdel", &[&self.0], None);
    }
}

/// A path as the `&str` an argument list wants.
pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The code for unix time `at`, from oathtool.
pub fn oathtool_at(secret: &str, at: u64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", "-N", &format!("@{at}"), secret])
        .output()
        .expect("oathtool is needed (Debian package oathtool; scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "oathtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The code `steps` periods from now, from oathtool.
pub fn oathtool(secret: &str, steps: i64) -> String {
    let at = unix_now().checked_add_signed(steps * 30).unwrap();
    oathtool_at(secret, at)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sleeps into the next 30-second step when fewer than `need` seconds are left in this one,
/// so a code computed now is still the one the daemon expects when it arrives.
pub fn ensure_step_time(need: u64) {
    let left = 30 - unix_now() % 30;
    if left < need {
        std::thread::sleep(Duration::from_secs(left) + Duration::from_millis(200));
    }
}

/// A PAM service for pamtester under pam_wrapper, in a private service directory.
#[derive(Debug)]
pub struct PamService {
    pub dir: tempfile::TempDir,
    pub name: String,
}

/// What pamtester did.
#[derive(Debug)]
pub struct PamRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl PamRun {
    /// Everything pamtester and the module printed.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// `auth` arguments pointing pam_twofold.so at `socket`. A daemon run by a non-root test user
/// must be trusted explicitly: the module trusts only root by default.
pub fn module_args(socket: &Path) -> String {
    let mut args = format!("socket={} timeout=3", socket.display());
    if !is_root() {
        args.push_str(&format!(" daemon_uid={}", my_uid()));
    }
    args
}

impl PamService {
    /// `stack` is the service file's text; `MODULE` in it is replaced by the module's path.
    pub fn new(stack: &str) -> PamService {
        let dir = open_tempdir();
        let name = "twofold-test".to_string();
        let text = stack.replace("MODULE", pam_module().to_str().unwrap());
        std::fs::write(dir.path().join(&name), text).unwrap();
        assert!(
            Path::new(PAM_WRAPPER).is_file(),
            "{PAM_WRAPPER} is missing (Debian package libpam-wrapper; scripts/deps.sh installs it)"
        );
        PamService { dir, name }
    }

    /// The common stack: `auth required pam_twofold.so ARGS`.
    pub fn required(socket: &Path, extra_args: &str) -> PamService {
        PamService::new(&format!(
            "auth required MODULE {} {extra_args}\n",
            module_args(socket)
        ))
    }

    /// `pamtester -v SERVICE USER authenticate` with `stdin` as the user's typing (`None`:
    /// standard input is /dev/null, so the conversation gets no answer).
    pub fn authenticate(&self, user: &str, stdin: Option<&str>) -> PamRun {
        self.authenticate_with(user, &[], stdin)
    }

    /// `authenticate` with PAM items set first, e.g. `["rhost=192.0.2.7", "tty=pts/3"]`.
    pub fn authenticate_with(&self, user: &str, items: &[&str], stdin: Option<&str>) -> PamRun {
        self.run_pamtester(user, items, stdin, false)
    }

    /// `authenticate`, with every line the module sends to syslog printed on pamtester's
    /// standard error (pam_wrapper catches `pam_syslog` at PAM_WRAPPER_DEBUGLEVEL 2).
    pub fn authenticate_logged(&self, user: &str, stdin: Option<&str>) -> PamRun {
        self.run_pamtester(user, &[], stdin, true)
    }

    fn run_pamtester(&self, user: &str, items: &[&str], stdin: Option<&str>, log: bool) -> PamRun {
        let mut cmd = Command::new("pamtester");
        if log {
            cmd.env("PAM_WRAPPER_DEBUGLEVEL", "2");
        }
        cmd.arg("-v");
        for item in items {
            cmd.arg(format!("-I{item}"));
        }
        cmd.args([&self.name, user, "authenticate"])
            .env("LD_PRELOAD", PAM_WRAPPER)
            .env("PAM_WRAPPER", "1")
            .env("PAM_WRAPPER_SERVICE_DIR", self.dir.path())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .expect("pamtester is needed (Debian package pamtester; scripts/deps.sh installs it)");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        PamRun {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }
}

/// A child process killed (by its pid) and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Root-only harness pieces for the sshd and sudo tests: throwaway accounts, files under /etc
// removed on drop, and child processes run with a deadline.

/// Prints why a root-only test does not run; true when the caller should return.
pub fn skip_unless_root(test: &str, why: &str) -> bool {
    if is_root() {
        return false;
    }
    println!("SKIP {test}: needs root to {why}");
    true
}

/// useradd, userdel and chpasswd lock /etc/passwd and /etc/shadow; tests running in parallel
/// threads take turns here (and retry when another process holds the lock).
static ACCOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn run_account_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let _turn = ACCOUNTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut last = None;
    for _ in 0..20 {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let busy = String::from_utf8_lossy(&out.stderr).contains("lock");
        if out.status.success() || !busy {
            return out;
        }
        last = Some(out);
        std::thread::sleep(Duration::from_millis(250));
    }
    last.unwrap()
}

/// A throwaway local account (`useradd -m`), removed with its home directory and every
/// process it still runs when dropped.
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    /// Creates `name` (a leftover account of that name from a crashed run is removed first).
    pub fn create(name: &str) -> TestUser {
        TestUser::create_with(name, &[])
    }

    /// `create` with more `useradd` options (e.g. `-u UID`).
    pub fn create_with(name: &str, options: &[&str]) -> TestUser {
        assert!(name.len() <= 32, "user name too long: {name}");
        if nix::unistd::User::from_name(name).ok().flatten().is_some() {
            remove_account(name);
        }
        let mut args = vec!["-m", "-s", "/bin/sh"];
        args.extend_from_slice(options);
        args.push(name);
        let out = run_account_tool("useradd", &args, None);
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let account = nix::unistd::User::from_name(name)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} has no account after useradd"));
        TestUser {
            name: name.to_string(),
            uid: account.uid.as_raw(),
            gid: account.gid.as_raw(),
            home: account.dir,
        }
    }

    /// `create` under `PREFIX` + this test process's id: a name no other run uses at once.
    pub fn create_unique(prefix: &str) -> TestUser {
        TestUser::create(&format!("{prefix}{}", std::process::id() % 100_000))
    }

    /// Sets the password with chpasswd; it travels on standard input, never in argv.
    pub fn set_password(&self, password: &str) {
        let out = run_account_tool(
            "chpasswd",
            &[],
            Some(&format!("{}:{password}\n", self.name)),
        );
        assert!(
            out.status.success(),
            "chpasswd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Installs `public_key` as the account's only `~/.ssh/authorized_keys` (owner, 0700/0600).
    pub fn authorize_ssh_key(&self, public_key: &Path) {
        let ssh = self.home.join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let keys = ssh.join("authorized_keys");
        std::fs::copy(public_key, &keys).unwrap();
        let owner = Some(nix::unistd::Uid::from_raw(self.uid));
        let group = Some(nix::unistd::Gid::from_raw(self.gid));
        for (path, mode) in [(&ssh, 0o700), (&keys, 0o600)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            nix::unistd::chown(path.as_path(), owner, group).unwrap();
        }
    }
}

fn remove_account(name: &str) {
    // Only this throwaway account's processes (a lingering session would make userdel refuse).
    let kill_its_processes = || {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", name])
            .stdin(Stdio::null())
            .status();
    };
    kill_its_processes();
    let mut complaint = String::new();
    for _ in 0..20 {
        let out = run_account_tool("userdel", &["-r", name], None);
        if nix::unistd::User::from_name(name).ok().flatten().is_none() {
            return;
        }
        // "user NAME is currently used by process N": its processes are still dying.
        complaint = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(250));
        kill_its_processes();
    }
    eprintln!("warning: could not remove the test account {name}: {complaint}");
}

impl Drop for TestUser {
    fn drop(&mut self) {
        remove_account(&self.name);
    }
}

/// A file outside the temp directories (`/etc/pam.d/NAME`, `/etc/sudoers.d/NAME`) that is
/// removed when dropped. It is written under a temporary name and renamed into place, so
/// nothing ever reads it half-written.
#[derive(Debug)]
pub struct SystemFile {
    pub path: PathBuf,
}

impl SystemFile {
    pub fn install(path: &Path, text: &str, mode: u32) -> SystemFile {
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
        SystemFile {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SystemFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a command run by [`run_with_deadline`] did.
#[derive(Debug)]
pub struct Finished {
    /// `None` when it was killed at the deadline or by a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Everything it printed, for failure messages.
    pub fn text(&self) -> String {
        format!(
            "exit {:?}{}\n--- stdout\n{}--- stderr\n{}",
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// `setsid -w PROGRAM`: for [`run_with_deadline`]. The program runs in a session of its own
/// (no controlling terminal, so ssh and sudo take their answers from askpass and standard
/// input) whose process group is the child's pid, so everything it starts can be killed at once.
pub fn in_new_session(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setsid");
    cmd.arg("-w").arg(program);
    cmd
}

/// Runs `cmd` (made by [`in_new_session`]) with `stdin` as its input (`None`: /dev/null); its
/// whole process group is killed with SIGKILL at `deadline`, and whatever of it is left when it
/// exits.
pub fn run_with_deadline(cmd: &mut Command, stdin: Option<&str>, deadline: Duration) -> Finished {
    use std::io::Read;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // It may exit before reading everything; that is its business.
        let _ = pipe.write_all(text.as_bytes());
    }
    let limit = started + deadline;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= limit {
            timed_out = true;
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Anything it left behind in its group holds the pipes open: end it too.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    Finished {
        code: status.code(),
        timed_out,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// A 6-digit code that is none of the codes valid around now (steps -2..=3).
pub fn wrong_code(secret: &str) -> String {
    let now = unix_now();
    let valid: Vec<String> = (-2..=3)
        .map(|k| oathtool_at(secret, now.checked_add_signed(k * 30).unwrap()))
        .collect();
    (0..1_000_000)
        .map(|n| format!("{:06}", (n * 7919 + 13) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap()
}

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

fn smtp_session(stream: std::net::TcpStream, kept: &std::sync::Mutex<Vec<String>>) {
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

impl PamService {
    /// `pamtester -v SERVICE USER authenticate`, answering the first prompt with `first` and the
    /// second with whatever `then` returns once the first answer is in (it may wait for a mail).
    pub fn authenticate_then(
        &self,
        user: &str,
        first: &str,
        then: impl FnOnce() -> Option<String>,
    ) -> PamRun {
        let mut cmd = Command::new("pamtester");
        cmd.args(["-v", &self.name, user, "authenticate"])
            .env("LD_PRELOAD", PAM_WRAPPER)
            .env("PAM_WRAPPER", "1")
            .env("PAM_WRAPPER_SERVICE_DIR", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("pamtester");
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(first.as_bytes()).unwrap();
        pipe.flush().unwrap();
        if let Some(second) = then() {
            // The module may have finished already (refused): a closed pipe is fine.
            let _ = pipe.write_all(second.as_bytes());
        }
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        PamRun {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }
}

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
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n\
                 host all all 127.0.0.1/32 reject\n",
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

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server and every backend of it: a database
    /// that is up but does not answer.
    pub fn freeze(&self, frozen: bool) {
        let Some(child) = &self.child else { return };
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let pid = child.id().to_string();
        let _ = Command::new("pkill").args([signal, "-P", &pid]).status();
        let _ = Command::new("kill").args([signal, &pid]).status();
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

fn as_postgres(program: &Path) -> Command {
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
