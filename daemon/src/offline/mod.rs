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

mod noted;
mod sync;

pub use noted::Noted;
pub use sync::OFFLINE_LOGIN;

use crate::audit::{self, Logger};
use crate::store::{Result, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

/// How often a host that went offline asks the database whether it answers again.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Where the time of the copy's last refresh is kept, beside it.
fn stamp_of(copy: &Path) -> PathBuf {
    let mut stamp = copy.as_os_str().to_owned();
    stamp.push(".refreshed");
    PathBuf::from(stamp)
}

fn filled_at(stamp: &Path) -> Option<u64> {
    std::fs::read_to_string(stamp)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|t| *t > 0)
}

/// Whether twofoldd may start while the database does not answer: outage mode is on and this
/// host's copy was filled before (an empty copy would find nobody enrolled).
pub fn can_start_offline(config: &crate::config::Config) -> bool {
    config.offline == crate::config::Offline::Cached
        && filled_at(&stamp_of(&config.offline_cache_path())).is_some()
}

/// This host's copy of the fleet, and whether the fleet answers.
#[derive(Debug)]
pub struct Cache {
    copy: Store,
    /// Every login holds it shared while it decides (online or offline); changing the link
    /// takes it whole: going offline waits for the online decisions in flight (their accepted
    /// codes are noted first), going online waits for the offline ones (all are merged).
    link: RwLock<Link>,
    /// What this host changed online and the copy does not have yet.
    noted: Mutex<Vec<Noted>>,
    /// When the copy was last filled from the fleet (0: never), kept across restarts in
    /// `stamp`: a copy never filled cannot decide anything (every enrollment would be missing).
    refreshed_at: AtomicU64,
    stamp: PathBuf,
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

/// Where a login is decided, held for as long as it decides.
#[derive(Debug)]
pub enum Route<'a> {
    /// On the fleet; what it changes is noted here (`Cache::note`) before it lets go.
    Online(OnlineLogin<'a>),
    Offline(OfflineLogin<'a>),
}

/// A login decided on the fleet: held so that going offline waits for it.
#[derive(Debug)]
pub struct OnlineLogin<'a> {
    _held: RwLockReadGuard<'a, Link>,
}

/// A login decided offline: the copy to decide on, held so that the merge waits for it.
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
    /// The copy `copy`, opened by the caller from the file `path` and sealed with the fleet's
    /// key. A copy holding offline decisions not merged yet (twofoldd stopped before the
    /// database came back) starts offline: they are merged before any login goes online.
    /// `offline`: the database did not answer at start (see [`can_start_offline`]).
    pub fn new(
        copy: Store,
        path: &Path,
        log: Arc<Logger>,
        now: u64,
        offline: bool,
    ) -> Result<Cache> {
        let stamp = stamp_of(path);
        let refreshed_at = filled_at(&stamp).unwrap_or(0);
        let (pending, _) = copy.read(|tx| tx.audit_entries(None, 0, 1))?;
        let link = match (pending.is_empty(), offline) {
            (true, false) => Link::Online,
            (true, true) => Link::Offline { since: now },
            (false, _) => {
                log.warn(
                    "offline: this host's copy holds offline decisions not merged into the \
                     fleet yet; logins are decided from it until they are",
                );
                Link::Offline { since: now }
            }
        };
        Ok(Cache {
            copy,
            link: RwLock::new(link),
            noted: Mutex::new(Vec::new()),
            refreshed_at: AtomicU64::new(refreshed_at),
            stamp,
            users: AtomicU64::new(0),
            decided: AtomicU64::new(0),
            log,
        })
    }

    fn link(&self) -> RwLockReadGuard<'_, Link> {
        self.link.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the login starting now is decided (see [`Route`]).
    pub fn route(&self) -> Route<'_> {
        let held = self.link();
        if *held == Link::Online {
            return Route::Online(OnlineLogin { _held: held });
        }
        drop(held);
        match self.offline() {
            Some(offline) => Route::Offline(offline),
            // Back online meanwhile.
            None => Route::Online(OnlineLogin { _held: self.link() }),
        }
    }

    /// While the fleet does not answer: the copy to decide a login on, with what this host
    /// changed online just before brought into it first. `None` when online, or when the
    /// copy cannot be brought up to date (then the login fails closed).
    pub fn offline(&self) -> Option<OfflineLogin<'_>> {
        let held = self.link();
        if *held == Link::Online {
            return None;
        }
        if let Err(e) = self.apply_noted() {
            self.log.error(&format!(
                "offline: this host's last online changes could not be written to its copy: {e}"
            ));
            return None;
        }
        Some(OfflineLogin {
            cache: self,
            _held: held,
        })
    }

    /// A login met `e` on the fleet. When it is an outage (no answer, and none on a fresh
    /// connection either: `answers`) and the copy was ever filled, this host decides alone
    /// from now until the database answers again: true. The caller must hold no [`Route`].
    pub fn lost(&self, e: &StoreError, now: u64, answers: impl FnOnce() -> bool) -> bool {
        if !e.is_unreachable() {
            return false;
        }
        if self.refreshed_at.load(Ordering::Relaxed) == 0 {
            self.log.error(
                "offline: the database does not answer, and this host's copy of the fleet was \
                 never filled: logins fail closed",
            );
            return false;
        }
        if *self.link() == Link::Online && answers() {
            // One dead connection (a restart, a middlebox), not an outage.
            return false;
        }
        let mut link = self.link.write().unwrap_or_else(|p| p.into_inner());
        if *link == Link::Online {
            *link = Link::Offline { since: now };
            self.log.warn(&format!(
                "offline: the database does not answer ({}); logins are decided from this \
                 host's copy of the fleet (refreshed {} s before) until it does",
                audit::field(&e.to_string()),
                now.saturating_sub(self.refreshed_at.load(Ordering::Relaxed))
            ));
        }
        true
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
    /// `refresh()` seconds and this host's online changes written into it every second; while
    /// offline, the database asked every [`PROBE_EVERY`], and once it answers, this host's
    /// decisions merged, the copy refreshed, and logins decided online again.
    pub fn keep(&self, fleet: &Store, refresh: impl Fn() -> (u64, bool)) -> ! {
        loop {
            let now = crate::clock::now();
            let (every, backup_codes) = refresh();
            let offline = *self.link() != Link::Online;
            if offline {
                if fleet.answers() {
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
                    Err(e) if self.lost(&e, now, || fleet.answers()) => {}
                    Err(e) => self.log.error(&format!(
                        "offline: refreshing this host's copy of the fleet failed: {e}"
                    )),
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Back online: with every offline decision finished and none starting, merges them
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

#[cfg(test)]
mod tests;
