//! Bounds on what callers can make twofoldd do: repeated events recorded once a minute,
//! a write budget for each unprivileged uid, and Argon2id hashing in two lanes so that bulk
//! work (new backup codes, imports) cannot starve logins.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Condvar, Mutex, MutexGuard};

/// How long repeated events of one kind about one user are recorded once.
pub const QUIET_SECS: u64 = 60;

/// Keys remembered at most; past that, stale ones go (and if none is stale, all: the worst
/// case is one more recorded event per key).
const MAX_KEYS: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per key: when an event was last recorded, and how many went unrecorded since.
#[derive(Default, Debug)]
pub struct Coalesce(Mutex<HashMap<String, (u64, u32)>>);

impl Coalesce {
    /// Whether an event for `key` at `now` goes unrecorded. (A clock that jumped either way
    /// ends the quiet minute: it never silences an hour.)
    pub fn quiet(&self, key: &str, now: u64) -> bool {
        lock(&self.0)
            .get(key)
            .is_some_and(|(at, _)| now.abs_diff(*at) < QUIET_SECS)
    }

    /// Notes an event. `Some(n)`: record it, with `n` unrecorded since the previous one;
    /// `None`: it goes unrecorded. `quiet` is what [`Coalesce::quiet`] said before.
    pub fn note(&self, key: &str, now: u64, quiet: bool) -> Option<u32> {
        let mut map = lock(&self.0);
        if quiet {
            if let Some(e) = map.get_mut(key) {
                e.1 = e.1.saturating_add(1);
            }
            return None;
        }
        if map.len() >= MAX_KEYS {
            map.retain(|_, (at, _)| now.abs_diff(*at) < QUIET_SECS);
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        let before = map.insert(key.to_string(), (now, 0));
        Some(before.map_or(0, |(_, n)| n))
    }

    /// `quiet` and `note` in one: whether to record an event now, and how many went unrecorded.
    pub fn admit(&self, key: &str, now: u64) -> Option<u32> {
        let quiet = self.quiet(key, now);
        self.note(key, now, quiet)
    }
}

/// A text for an event recorded after others went unrecorded.
pub fn omitted(n: u32) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it in the minute before, not recorded)")
    }
}

/// Changes an unprivileged uid may ask for in a minute (enroll, confirm, new backup codes,
/// disable, the address and its mails). Each may write the database and costs Argon2id
/// hashes; a person needs a handful, a loop thousands.
pub const WRITES_PER_MINUTE: u32 = 20;

/// Per uid: the minute window's start and the changes asked for in it.
#[derive(Default, Debug)]
pub struct Budget(Mutex<HashMap<u32, (u64, u32)>>);

impl Budget {
    /// Spends one change of `uid`'s budget; false when this minute's is used up.
    pub fn spend(&self, uid: u32, now: u64) -> bool {
        let mut map = lock(&self.0);
        if map.len() >= MAX_KEYS && !map.contains_key(&uid) {
            map.retain(|_, (start, _)| now.abs_diff(*start) < QUIET_SECS);
        }
        let entry = map.entry(uid).or_insert((now, 0));
        if now.abs_diff(entry.0) >= QUIET_SECS {
            *entry = (now, 0);
        }
        if entry.1 >= WRITES_PER_MINUTE {
            return false;
        }
        entry.1 += 1;
        true
    }
}

/// Which hashing lane a computation waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// A login's one hash (a backup code or mailed code typed at a prompt, a code to mail).
    Login,
    /// Batches: new backup codes, imported ones. One batch at a time.
    Bulk,
}

/// Counting semaphores bounding concurrent Argon2id computations (each takes 19 MiB), one per
/// lane: a loop of `backup-codes` fills only the bulk lane, and logins keep theirs.
#[derive(Debug)]
pub struct HashGate {
    lanes: Mutex<HashMap<Lane, usize>>,
    freed: Condvar,
}

impl HashGate {
    /// `login_permits` for logins (the cores), one for bulk work.
    pub fn new(login_permits: usize) -> Self {
        HashGate {
            lanes: Mutex::new(HashMap::from([
                (Lane::Login, login_permits.max(1)),
                (Lane::Bulk, 1),
            ])),
            freed: Condvar::new(),
        }
    }

    pub fn run<R>(&self, lane: Lane, f: impl FnOnce() -> R) -> R {
        let mut lanes = lock(&self.lanes);
        while lanes.get(&lane).copied().unwrap_or(0) == 0 {
            lanes = self.freed.wait(lanes).unwrap_or_else(|p| p.into_inner());
        }
        *lanes.entry(lane).or_insert(1) -= 1;
        drop(lanes);
        let result = f();
        *lock(&self.lanes).entry(lane).or_insert(0) += 1;
        self.freed.notify_all();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_records_once_a_minute_with_a_count() {
        let c = Coalesce::default();
        assert_eq!(c.admit("a", 100), Some(0));
        assert_eq!(c.admit("a", 101), None);
        assert_eq!(c.admit("a", 159), None);
        assert_eq!(c.admit("b", 159), Some(0), "per key");
        assert_eq!(c.admit("a", 160), Some(2));
        // A clock set back ends the quiet minute.
        assert_eq!(c.admit("a", 50), Some(0));
    }

    #[test]
    fn budget_allows_a_minute_of_changes_per_uid() {
        let b = Budget::default();
        for _ in 0..WRITES_PER_MINUTE {
            assert!(b.spend(1000, 10));
        }
        assert!(!b.spend(1000, 11));
        assert!(b.spend(1001, 11), "per uid");
        assert!(!b.spend(1000, 69));
        assert!(b.spend(1000, 70), "a new minute");
    }

    #[test]
    fn a_full_bulk_lane_leaves_the_login_lane_free() {
        let gate = std::sync::Arc::new(HashGate::new(1));
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let (started, wait_started) = std::sync::mpsc::channel::<()>();
        let g = gate.clone();
        let bulk = std::thread::spawn(move || {
            g.run(Lane::Bulk, || {
                started.send(()).unwrap();
                held.recv().unwrap();
            })
        });
        wait_started.recv().unwrap();
        assert_eq!(
            gate.run(Lane::Login, || 7),
            7,
            "not blocked by the bulk lane"
        );
        hold.send(()).unwrap();
        bulk.join().unwrap();
    }
}
