//! The copy kept current (fleet → copy), and what was decided offline merged back (copy →
//! fleet).

use super::*;
use crate::backup::BackupHash;
use crate::store::{ThrottleRecord, UserRecord};
use std::collections::{BTreeMap, HashSet};
use twofold_shared::wire::AuditEntry;

/// The event of a login decided offline, in the audit trail.
pub const OFFLINE_LOGIN: &str = "offline-login";

/// One enrollment as the fleet has it.
struct Copied {
    user: UserRecord,
    throttle: ThrottleRecord,
    backup_codes: Vec<BackupHash>,
}

/// What one user's offline decisions left in the copy, to merge into the fleet.
struct Decided {
    name: String,
    /// The copy's enrollment (its marks, its backup codes left, its last success).
    user: Option<UserRecord>,
    backup_codes: Vec<BackupHash>,
    /// Failures after the last offline success: added to the fleet's count.
    failures: u32,
    last_failure: u64,
    spent_backup_code: bool,
}

impl Cache {
    /// Copies every enrollment of the fleet (backup-code hashes only when `backup_codes`),
    /// with its throttle, into the copy; a mark already higher in the copy stays; a user the
    /// fleet no longer has goes. Not once this host has gone offline meanwhile: what it
    /// decided since must not be overwritten (the copy is refreshed after the push).
    pub(super) fn refresh(&self, fleet: &Store, backup_codes: bool) -> Result<()> {
        let copied = fetch(fleet, backup_codes)?;
        let link = self.link.write().unwrap_or_else(|p| p.into_inner());
        if *link != Link::Online {
            return Ok(());
        }
        self.write_copy(copied)
    }

    /// [`Cache::refresh`] for a caller that holds the link already (going back online).
    pub(super) fn refresh_held(&self, fleet: &Store, backup_codes: bool) -> Result<()> {
        self.write_copy(fetch(fleet, backup_codes)?)
    }

    fn write_copy(&self, copied: Vec<Copied>) -> Result<()> {
        let count = copied.len() as u64;
        self.copy.write(move |tx| {
            let fleet: HashSet<&str> = copied.iter().map(|c| c.user.name.as_str()).collect();
            for gone in tx.user_names()? {
                if !fleet.contains(gone.as_str()) {
                    tx.delete_user(&gone)?;
                }
            }
            for c in &copied {
                let name = &c.user.name;
                let mine = tx.user(name)?;
                tx.put_user(&c.user)?;
                tx.delete_authenticators(name)?;
                for a in &c.user.authenticators {
                    let mut a = a.clone();
                    let same = mine.iter().flat_map(|m| &m.authenticators).find(|m| {
                        m.label == a.label && m.added_at == a.added_at && m.kind == a.kind
                    });
                    if let Some(m) = same {
                        a.last_step = a.last_step.max(m.last_step);
                    }
                    tx.put_authenticator(name, &a)?;
                }
                tx.replace_backup_codes(name, &c.user.backup_salt, &c.backup_codes)?;
                match c.throttle == ThrottleRecord::default() {
                    true => tx.clear_throttle(name)?,
                    false => tx.set_throttle(name, c.throttle)?,
                }
            }
            Ok(())
        })?;
        self.users.store(count, Ordering::Relaxed);
        let now = crate::clock::now();
        // The copy is filled: kept across restarts (a copy never filled decides nothing).
        let fresh = self.stamp.with_extension("refreshed.tmp");
        std::fs::write(&fresh, format!("{now} {count}\n"))
            .and_then(|()| std::fs::rename(&fresh, &self.stamp))
            .map_err(|e| StoreError::Commit(format!("{}: {e}", self.stamp.display())))?;
        self.refreshed_at.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// Merges every offline decision into the fleet in one transaction (all or nothing), then
    /// forgets them here. Returns how many logins were merged.
    pub(super) fn push(&self, fleet: &Store) -> Result<usize> {
        let (entries, _) = self.copy.read(|tx| tx.audit_entries(None, 0, u32::MAX))?;
        if entries.is_empty() {
            return Ok(0);
        }
        let logins = entries.iter().filter(|e| e.event == OFFLINE_LOGIN).count();
        let by_user = decisions_by_user(&entries);
        let decided = self.copy.read(|tx| {
            by_user
                .into_iter()
                .map(|(name, (failures, last_failure, spent_backup_code))| {
                    Ok(Decided {
                        user: tx.user(&name)?,
                        backup_codes: tx.backup_hashes(&name)?,
                        name,
                        failures,
                        last_failure,
                        spent_backup_code,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "this host".into());
        let now = crate::clock::now();
        fleet.write(move |tx| {
            for d in &decided {
                merge(tx, d, now)?;
            }
            for e in &entries {
                tx.audit(&AuditEntry {
                    detail: Some(match &e.detail {
                        Some(d) => format!("decided offline on {host}: {d}"),
                        None => format!("decided offline on {host}"),
                    }),
                    ..e.clone()
                })?;
            }
            Ok(())
        })?;
        self.copy.write(|tx| tx.prune_audit_beyond(0))?;
        Ok(logins)
    }
}

/// Every enrollment of the fleet, read in one snapshot.
fn fetch(fleet: &Store, backup_codes: bool) -> Result<Vec<Copied>> {
    fleet.read(|tx| {
        let mut all = Vec::new();
        for name in tx.user_names()? {
            let Some(user) = tx.user(&name)? else {
                continue;
            };
            all.push(Copied {
                throttle: tx.throttle(&name)?,
                backup_codes: match backup_codes {
                    true => tx.backup_hashes(&name)?,
                    false => Vec::new(),
                },
                user,
            });
        }
        Ok(all)
    })
}

/// One user's offline decisions merged: the marks raised (of the same authenticators only:
/// one removed or replaced meanwhile is not brought back), the failures added, the backup codes
/// spent here spent there (while the fleet's codes are still the ones copied: same salt).
fn merge(tx: &dyn crate::store::Tx, d: &Decided, now: u64) -> Result<()> {
    if let (Some(mine), Some(theirs)) = (&d.user, tx.user(&d.name)?) {
        for a in &mine.authenticators {
            let same = theirs
                .authenticators
                .iter()
                .any(|t| t.label == a.label && t.added_at == a.added_at && t.kind == a.kind);
            if same && a.last_step >= 0 {
                tx.advance_step(&d.name, &a.label, a.last_step, now)?;
            }
        }
        if mine.last_success > theirs.last_success {
            if let Some(at) = mine.last_success {
                tx.set_last_success(&d.name, at)?;
            }
        }
        if d.spent_backup_code && mine.backup_salt == theirs.backup_salt {
            for h in tx.backup_hashes(&d.name)? {
                if !d.backup_codes.contains(&h) {
                    tx.delete_backup_code(&d.name, &h)?;
                }
            }
        }
    }
    if d.failures > 0 {
        let t = tx.throttle(&d.name)?;
        tx.set_throttle(
            &d.name,
            ThrottleRecord {
                failures: t.failures.saturating_add(d.failures),
                last_failure: t.last_failure.max(d.last_failure),
            },
        )?;
    }
    Ok(())
}

/// Per user, from the offline entries in order: the failures since the last success, the
/// time of the last, and whether a backup code was spent.
fn decisions_by_user(entries: &[AuditEntry]) -> BTreeMap<String, (u32, u64, bool)> {
    let mut by_user: BTreeMap<String, (u32, u64, bool)> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.event == OFFLINE_LOGIN) {
        let Some(name) = &e.user else { continue };
        let d = by_user.entry(name.clone()).or_default();
        match e.outcome.as_str() {
            "accepted" => {
                d.0 = 0;
                d.2 |= e.method.as_deref() == Some("backup-code");
            }
            "rejected" => {
                d.0 = d.0.saturating_add(1);
                d.1 = d.1.max(e.time);
            }
            _ => {}
        }
    }
    by_user
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: u64, user: &str, outcome: &str, method: Option<&str>) -> AuditEntry {
        AuditEntry {
            time,
            event: OFFLINE_LOGIN.into(),
            user: Some(user.into()),
            outcome: outcome.into(),
            method: method.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn failures_after_the_last_success_are_what_is_added() {
        let entries = vec![
            entry(1, "ann", "rejected", None),
            entry(2, "ann", "accepted", Some("totp")),
            entry(3, "ann", "rejected", None),
            entry(4, "ann", "throttled", None),
            entry(5, "ann", "rejected", None),
            entry(6, "bob", "accepted", Some("backup-code")),
            AuditEntry {
                event: "lockout".into(),
                ..entry(7, "bob", "locked", None)
            },
        ];
        let d = decisions_by_user(&entries);
        assert_eq!(d["ann"], (2, 5, false));
        assert_eq!(d["bob"], (0, 0, true));
    }
}
