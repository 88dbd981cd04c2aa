//! Outage mode (`offline = "cached"`, PostgreSQL store only): each host keeps a sealed copy of
//! the fleet's enrollments (an SQLite store of its own, secrets sealed with the fleet's key),
//! refreshed while the database answers. When it does not, this host decides logins alone from
//! the copy, by the same rules (`engine/verdict.rs`) and stricter ones: a code must be above
//! the fleet's mark as last copied and this host's own (the copy holds the higher of the two),
//! a lower lockout (`offline_lockout_after`), backup codes only with `offline_backup_codes`,
//! no mailed codes, no helpdesk codes, every decision audited as offline. When the database
//! answers again, what this host decided is pushed to it (marks raised, never lowered;
//! failures added; spent backup codes spent; the audit entries) before any login is decided
//! online again, and the copy is refreshed (a user removed meanwhile is gone from it).
//!
//! The bound this leaves (SECURITY.md): during an outage a code used on one host can be used
//! again on another host only while it is within its window, and only if that host is cut
//! off too.

mod sync;

pub use sync::OFFLINE_LOGIN;

use crate::audit::{self, Logger};
use crate::store::{Result, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

/// How often a host that went offline asks the database whether it answers again.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// This host's copy of the fleet, and whether the fleet answers.
#[derive(Debug)]
pub struct Cache {
    copy: Store,
    /// Offline decisions hold it shared while they run; going back online takes it whole,
    /// so that nothing decided offline is left behind when the push is done.
    link: RwLock<Link>,
    /// Codes this host accepted online and the copy does not have yet: `(user, label, step)`.
    noted: Mutex<Vec<(String, String, i64)>>,
    /// When the copy was last refreshed from the fleet (0: not since twofoldd started).
    refreshed_at: AtomicU64,
    /// Users in the copy at its last refresh.
    users: AtomicU64,
    /// Logins decided offline since twofoldd started.
    decided: AtomicU64,
    log: Arc<Logger>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Online,
    Offline { since: u64 },
}

/// What outage mode reports (metrics, `twofold doctor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Since when this host decides alone (`None`: the database answers).
    pub offline_since: Option<u64>,
    pub refreshed_at: Option<u64>,
    pub users: u64,
    pub decided_offline: u64,
}

/// A login decided offline: the copy to decide on, held so that the push waits for it.
#[derive(Debug)]
pub struct OfflineLogin<'a> {
    cache: &'a Cache,
    _held: RwLockReadGuard<'a, Link>,
}

impl OfflineLogin<'_> {
    pub fn store(&self) -> &Store {
        &self.cache.copy
    }

    /// Counts one offline decision (for the metrics).
    pub fn decided(&self) {
        self.cache.decided.fetch_add(1, Ordering::Relaxed);
    }
}

impl Cache {
    /// The copy at `copy` (opened by the caller, sealed with the fleet's key).
    pub fn new(copy: Store, log: Arc<Logger>) -> Cache {
        Cache {
            copy,
            link: RwLock::new(Link::Online),
            noted: Mutex::new(Vec::new()),
            refreshed_at: AtomicU64::new(0),
            users: AtomicU64::new(0),
            decided: AtomicU64::new(0),
            log,
        }
    }

    fn link(&self) -> RwLockReadGuard<'_, Link> {
        self.link.read().unwrap_or_else(|p| p.into_inner())
    }

    /// While the fleet does not answer: the copy to decide a login on, with what this host
    /// accepted online just before brought into it first.
    pub fn offline(&self) -> Option<OfflineLogin<'_>> {
        let held = self.link();
        if *held == Link::Online {
            return None;
        }
        if let Err(e) = self.apply_noted() {
            self.log.error(&format!(
                "offline: this host's last online codes could not be written to its copy: {e}"
            ));
            return None;
        }
        Some(OfflineLogin {
            cache: self,
            _held: held,
        })
    }

    /// A login met `e` on the fleet: when it is an outage, this host decides alone from now
    /// until the database answers again. True when it does.
    pub fn lost(&self, e: &StoreError, now: u64) -> bool {
        if !e.is_unreachable() {
            return false;
        }
        let mut link = self.link.write().unwrap_or_else(|p| p.into_inner());
        if *link == Link::Online {
            *link = Link::Offline { since: now };
            self.log.warn(&format!(
                "offline: the database does not answer ({}); logins are decided from this \
                 host's copy of the fleet (refreshed {}) until it does",
                audit::field(&e.to_string()),
                match self.refreshed_at.load(Ordering::Relaxed) {
                    0 => "never since twofoldd started".to_string(),
                    t => format!("{} s before", now.saturating_sub(t)),
                }
            ));
        }
        true
    }

    /// A code this host accepted online: the copy learns of it before any offline decision.
    pub fn note_accepted(&self, name: &str, label: &str, step: i64) {
        let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
        noted.push((name.to_string(), label.to_string(), step));
    }

    /// Writes the noted codes' marks into the copy (raised, never lowered).
    fn apply_noted(&self) -> Result<()> {
        let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
        if noted.is_empty() {
            return Ok(());
        }
        let marks = std::mem::take(&mut *noted);
        let now = crate::clock::now();
        let kept = marks.clone();
        let written = self.copy.write(move |tx| {
            marks.iter().try_for_each(|(name, label, step)| {
                tx.advance_step(name, label, *step, now).map(|_| ())
            })
        });
        if written.is_err() {
            // Kept for the next try: a mark must not be forgotten.
            noted.extend(kept);
        }
        written
    }

    pub fn status(&self) -> Status {
        let at = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|t| *t > 0);
        Status {
            offline_since: match *self.link() {
                Link::Online => None,
                Link::Offline { since } => Some(since),
            },
            refreshed_at: at(&self.refreshed_at),
            users: self.users.load(Ordering::Relaxed),
            decided_offline: self.decided.load(Ordering::Relaxed),
        }
    }

    /// The link's keeper (a thread of twofoldd): while online, the copy refreshed every
    /// `refresh()` seconds and this host's accepted codes written into it every second; while
    /// offline, the database asked every [`PROBE_EVERY`], and once it answers, this host's
    /// decisions pushed, the copy refreshed, and logins decided online again.
    pub fn keep(&self, fleet: &Store, refresh: impl Fn() -> (u64, bool)) -> ! {
        loop {
            let now = crate::clock::now();
            let (every, backup_codes) = refresh();
            let offline = *self.link() != Link::Online;
            if offline {
                if fleet.read_one(|tx| tx.seal_check()).is_ok() {
                    if let Err(e) = self.reconnect(fleet, backup_codes) {
                        self.log.error(&format!(
                            "offline: the database answers, but this host's offline \
                             decisions could not be merged into it yet: {e}"
                        ));
                    }
                }
                std::thread::sleep(PROBE_EVERY);
                continue;
            }
            if let Err(e) = self.apply_noted() {
                self.log
                    .error(&format!("offline: writing the copy failed: {e}"));
            }
            let due = self
                .refreshed_at
                .load(Ordering::Relaxed)
                .saturating_add(every);
            if now >= due {
                match self.refresh(fleet, backup_codes) {
                    Ok(()) => {}
                    Err(e) if self.lost(&e, now) => {}
                    Err(e) => self.log.error(&format!(
                        "offline: refreshing this host's copy of the fleet failed: {e}"
                    )),
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Back online: with every offline decision finished and none starting, pushes them
    /// all, refreshes the copy, and only then lets logins go to the fleet again.
    fn reconnect(&self, fleet: &Store, backup_codes: bool) -> Result<()> {
        let mut link = self.link.write().unwrap_or_else(|p| p.into_inner());
        let Link::Offline { since } = *link else {
            return Ok(());
        };
        let pushed = self.push(fleet)?;
        self.refresh_held(fleet, backup_codes)?;
        *link = Link::Online;
        self.log.info(&format!(
            "offline: the database answers again after {} s; {pushed} offline decision(s) \
             merged into it; logins are decided by the fleet again",
            crate::clock::now().saturating_sub(since)
        ));
        Ok(())
    }
}
