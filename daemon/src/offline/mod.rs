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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// What the stamp says: when the copy was filled, and how many enrollments it then held.
fn filled(stamp: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(stamp).ok()?;
    let mut words = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    match (words.next()??, words.next()??) {
        (0, _) => None,
        (at, users) => Some((at, users)),
    }
}

/// Whether twofoldd may start while the database does not answer: outage mode is on and this
/// host's copy was filled before (an empty copy would find nobody enrolled; `Cache::new`
/// checks that the copy is the one the stamp is of).
pub fn can_start_offline(config: &crate::config::Config) -> bool {
    config.offline == crate::config::Offline::Cached
        && filled(&stamp_of(&config.offline_cache_path())).is_some()
}

/// This host's copy of the fleet, and whether the fleet answers.
#[derive(Debug)]
pub struct Cache {
    copy: Store,
    /// Offline decisions hold it shared while they decide; changing the link takes it whole
    /// (going online waits for every offline decision, and all are merged). Online decisions
    /// hold nothing across the fleet's I/O (a hung connection must not keep a host from
    /// going offline): what they may change is noted before they ask the fleet.
    link: RwLock<Link>,
    /// Whether `link` is `Online`, changed only under its write lock: what a refresh checks
    /// inside the copy's write transaction, so that it needs no lock that logins wait for
    /// (once offline, decisions are written to the copy after that transaction, or the
    /// refresh sees it and writes nothing).
    online: Arc<AtomicBool>,
    /// What this host changed (or may have changed) online and the copy does not have yet.
    noted: Mutex<Vec<Noted>>,
    /// Held by a refresh from its read of the fleet to its write of the copy, so that an
    /// older read is never written over a newer one.
    refreshing: Mutex<()>,
    /// When the copy was last filled from the fleet (0: never), kept across restarts in
    /// `stamp`: a copy never filled cannot decide anything (every enrollment would be missing).
    refreshed_at: AtomicU64,
    stamp: PathBuf,
    /// Users in the copy at its last refresh.
    users: AtomicU64,
    /// Logins decided offline since twofoldd started.
    decided: AtomicU64,
    /// How long the last refresh took, in milliseconds plus one (0: none yet).
    refresh_took: AtomicU64,
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
    /// How long the last refresh took, in milliseconds (`None`: none since twofoldd started).
    pub refresh_ms: Option<u64>,
}

/// Where a login is decided.
#[derive(Debug)]
pub enum Route<'a> {
    /// On the fleet; what it may change is noted first (`Cache::note`).
    Online,
    Offline(OfflineLogin<'a>),
    /// Offline, but the copy cannot be brought up to date: the login fails closed.
    Closed,
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
        // The stamp counts for this copy only if it names as many enrollments as it holds
        // (a copy deleted and made anew, empty, is no filled copy).
        let users = copy.read(|tx| tx.user_names())?.len() as u64;
        let refreshed_at = match filled(&stamp) {
            Some((at, n)) if n == users => at,
            _ => 0,
        };
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
            online: Arc::new(AtomicBool::new(link == Link::Online)),
            link: RwLock::new(link),
            noted: Mutex::new(Vec::new()),
            refreshing: Mutex::new(()),
            refreshed_at: AtomicU64::new(refreshed_at),
            stamp,
            users: AtomicU64::new(users),
            decided: AtomicU64::new(0),
            refresh_took: AtomicU64::new(0),
            log,
        })
    }

    fn link(&self) -> RwLockReadGuard<'_, Link> {
        self.link.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the login starting now is decided (see [`Route`]): offline, on the copy with
    /// what this host changed online just before brought into it first.
    pub fn route(&self) -> Route<'_> {
        let held = self.link();
        if *held == Link::Online {
            return Route::Online;
        }
        if self.refreshed_at.load(Ordering::Relaxed) == 0 {
            // Offline with a copy never filled (or made anew): it would find nobody enrolled.
            return Route::Closed;
        }
        if let Err(e) = self.apply_noted() {
            self.log.error(&format!(
                "offline: this host's last online changes could not be written to its copy: {e}"
            ));
            return Route::Closed;
        }
        Route::Offline(OfflineLogin {
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
        let online = *self.link() == Link::Online;
        if online && answers() {
            // One dead connection (a restart, a middlebox), not an outage.
            return false;
        }
        let mut link = self.link.write().unwrap_or_else(|p| p.into_inner());
        if *link == Link::Online {
            *link = Link::Offline { since: now };
            self.online.store(false, Ordering::SeqCst);
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
            refresh_ms: self.refresh_took.load(Ordering::Relaxed).checked_sub(1),
        }
    }

    /// The link's keeper (a thread of twofoldd): while online, the copy refreshed every
    /// `refresh()` seconds and this host's online changes written into it every second; while
    /// offline, the database asked every [`PROBE_EVERY`], and once it answers, this host's
    /// decisions merged, the copy refreshed, and logins decided online again.
    pub fn keep(&self, fleet: &Store, refresh: impl Fn() -> (u64, bool)) -> ! {
        let mut first = true;
        let mut refused = String::new();
        loop {
            let now = crate::clock::now();
            let (every, backup_codes) = refresh();
            let offline = *self.link() != Link::Online;
            if offline {
                let merged = match fleet.answers() {
                    Ok(()) => self.reconnect(fleet, backup_codes),
                    Err(e) if e.is_unreachable() => Ok(()),
                    Err(e) => Err(e),
                };
                // Said once (until it changes): the database answers but cannot be used.
                match merged {
                    Err(e) if e.to_string() != refused => {
                        refused = e.to_string();
                        self.log.error(&format!(
                            "offline: the database answers, but this host stays offline: {e}"
                        ));
                    }
                    Err(_) => {}
                    Ok(()) => refused.clear(),
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
            if first || now >= due {
                first = false;
                match self.refresh(fleet, backup_codes) {
                    Ok(()) => {}
                    Err(e) if self.lost(&e, now, || fleet.answers().is_ok()) => {}
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
        let _one_at_a_time = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let mut link = self.link.write().unwrap_or_else(|p| p.into_inner());
        let Link::Offline { since } = *link else {
            return Ok(());
        };
        let pushed = self.push(fleet)?;
        self.refresh_held(fleet, backup_codes)?;
        *link = Link::Online;
        self.online.store(true, Ordering::SeqCst);
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
