//! Real accounts and groups made for a test (root only), and removed after it.

use super::*;

/// useradd, userdel and chpasswd lock /etc/passwd and /etc/shadow; tests running in parallel
/// threads take turns here (and retry when another process holds the lock).
pub(crate) static ACCOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn run_account_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let _turn = ACCOUNTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut last = None;
    for _ in 0..20 {
        let out = run_with_stdin(Command::new(program).args(args), stdin);
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

pub(crate) fn remove_account(name: &str) {
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
