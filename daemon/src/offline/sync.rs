//! The copy kept current (fleet → copy), and what was decided offline merged back (copy →
//! fleet).

use super::*;
use crate::backup::BackupHash;
use crate::store::{EnrollmentCopy, ThrottleRecord, Tx, UserRecord};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicBool;
use twofold_shared::wire::AuditEntry;

/// The event of a login decided offline, in the audit trail.
pub const OFFLINE_LOGIN: &str = "offline-login";

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
    /// decided since must not be overwritten (the copy is refreshed after the push). Logins
    /// do not wait for it (see `Cache::online`).
    pub(super) fn refresh(&self, fleet: &Store, backup_codes: bool) -> Result<()> {
        let _one_at_a_time = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        let copied = fetch(fleet, backup_codes)?;
        if !self.write_copy(copied, Some(self.online.clone()))? {
            return Ok(());
        }
        let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.refresh_took
            .store(took.saturating_add(1), Ordering::Relaxed);
        Ok(())
    }

    /// Brings one user's entry in the copy up to the fleet's at once (this host changed the
    /// enrollment: removed, replaced, resynchronised, new codes), as [`Cache::refresh`] does
    /// for all; not once this host has gone offline.
    pub fn refresh_user(&self, fleet: &Store, name: &str, backup_codes: bool) -> Result<()> {
        // After a whole refresh that read the fleet before this change, never before it.
        let _one_at_a_time = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let owned = name.to_string();
        let copied = fleet.read(move |tx| tx.enrollment_copy(&owned, backup_codes))?;
        let (owned, online) = (name.to_string(), self.online.clone());
        self.copy.write(move |tx| {
            if !online.load(Ordering::SeqCst) {
                return Ok(());
            }
            match &copied {
                Some(c) => copy_one(tx, c),
                None => tx.delete_user(&owned).map(|_| ()),
            }
        })
    }

    /// [`Cache::refresh`] for a caller that holds the link already (going back online).
    pub(super) fn refresh_held(&self, fleet: &Store, backup_codes: bool) -> Result<()> {
        self.write_copy(fetch(fleet, backup_codes)?, None)
            .map(|_| ())
    }

    /// Writes `copied` over the copy, unless `online` says this host has gone offline (checked
    /// inside the copy's transaction): true when it did.
    fn write_copy(
        &self,
        copied: Vec<EnrollmentCopy>,
        online: Option<Arc<AtomicBool>>,
    ) -> Result<bool> {
        let count = copied.len() as u64;
        let written = self.copy.write(move |tx| {
            if online.is_some_and(|o| !o.load(Ordering::SeqCst)) {
                return Ok(false);
            }
            let fleet: HashSet<&str> = copied.iter().map(|c| c.user.name.as_str()).collect();
            for gone in tx.user_names()? {
                if !fleet.contains(gone.as_str()) {
                    tx.delete_user(&gone)?;
                }
            }
            copied.iter().try_for_each(|c| copy_one(tx, c))?;
            Ok(true)
        })?;
        if !written {
            return Ok(false);
        }
        self.users.store(count, Ordering::Relaxed);
        let now = crate::clock::now();
        // The copy is filled: kept across restarts (a copy never filled decides nothing).
        let fresh = self.stamp.with_extension("refreshed.tmp");
        std::fs::write(&fresh, format!("{now} {count}\n"))
            .and_then(|()| std::fs::rename(&fresh, &self.stamp))
            .map_err(|e| StoreError::Commit(format!("{}: {e}", self.stamp.display())))?;
        self.refreshed_at.store(now, Ordering::Relaxed);
        Ok(true)
    }

    /// Merges every offline decision into the fleet, batch by batch, each in one transaction
    /// (all or nothing), then forgets them here. Returns how many logins were merged.
    ///
    /// A batch is merged once even when the fleet's answer to its commit is lost: it is named
    /// by a token kept in the copy before it is sent, and the fleet keeps the token in the
    /// batch's own transaction; a batch sent again finds it there (or waits for the first
    /// transaction to end, if it still runs) and is only forgotten here.
    pub(super) fn push(&self, fleet: &Store) -> Result<usize> {
        let mut logins = 0;
        while let Some(batch) = self.batch()? {
            logins += self.merge_batch(fleet, &batch)?;
            self.forget_batch(&batch)?;
        }
        Ok(logins)
    }

    /// The batch to merge next: the one sent before, if it was not forgotten (its token and
    /// last row are kept in the copy), or else every entry the copy holds, under a new token.
    pub(super) fn batch(&self) -> Result<Option<Batch>> {
        let pending = self.copy.write(|tx| {
            if let Some(kept) = tx.meta(BATCH)? {
                return parse_batch(&kept).map(Some);
            }
            let Some(&(last, _)) = tx.audit_rows(i64::MAX)?.last() else {
                return Ok(None);
            };
            let mut token = [0u8; 16];
            getrandom::getrandom(&mut token)
                .map_err(|e| StoreError::Commit(format!("no randomness: {e}")))?;
            let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
            tx.put_meta_once(BATCH, format!("{token} {last}").as_bytes())?;
            Ok(Some((token, last)))
        })?;
        let Some((token, through)) = pending else {
            return Ok(None);
        };
        let entries = self
            .copy
            .read(|tx| tx.audit_rows(through))?
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        Ok(Some(Batch {
            token,
            through,
            entries,
        }))
    }

    /// Merges `batch` into the fleet in one transaction, unless the fleet has it already.
    /// Returns how many logins it holds.
    pub(super) fn merge_batch(&self, fleet: &Store, batch: &Batch) -> Result<usize> {
        let entries = batch.entries.clone();
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
        let key = format!("{MERGED}{}", batch.token);
        fleet.write(move |tx| {
            // First, so that a batch sent twice waits here for the first to end.
            if !tx.put_meta_once(&key, &now.to_be_bytes())? {
                return Ok(());
            }
            tx.forget_meta(MERGED, &now.saturating_sub(KEEP_MERGED).to_be_bytes())?;
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
        Ok(logins)
    }

    /// The batch is in the fleet: its entries and its token go from the copy.
    pub(super) fn forget_batch(&self, batch: &Batch) -> Result<()> {
        let through = batch.through;
        self.copy.write(move |tx| {
            tx.prune_audit_through(through)?;
            tx.delete_meta(BATCH)?;
            Ok(())
        })
    }
}

/// In the copy: the batch of offline decisions being merged, "TOKEN LAST-ROW".
const BATCH: &str = "offline-batch";
/// In the fleet: one key per batch merged, its token after this prefix, the time it was
/// merged (8 bytes, big-endian) its value; kept [`KEEP_MERGED`] seconds.
const MERGED: &str = "offline-merged:";
/// A batch whose commit answer was lost is sent again within seconds; a month is plenty.
const KEEP_MERGED: u64 = 30 * 86_400;

/// The offline decisions merged in one transaction.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) token: String,
    /// The copy's last audit row in it.
    pub(super) through: i64,
    pub(super) entries: Vec<AuditEntry>,
}

fn parse_batch(kept: &[u8]) -> Result<(String, i64)> {
    let bad = || StoreError::Corrupt("the copy's batch of offline decisions is unreadable".into());
    let text = std::str::from_utf8(kept).map_err(|_| bad())?;
    let (token, through) = text.split_once(' ').ok_or_else(bad)?;
    let through = through.parse().map_err(|_| bad())?;
    Ok((token.to_string(), through))
}

/// Every enrollment of the fleet, read in one snapshot.
fn fetch(fleet: &Store, backup_codes: bool) -> Result<Vec<EnrollmentCopy>> {
    fleet.read(move |tx| tx.enrollment_copies(backup_codes))
}

/// One enrollment of the fleet written into the copy; a mark already higher in the copy (of
/// the same authenticator) stays.
fn copy_one(tx: &dyn Tx, c: &EnrollmentCopy) -> Result<()> {
    let name = &c.user.name;
    let mine = tx.user(name)?;
    tx.put_user(&c.user)?;
    tx.delete_authenticators(name)?;
    for a in &c.user.authenticators {
        let mut a = a.clone();
        let same = mine
            .iter()
            .flat_map(|m| &m.authenticators)
            .find(|m| m.label == a.label && m.added_at == a.added_at && m.kind == a.kind);
        if let Some(m) = same {
            a.last_step = a.last_step.max(m.last_step);
        }
        tx.put_authenticator(name, &a)?;
    }
    tx.replace_backup_codes(name, &c.user.backup_salt, &c.backup_codes)?;
    match c.throttle == ThrottleRecord::default() {
        true => tx.clear_throttle(name),
        false => tx.set_throttle(name, c.throttle),
    }
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
