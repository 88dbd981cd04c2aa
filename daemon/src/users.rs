//! User names: validation (they are hostile input) and the system account database.

pub use twofold_shared::wire::validate_name;

/// Whether `name` belongs to any of `groups` (by primary or supplementary membership, as NSS
/// reports it). Groups that do not exist match no one.
pub fn in_any_group(name: &str, groups: &[String]) -> bool {
    if groups.is_empty() {
        return false;
    }
    let Some(user) = nix::unistd::User::from_name(name).ok().flatten() else {
        return false;
    };
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    let member_of = nix::unistd::getgrouplist(&cname, user.gid).unwrap_or_else(|_| vec![user.gid]);
    groups.iter().any(|g| {
        nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .is_some_and(|group| member_of.contains(&group.gid))
    })
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
    }
}
