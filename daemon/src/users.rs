//! User names: validation (they are hostile input) and the system account database.

pub use twofold_shared::wire::validate_name;

/// Whether `name` belongs to any of `groups` (by primary or supplementary membership, as NSS
/// reports it). Any failure to find out — the name service failing, a group that does not
/// exist — is an error: a policy that cannot be evaluated must not let anyone through.
pub fn in_any_group(name: &str, groups: &[String]) -> Result<bool, String> {
    if groups.is_empty() {
        return Ok(false);
    }
    let user = match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => return Ok(false), // no account: no groups
        Err(e) => return Err(format!("looking up {name}: {e}")),
    };
    let cname =
        std::ffi::CString::new(name).map_err(|_| "user name holds a NUL byte".to_string())?;
    let member_of = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| format!("groups of {name}: {e}"))?;
    for g in groups {
        match nix::unistd::Group::from_name(g) {
            Ok(Some(group)) if member_of.contains(&group.gid) => return Ok(true),
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("group {g} does not exist")),
            Err(e) => return Err(format!("looking up group {g}: {e}")),
        }
    }
    Ok(false)
}

/// Checks that every group named in `require_groups` exists, at start and on reload.
pub fn check_groups(groups: &[String]) -> Result<(), String> {
    for g in groups {
        match nix::unistd::Group::from_name(g) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("require_groups: group {g:?} does not exist")),
            Err(e) => return Err(format!("require_groups: looking up group {g:?}: {e}")),
        }
    }
    Ok(())
}

/// The account `name` belongs to: its uid, and the account's own name for that uid (the
/// first entry the name service gives for it), so that every name of one account meets one
/// enrollment and one throttle: `ALICE` and `alice@DOMAIN` meet `alice`, and a uid-0 alias
/// such as `toor` meets `root`. An error of the name service (as opposed to "no such
/// account") is an error, never "unknown".
pub fn canonical(name: &str) -> Result<Option<(String, u32)>, String> {
    let Some(user) = nix::unistd::User::from_name(name).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let uid = user.uid.as_raw();
    match nix::unistd::User::from_uid(user.uid) {
        Ok(Some(owner)) => Ok(Some((owner.name, uid))),
        // A name service that finds the name but not its uid: the name as it found it.
        Ok(None) => Ok(Some((user.name, uid))),
        Err(e) => Err(e.to_string()),
    }
}

/// The uid of a local (NSS) account.
pub fn uid_of(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// The account name of a uid.
pub fn name_of(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The audit session of process `pid` (`/proc/PID/sessionid`), which the kernel numbers anew
/// at each login (pam_loginuid) and every process of that login inherits. `None` where it is
/// unset (system services, a kernel without audit).
pub fn session_of(pid: i32) -> Option<u32> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/sessionid")).ok()?;
    text.trim().parse::<u32>().ok().filter(|&s| s != u32::MAX)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// This host's name (`localhost` when it has none).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Login accounts from /etc/passwd: uid at or above UID_MIN (1000) and below 60000, with a
/// shell that is not nologin/false, plus root.
pub fn local_accounts(passwd: &str) -> Vec<String> {
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let (name, uid, shell) = (f.first()?, f.get(2)?.parse::<u32>().ok()?, f.get(6)?);
            let login =
                !shell.ends_with("nologin") && !shell.ends_with("/false") && !shell.is_empty();
            (login && (uid == 0 || (1000..60000).contains(&uid))).then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        for ok in [
            "alice",
            "j.doe",
            "DOMAIN\\bob",
            "user@example.org",
            "émile",
            &"a".repeat(256),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a:b",
            "../etc",
            "a\nb",
            "a\u{7f}",
            &"a".repeat(257),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn root_is_known() {
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(name_of(0).as_deref(), Some("root"));
        assert_eq!(uid_of("no-such-user-twofold-test"), None);
        assert_eq!(canonical("root"), Ok(Some(("root".to_string(), 0))));
        assert_eq!(canonical("no-such-user-twofold-test"), Ok(None));
    }
}
