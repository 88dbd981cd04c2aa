//! `twofold doctor`: checks a host's set-up and says, in plain words, what to fix.
//!
//! The checks are pure functions over what they inspect (the text of `sshd -T`, PAM files,
//! file metadata, the daemon's answers) so that they are table-tested; `gather` collects the
//! real inputs.

use crate::config::{Config, Unenrolled};
use serde::Serialize;
use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(check: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        check,
        level: Level::Ok,
        message: message.into(),
        fix: None,
    }
}

fn warn(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        check,
        level: Level::Warn,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

fn fail(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        check,
        level: Level::Fail,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// sshd

/// Judges the output of `sshd -T` (lower-case keys, one `key value` per line).
pub fn check_sshd(effective: &str) -> Vec<Finding> {
    let get = |key: &str| {
        effective.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            k.eq_ignore_ascii_case(key)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    let mut out = Vec::new();
    match get("usepam").as_deref() {
        Some("yes") => out.push(ok("sshd", "UsePAM yes: sshd consults PAM")),
        _ => out.push(fail(
            "sshd",
            "UsePAM is not yes: sshd never runs PAM, so no code is ever asked",
            "set 'UsePAM yes' in /etc/ssh/sshd_config, then 'systemctl reload ssh'",
        )),
    }
    let kbd =
        get("kbdinteractiveauthentication").or_else(|| get("challengeresponseauthentication"));
    match kbd.as_deref() {
        Some("yes") => out.push(ok("sshd", "KbdInteractiveAuthentication yes: the code prompt can be shown")),
        _ => out.push(fail(
            "sshd",
            "KbdInteractiveAuthentication is not yes: sshd cannot show the code prompt",
            "set 'KbdInteractiveAuthentication yes' in /etc/ssh/sshd_config, then 'systemctl reload ssh'",
        )),
    }
    let methods = get("authenticationmethods").unwrap_or_else(|| "any".into());
    let lists: Vec<&str> = methods.split_whitespace().collect();
    let every_list_asks = !lists.is_empty()
        && methods != "any"
        && lists
            .iter()
            .all(|l| l.split(',').any(|m| m.starts_with("keyboard-interactive")));
    if every_list_asks {
        out.push(ok(
            "sshd",
            format!("AuthenticationMethods {methods}: every login passes the code prompt"),
        ));
    } else {
        out.push(warn(
            "sshd",
            format!("AuthenticationMethods {methods}: a login can succeed without keyboard-interactive (for example with a key alone), skipping the code"),
            "set 'AuthenticationMethods publickey,keyboard-interactive' (keys) or 'keyboard-interactive' (passwords) in /etc/ssh/sshd_config",
        ));
    }
    if get("passwordauthentication").as_deref() == Some("yes") {
        out.push(warn(
            "sshd",
            "PasswordAuthentication yes: the 'password' method cannot ask for a code, so logins through it fail or skip the second factor",
            "set 'PasswordAuthentication no'; keyboard-interactive asks for the password and then the code",
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// PAM stacks

/// How a pam_twofold line in an auth stack is controlled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLine {
    pub file: String,
    pub control: String,
    pub fail_closed: bool,
    /// A credential module before it (`required` or `optional`, with no `requisite` between)
    /// whose failure does not stop the stack: pam_twofold is reached after a wrong password.
    pub after_failure_of: Option<String>,
}

/// Modules that check a credential: a failure of theirs must end the stack before an
/// enrollment is shown at the login prompt.
const CREDENTIAL_MODULES: &[&str] = &[
    "pam_unix.so",
    "pam_sss.so",
    "pam_ldap.so",
    "pam_krb5.so",
    "pam_winbind.so",
    "pam_userdb.so",
    "pam_radius_auth.so",
    "pam_u2f.so",
    "pam_yubico.so",
    "pam_google_authenticator.so",
    "pam_oath.so",
];

/// Whether a PAM control keeps the user out when the module fails (daemon down, wrong code):
/// `required`/`requisite`, or a bracket whose default is bad/die and that maps no failure to
/// ok, done, ignore or a jump.
pub fn fail_closed(control: &str) -> bool {
    match control {
        "required" | "requisite" => return true,
        "sufficient" | "optional" => return false,
        _ => {}
    }
    let Some(inner) = control.strip_prefix('[').and_then(|c| c.strip_suffix(']')) else {
        return false;
    };
    let mut default_closed = false;
    for pair in inner.split_whitespace() {
        let Some((value, action)) = pair.split_once('=') else {
            return false;
        };
        let closes = matches!(action, "bad" | "die");
        match value {
            "default" => default_closed = closes,
            // Success and "no opinion" may pass; every failure must close.
            "success" | "ignore" | "new_authtok_reqd" => {}
            _ => {
                if !closes && action != "reset" {
                    return false;
                }
            }
        }
    }
    default_closed
}

/// Splits a PAM line into (type, control, module-or-target, …); `[…]` controls may hold spaces.
fn pam_fields(line: &str) -> Option<(String, String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    if let Some(target) = line.strip_prefix("@include") {
        return Some(("@include".into(), String::new(), target.trim().to_string()));
    }
    let (kind, rest) = line.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let (control, rest) = if rest.starts_with('[') {
        let end = rest.find(']')?;
        (rest[..=end].to_string(), rest[end + 1..].trim_start())
    } else {
        let (c, r) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        (c.to_string(), r.trim_start())
    };
    let module = rest.split_whitespace().next()?.to_string();
    Some((kind.trim_start_matches('-').to_string(), control, module))
}

/// Every pam_twofold line of the auth stack of `service`, following `@include`, `include` and
/// `substack`. `read` returns a PAM file's text by service name.
pub fn twofold_lines(service: &str, read: &dyn Fn(&str) -> Option<String>) -> Vec<ModuleLine> {
    let mut walk = Walk {
        read,
        found: Vec::new(),
        seen: BTreeSet::new(),
        soft_failure: None,
    };
    walk.file(service, 0);
    walk.found
}

struct Walk<'a> {
    read: &'a dyn Fn(&str) -> Option<String>,
    found: Vec<ModuleLine>,
    seen: BTreeSet<String>,
    /// The last credential module whose failure lets the stack go on, in stack order.
    soft_failure: Option<String>,
}

impl Walk<'_> {
    fn file(&mut self, service: &str, depth: usize) {
        if depth > 8 || !self.seen.insert(service.to_string()) {
            return;
        }
        let Some(text) = (self.read)(service) else {
            return;
        };
        for line in text.lines() {
            let Some((kind, control, target)) = pam_fields(line) else {
                continue;
            };
            let target_name = target.rsplit('/').next().unwrap_or(&target).to_string();
            if kind == "@include"
                || (kind == "auth" && (control == "include" || control == "substack"))
            {
                self.file(&target_name, depth + 1);
            } else if kind == "auth" && target_name == "pam_twofold.so" {
                self.found.push(ModuleLine {
                    file: service.to_string(),
                    fail_closed: fail_closed(&control),
                    control,
                    after_failure_of: self.soft_failure.clone(),
                });
            } else if kind == "auth" {
                if control == "requisite" || control.contains("default=die") {
                    self.soft_failure = None;
                } else if matches!(control.as_str(), "required" | "optional")
                    && CREDENTIAL_MODULES.contains(&target_name.as_str())
                {
                    self.soft_failure = Some(format!("{target_name} ('{control}', in {service})"));
                }
            }
        }
    }
}

/// `enroll_at_login`: enrollment may be shown at the prompt (any setting but "never").
pub fn check_pam(
    service: &'static str,
    exists: bool,
    lines: &[ModuleLine],
    enroll_at_login: bool,
) -> Vec<Finding> {
    if !exists {
        return vec![ok(
            "pam",
            format!("/etc/pam.d/{service} does not exist (nothing to protect)"),
        )];
    }
    if lines.is_empty() {
        return vec![warn(
            "pam",
            format!("the {service} PAM stack does not include pam_twofold: {service} logins have no second factor"),
            if service == "sshd" {
                "logins with keys: replace '@include common-auth' in /etc/pam.d/sshd with 'auth [success=ok ignore=ignore default=die] pam_twofold.so' and 'auth required pam_permit.so'; with passwords: add 'auth required pam_twofold.so' right after it (README: Protect SSH and sudo)".to_string()
            } else {
                format!("add 'auth required pam_twofold.so' to /etc/pam.d/{service} right after '@include common-auth', or run 'pam-auth-update --enable twofold'")
            },
        )];
    }
    let reached_after_failure = lines.iter().filter_map(|l| {
        let earlier = l.after_failure_of.as_ref().filter(|_| enroll_at_login)?;
        Some(warn(
            "pam",
            format!(
                "{service}: a failed {earlier} still reaches pam_twofold (in {}): with \
                 enroll_at_login, an invited account's QR code would be shown to someone who \
                 knows only its name",
                l.file
            ),
            "make that line 'requisite' (or '[success=ok default=die]') so that a wrong \
             password ends the login first, or set enroll_at_login = \"never\"",
        ))
    });
    let mut findings: Vec<Finding> = reached_after_failure.collect();
    findings.extend(lines.iter().map(|l| {
            if l.fail_closed {
                ok("pam", format!("{service}: pam_twofold with '{}' (in {}), fail-closed", l.control, l.file))
            } else {
                fail(
                    "pam",
                    format!("{service}: pam_twofold with '{}' (in {}) lets logins through when the module fails", l.control, l.file),
                    "use 'auth required pam_twofold.so' (never sufficient, optional or default=ignore)",
                )
            }
        }));
    findings
}

// ---------------------------------------------------------------------------------------------
// Files

/// A socket clients must reach: owned by `owner`, a socket, mode 0666.
pub fn check_socket(path: &Path, meta: Option<(bool, u32, u32)>, owner: u32) -> Finding {
    let shown = path.display();
    match meta {
        None => fail("socket", format!("{shown} does not exist"), "start twofoldd ('systemctl start twofoldd')"),
        Some((false, _, _)) => fail("socket", format!("{shown} is not a socket"), "remove it and restart twofoldd"),
        Some((true, uid, _)) if uid != owner => fail(
            "socket",
            format!("{shown} belongs to uid {uid}, not {owner}: another process may be impersonating twofoldd"),
            "stop whatever created it, remove it and restart twofoldd",
        ),
        Some((true, _, mode)) if mode & 0o777 != 0o666 => warn(
            "socket",
            format!("{shown} has mode {:o}: some users cannot reach the daemon", mode & 0o777),
            "restart twofoldd; it sets the socket to 0666 (the daemon checks every caller itself)",
        ),
        Some(_) => ok("socket", format!("{shown}: a socket owned by uid {owner}, mode 666")),
    }
}

/// The database: owned by `owner`, no access for group or others.
pub fn check_database(path: &Path, meta: Option<(u32, u32)>, owner: u32) -> Finding {
    let shown = path.display();
    match meta {
        None => warn(
            "database",
            format!("{shown} does not exist or cannot be read by this user"),
            "run 'twofold doctor' as root; twofoldd creates the file at start",
        ),
        Some((uid, _)) if uid != owner => fail(
            "database",
            format!("{shown} belongs to uid {uid}, not the daemon's uid {owner}"),
            format!("chown {owner} {shown}"),
        ),
        Some((_, mode)) if mode & 0o077 != 0 => fail(
            "database",
            format!(
                "{shown} has mode {:o}: other users can read the secrets",
                mode & 0o777
            ),
            format!("chmod 600 {shown}"),
        ),
        Some(_) => ok(
            "database",
            format!("{shown}: owned by uid {owner}, mode 600"),
        ),
    }
}

/// The PostgreSQL store (`store = "postgres"`): how `postgres_url` reaches the server (what
/// `pg::transport` made of it) and whether the password file passes twofoldd's check. No
/// local database file is involved.
pub fn check_postgres(
    transport: Result<crate::store::postgres::Transport, String>,
    password_file: Option<Result<(), String>>,
) -> Vec<Finding> {
    let mut out =
        vec![match transport {
        Ok(t) => ok("postgres", format!("the PostgreSQL store is reached over {t}")),
        Err(why) => fail(
            "postgres",
            format!("{why} (twofoldd refuses to start with it)"),
            "in postgres_url: 'host=NAME sslmode=verify-full sslrootcert=/etc/twofold/pg-ca.pem', \
             or 'host=/var/run/postgresql' for a PostgreSQL on this host",
        ),
    }];
    match password_file {
        None => {}
        Some(Ok(())) => out.push(ok(
            "postgres",
            "postgres_password_file: a regular file owned by root, mode 600",
        )),
        Some(Err(why)) => out.push(fail(
            "postgres",
            format!("{why} (twofoldd refuses to start with it)"),
            "chown root: and chmod 600 the file (a regular file, not a symlink)",
        )),
    }
    out
}

/// Whether a promoted standby would have every accepted code: only if each commit waited for
/// a synchronous standby (else a failover can bring a used code back, once).
pub fn check_replication(r: Result<crate::store::postgres::Replication, String>) -> Finding {
    let r = match r {
        Ok(r) => r,
        Err(why) => {
            return warn(
                "replication",
                format!("could not ask the database how it replicates: {why}"),
                "check postgres_url and that the database answers",
            )
        }
    };
    if r.standby_names.trim().is_empty() {
        return warn(
            "replication",
            "the database has no synchronous standby (synchronous_standby_names is empty): a \
             standby promoted after a failover may lack the last codes accepted, and they would be \
             accepted once more",
            "on the primary: ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (NAME)' (NAME: \
             the standby's application_name) and SELECT pg_reload_conf(); see BENCHMARKS.md for \
             what it costs",
        );
    }
    if matches!(r.synchronous_commit.as_str(), "off" | "local") {
        return warn(
            "replication",
            format!(
                "synchronous_commit = {} for twofold's role: commits do not wait for the standby, \
                 so a failover can bring a used code back",
                r.synchronous_commit
            ),
            "ALTER ROLE twofold SET synchronous_commit = on (or remote_apply)",
        );
    }
    match r.synchronous {
        Some(0) => warn(
            "replication",
            format!(
                "synchronous_standby_names = '{}', and no standby streams synchronously now: every \
                 commit waits, so logins fail by timeout",
                r.standby_names
            ),
            "start the standby (or correct synchronous_standby_names to its application_name)",
        ),
        Some(n) => ok(
            "replication",
            format!(
                "commits wait for a synchronous standby ({n} streaming, synchronous_standby_names \
                 = '{}'): a promoted standby has every accepted code",
                r.standby_names
            ),
        ),
        None => ok(
            "replication",
            format!(
                "commits wait for a synchronous standby (synchronous_standby_names = '{}'; whether \
                 one streams now is visible to pg_read_all_stats only)",
                r.standby_names
            ),
        ),
    }
}

/// Outage mode, from the daemon's metrics text (`None`: twofoldd did not give it): whether
/// this host decides alone now, and how fresh its copy of the fleet is.
pub fn check_offline(
    mode: crate::config::Offline,
    refresh: u64,
    metrics: Option<&str>,
    now: u64,
) -> Finding {
    if mode == crate::config::Offline::Deny {
        return ok(
            "offline",
            "offline = \"deny\": while the database does not answer, every login on this host \
             is refused (offline = \"cached\" lets it decide alone from a sealed copy)",
        );
    }
    let Some(text) = metrics else {
        return warn(
            "offline",
            "offline = \"cached\", but twofoldd did not say whether it is offline",
            "run 'twofold doctor' as root with twofoldd running",
        );
    };
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let users = value("twofold_offline_copy_users").unwrap_or(0);
    let refreshed = value("twofold_offline_copy_refreshed_timestamp_seconds");
    let age = |t: u64| format!("{} s ago", now.saturating_sub(t));
    if let Some(since) = value("twofold_offline_since_timestamp_seconds") {
        return warn(
            "offline",
            format!(
                "the database has not answered for {} s: this host decides logins alone from \
                 its copy ({users} enrollments, refreshed {}), under the offline rules",
                now.saturating_sub(since),
                refreshed.map_or("never".into(), age)
            ),
            "bring the database back (twofoldd merges this host's decisions into it by \
             itself); 'twofold doctor' on another host says whether it is down for all",
        );
    }
    match refreshed {
        Some(t) if now.saturating_sub(t) <= refresh.saturating_mul(3).max(60) => ok(
            "offline",
            format!(
                "offline = \"cached\": this host's sealed copy of the fleet holds {users} \
                 enrollments, refreshed {}",
                age(t)
            ),
        ),
        _ => warn(
            "offline",
            format!(
                "offline = \"cached\", but this host's copy of the fleet was refreshed {}: in \
                 an outage, logins would be decided from stale enrollments",
                refreshed.map_or("never".into(), age)
            ),
            "'journalctl -u twofoldd' says why the copy is not refreshed",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Clock and users

/// `synchronized`: what `timedatectl show -p NTPSynchronized --value` said, if it ran.
pub fn check_clock(synchronized: Option<&str>) -> Finding {
    match synchronized.map(str::trim) {
        Some("yes") => ok("clock", "the system clock is synchronised (NTP)"),
        Some(_) => warn(
            "clock",
            "the system clock is not synchronised: codes fail once it drifts more than 30 seconds",
            "enable time synchronisation: 'timedatectl set-ntp true' (systemd-timesyncd or chrony)",
        ),
        None => warn(
            "clock",
            "cannot tell whether the clock is synchronised (timedatectl did not answer)",
            "make sure NTP runs (chrony or systemd-timesyncd): codes fail once the clock drifts more than 30 seconds",
        ),
    }
}

/// Where accounts come from (the `passwd:` line of /etc/nsswitch.conf): twofoldd resolves
/// every login's name through the same sources, so directory users (sss, ldap, winbind) are
/// asked for codes like local ones, under their canonical names.
pub fn check_nss(nsswitch: Option<&str>) -> Finding {
    let sources = nsswitch.and_then(|text| {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .find_map(|l| l.strip_prefix("passwd:"))
            .map(|rest| {
                rest.split_whitespace()
                    .filter(|w| !w.starts_with('['))
                    .collect::<Vec<_>>()
            })
    });
    match sources {
        Some(s) if !s.is_empty() => {
            let directory: Vec<&str> = s
                .iter()
                .copied()
                .filter(|w| matches!(*w, "sss" | "ldap" | "winbind" | "nis" | "extrausers"))
                .collect();
            let mut message = format!("accounts come from: {}", s.join(", "));
            if !directory.is_empty() {
                message.push_str(&format!(
                    " ({} users are resolved like local ones, by canonical name and uid; only /etc/passwd accounts are listed below)",
                    directory.join(", ")
                ));
            }
            ok("nss", message)
        }
        _ => warn(
            "nss",
            "/etc/nsswitch.conf has no passwd line (or cannot be read): only /etc/passwd is used",
            "add 'passwd: files' (and your directory's source, e.g. sss) to /etc/nsswitch.conf",
        ),
    }
}

/// `accounts`: local login accounts; `enrolled`: names with an active enrollment.
pub fn check_users(
    accounts: &[String],
    enrolled: &BTreeSet<String>,
    locked: usize,
    policy: Unenrolled,
) -> Vec<Finding> {
    let missing: Vec<&String> = accounts.iter().filter(|a| !enrolled.contains(*a)).collect();
    let mut out = vec![ok("users", format!("{} user(s) enrolled", enrolled.len()))];
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().take(10).map(|s| s.as_str()).collect();
        let more = if missing.len() > 10 {
            format!(" and {} more", missing.len() - 10)
        } else {
            String::new()
        };
        let list = format!("{}{more}", names.join(", "));
        out.push(match policy {
            Unenrolled::Deny => warn(
                "users",
                format!("{} local account(s) not enrolled would be refused (unenrolled = \"deny\"): {list}", missing.len()),
                "enroll them ('twofold enroll --user NAME') or let them enroll themselves before they next log in",
            ),
            Unenrolled::Allow => warn(
                "users",
                format!("{} local account(s) not enrolled log in without a code (unenrolled = \"allow\"): {list}", missing.len()),
                "have them run 'twofold enroll'; then set unenrolled = \"deny\" in /etc/twofold/twofold.toml",
            ),
        });
    }
    if locked > 0 {
        out.push(warn(
            "users",
            format!("{locked} user(s) locked after too many failures"),
            "'twofold list' shows who; 'twofold unlock NAME' clears the lock",
        ));
    }
    out
}

/// Names that share a uid in /etc/passwd (a uid-0 `toor`, a copied entry) meet one
/// enrollment, the first name's; enrollments of names that are no account are leftovers (a
/// later account of that name is refused by them until root removes them).
/// `is_account`: whether the name service knows the name.
pub fn check_identities(
    passwd: &str,
    enrolled: &BTreeSet<String>,
    is_account: &dyn Fn(&str) -> bool,
) -> Vec<Finding> {
    let mut by_uid: std::collections::BTreeMap<u32, Vec<&str>> = Default::default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if let (Some(name), Some(Ok(uid))) = (f.first(), f.get(2).map(|u| u.parse::<u32>())) {
            by_uid.entry(uid).or_default().push(name);
        }
    }
    let mut out = Vec::new();
    for (uid, names) in by_uid.iter().filter(|(_, n)| n.len() > 1) {
        out.push(warn(
            "users",
            format!(
                "uid {uid} has several names ({}): all of them log in with {}'s enrollment",
                names.join(", "),
                names[0]
            ),
            "remove the extra passwd entries unless that is what you want",
        ));
    }
    let orphans: Vec<&str> = enrolled
        .iter()
        .map(String::as_str)
        .filter(|n| !is_account(n))
        .collect();
    if !orphans.is_empty() {
        out.push(warn(
            "users",
            format!(
                "{} enrollment(s) of names that are no account here: {}",
                orphans.len(),
                orphans.join(", ")
            ),
            "'twofold disable --user NAME' for each that is a leftover (an account made later \
             under that name is refused until then)",
        ));
    }
    out
}

/// Reads a file's owner and mode without following a final symlink.
pub fn owner_mode(path: &Path) -> Option<(u32, u32)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.uid(), m.mode()))
}

pub fn socket_meta(path: &Path) -> Option<(bool, u32, u32)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.file_type().is_socket(), m.uid(), m.mode()))
}

pub fn load_config(path: &Path, explicit: bool) -> Result<Config, String> {
    Config::load(path, explicit).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn outage_mode_is_reported_from_the_daemons_metrics() {
        use crate::config::Offline;
        assert_eq!(check_offline(Offline::Deny, 60, None, 0).level, Level::Ok);
        assert_eq!(
            check_offline(Offline::Cached, 60, None, 0).level,
            Level::Warn
        );
        let fresh = "twofold_offline 0\ntwofold_offline_copy_refreshed_timestamp_seconds 1000\n\
                     twofold_offline_copy_users 7\n";
        let f = check_offline(Offline::Cached, 60, Some(fresh), 1030);
        assert_eq!(f.level, Level::Ok, "{}", f.message);
        assert!(f.message.contains("7 enrollments"), "{}", f.message);
        let stale = check_offline(Offline::Cached, 60, Some(fresh), 5000);
        assert_eq!(stale.level, Level::Warn);
        let down = format!("{fresh}twofold_offline_since_timestamp_seconds 1010\n");
        let f = check_offline(Offline::Cached, 60, Some(&down), 1040);
        assert_eq!(f.level, Level::Warn);
        assert!(f.message.contains("30 s"), "{}", f.message);
    }

    use super::*;
    use std::collections::HashMap;

    #[test]
    fn sshd_settings() {
        let good = "usepam yes\nkbdinteractiveauthentication yes\nauthenticationmethods publickey,keyboard-interactive\npasswordauthentication no\n";
        assert!(
            check_sshd(good).iter().all(|f| f.level == Level::Ok),
            "{:?}",
            check_sshd(good)
        );
        let bad = "usepam no\nkbdinteractiveauthentication no\nauthenticationmethods any\npasswordauthentication yes\n";
        let levels: Vec<Level> = check_sshd(bad).iter().map(|f| f.level).collect();
        assert_eq!(
            levels,
            vec![Level::Fail, Level::Fail, Level::Warn, Level::Warn]
        );
        // Two lists, one without keyboard-interactive: a way around the code.
        let split = "usepam yes\nkbdinteractiveauthentication yes\nauthenticationmethods publickey,keyboard-interactive publickey\n";
        assert_eq!(check_sshd(split)[2].level, Level::Warn);
        let kbd_alone = "usepam yes\nkbdinteractiveauthentication yes\nauthenticationmethods keyboard-interactive:pam\n";
        assert_eq!(check_sshd(kbd_alone)[2].level, Level::Ok);
    }

    #[test]
    fn fail_closed_controls() {
        for (control, closed) in [
            ("required", true),
            ("requisite", true),
            ("sufficient", false),
            ("optional", false),
            ("[success=ok ignore=ignore default=bad]", true),
            ("[success=1 default=die]", true),
            ("[success=ok default=ignore]", false),
            ("[success=ok authinfo_unavail=ignore default=bad]", false),
            ("[success=ok auth_err=bad default=bad]", true),
            ("[default=ok]", false),
            ("[success=ok]", false),
            ("[garbage", false),
        ] {
            assert_eq!(fail_closed(control), closed, "{control}");
        }
    }

    #[test]
    fn pam_stacks_are_followed_through_includes() {
        let files: HashMap<&str, &str> = [
            ("sshd", "# comment\n@include common-auth\naccount include common-account\n"),
            ("common-auth", "auth [success=1 default=ignore] pam_unix.so nullok\nauth requisite pam_deny.so\nauth required pam_permit.so\nauth required /usr/lib/x86_64-linux-gnu/security/pam_twofold.so timeout=5\n"),
            ("sudo", "auth include sudo-extra\n"),
            ("sudo-extra", "auth [success=ok ignore=ignore default=ignore] pam_twofold.so\n@include sudo\n"),
            ("login", "auth required pam_unix.so\n"),
        ]
        .into_iter()
        .collect();
        let read = |s: &str| files.get(s).map(|t| t.to_string());
        let sshd = twofold_lines("sshd", &read);
        assert_eq!(
            sshd,
            vec![ModuleLine {
                file: "common-auth".into(),
                control: "required".into(),
                fail_closed: true,
                after_failure_of: None,
            }]
        );
        // Include loops end; the bad control is found.
        let sudo = twofold_lines("sudo", &read);
        assert_eq!(sudo.len(), 1);
        assert!(!sudo[0].fail_closed);
        assert_eq!(check_pam("sudo", true, &sudo, true)[0].level, Level::Fail);
        assert_eq!(
            check_pam("login", true, &twofold_lines("login", &read), true)[0].level,
            Level::Warn
        );
        assert_eq!(check_pam("su", false, &[], true)[0].level, Level::Ok);
        // Debian's common-auth ends a failed password at pam_deny; a plain `required`
        // pam_unix does not, and that matters once an enrollment can be shown at the prompt.
        assert_eq!(check_pam("sshd", true, &sshd, true).len(), 1);
        let soft: HashMap<&str, &str> = [(
            "su",
            "auth required pam_unix.so\nauth required pam_twofold.so\n",
        )]
        .into_iter()
        .collect();
        let su = twofold_lines("su", &|s: &str| soft.get(s).map(|t| t.to_string()));
        assert!(su[0]
            .after_failure_of
            .as_deref()
            .unwrap()
            .starts_with("pam_unix.so"));
        let findings = check_pam("su", true, &su, true);
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0].level, Level::Warn);
        assert!(findings[0].message.contains("QR code"), "{findings:?}");
        assert_eq!(check_pam("su", true, &su, false).len(), 1);
    }

    #[test]
    fn files_and_modes() {
        let p = Path::new("/run/twofold/twofold.sock");
        assert_eq!(
            check_socket(p, Some((true, 0, 0o140666)), 0).level,
            Level::Ok
        );
        assert_eq!(
            check_socket(p, Some((true, 1000, 0o140666)), 0).level,
            Level::Fail
        );
        assert_eq!(
            check_socket(p, Some((true, 0, 0o140600)), 0).level,
            Level::Warn
        );
        assert_eq!(
            check_socket(p, Some((false, 0, 0o100666)), 0).level,
            Level::Fail
        );
        assert_eq!(check_socket(p, None, 0).level, Level::Fail);
        let d = Path::new("/var/lib/twofold/twofold.db");
        assert_eq!(check_database(d, Some((0, 0o100600)), 0).level, Level::Ok);
        assert_eq!(check_database(d, Some((0, 0o100644)), 0).level, Level::Fail);
        assert_eq!(check_database(d, Some((5, 0o100600)), 0).level, Level::Fail);
        assert_eq!(check_database(d, None, 0).level, Level::Warn);
    }

    #[test]
    fn replication_without_a_synchronous_standby_is_warned_with_the_fix() {
        use crate::store::postgres::Replication;
        let r = |names: &str, commit: &str, synchronous: Option<i64>| {
            check_replication(Ok(Replication {
                standby_names: names.into(),
                synchronous_commit: commit.into(),
                synchronous,
            }))
        };
        let none = r("", "on", Some(0));
        assert_eq!(none.level, Level::Warn);
        assert!(
            none.message.contains("accepted once more"),
            "{}",
            none.message
        );
        assert!(none
            .fix
            .unwrap()
            .contains("synchronous_standby_names = 'FIRST 1"));
        let local = r("s1", "local", Some(1));
        assert_eq!(local.level, Level::Warn);
        assert!(local.fix.unwrap().contains("synchronous_commit = on"));
        let absent = r("s1", "on", Some(0));
        assert_eq!(absent.level, Level::Warn);
        assert!(
            absent.message.contains("fail by timeout"),
            "{}",
            absent.message
        );
        for (names, commit, visible) in [
            ("s1", "on", Some(1)),
            ("FIRST 1 (a, b)", "remote_apply", None),
        ] {
            let f = r(names, commit, visible);
            assert_eq!(f.level, Level::Ok, "{f:?}");
            assert!(f.message.contains("synchronous standby"), "{}", f.message);
        }
        assert_eq!(check_replication(Err("refused".into())).level, Level::Warn);
    }

    #[test]
    fn postgres_transport_and_password_file() {
        use crate::store::postgres::transport;
        let tls = check_postgres(
            transport("host=db.example.org sslmode=verify-full sslrootcert=/etc/ca.pem"),
            Some(Ok(())),
        );
        assert!(tls.iter().all(|f| f.level == Level::Ok), "{tls:?}");
        assert!(
            tls[0].message.contains("sslmode=verify-full")
                && tls[0].message.contains("/etc/ca.pem"),
            "{}",
            tls[0].message
        );
        let socket = check_postgres(transport("host=/var/run/postgresql dbname=twofold"), None);
        assert_eq!(socket.len(), 1);
        assert_eq!(socket[0].level, Level::Ok);
        assert!(
            socket[0].message.contains("Unix socket"),
            "{}",
            socket[0].message
        );
        for plain in [
            "host=db.example.org",
            "host=db.example.org sslmode=prefer",
            "host=db.example.org sslmode=disable",
            "postgresql://db.example.org/twofold",
        ] {
            let f = check_postgres(transport(plain), None);
            assert_eq!(f[0].level, Level::Fail, "{plain}: {f:?}");
        }
        let bad_file = check_postgres(
            transport("host=/run/postgresql"),
            Some(Err("postgres_password_file /x must be owned by root".into())),
        );
        assert_eq!(bad_file[1].level, Level::Fail);
    }

    #[test]
    fn clock_and_users() {
        assert_eq!(check_clock(Some("yes\n")).level, Level::Ok);
        assert_eq!(check_clock(Some("no")).level, Level::Warn);
        assert_eq!(check_clock(None).level, Level::Warn);
        let passwd = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/zsh\nsvc:x:1002:1002::/:/bin/false\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n";
        let accounts = crate::users::local_accounts(passwd);
        assert_eq!(accounts, vec!["root", "alice", "bob"]);
        let enrolled: BTreeSet<String> = ["alice".to_string()].into_iter().collect();
        let f = check_users(&accounts, &enrolled, 1, Unenrolled::Deny);
        assert_eq!(f.len(), 3);
        assert!(
            f[1].message
                .contains("2 local account(s) not enrolled would be refused")
                && f[1].message.contains("root, bob"),
            "{}",
            f[1].message
        );
        let all: BTreeSet<String> = accounts.iter().cloned().collect();
        assert!(check_users(&accounts, &all, 0, Unenrolled::Allow)
            .iter()
            .all(|f| f.level == Level::Ok));
    }

    #[test]
    fn name_service_sources() {
        let f = check_nss(Some(
            "# comment\npasswd:         files systemd sss\ngroup: files\n",
        ));
        assert_eq!(f.level, Level::Ok);
        assert!(
            f.message
                .starts_with("accounts come from: files, systemd, sss (sss users"),
            "{}",
            f.message
        );
        let local = check_nss(Some("passwd: files [SUCCESS=merge] systemd\n"));
        assert_eq!(local.message, "accounts come from: files, systemd");
        assert_eq!(check_nss(Some("group: files\n")).level, Level::Warn);
        assert_eq!(check_nss(None).level, Level::Warn);
    }

    #[test]
    fn uid_aliases_and_enrollments_of_no_account() {
        let passwd = "root:x:0:0::/root:/bin/bash\ntoor:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        let enrolled: BTreeSet<String> = ["root", "alice", "gone"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let found = check_identities(passwd, &enrolled, &|n| n != "gone");
        let text = format!("{found:?}");
        assert_eq!(found.len(), 2, "{text}");
        assert!(
            text.contains("uid 0 has several names (root, toor)"),
            "{text}"
        );
        assert!(text.contains("no account here: gone"), "{text}");
        assert!(
            check_identities("root:x:0:0::/root:/bin/sh\n", &BTreeSet::new(), &|_| true).is_empty()
        );
    }
}
