//! Which store a login is decided on: the fleet's, or, in outage mode while the fleet does not
//! answer, this host's copy of it (`crate::offline`), with the stricter offline rules.

use super::*;
use crate::offline::{Cache, Noted, OfflineLogin, Route, OFFLINE_LOGIN};

impl Engine {
    /// Outage mode on: logins are decided from `cache` while the fleet does not answer.
    pub fn with_offline(mut self, cache: Arc<Cache>) -> Engine {
        self.offline = Some(cache);
        self
    }

    /// Outage mode's copy and link, when it is on.
    pub fn offline_cache(&self) -> Option<&Arc<Cache>> {
        self.offline.as_ref()
    }

    /// Outage mode's keeper (a thread of twofoldd; see `Cache::keep`). Returns at once when
    /// outage mode is off.
    pub fn keep_offline_copy(&self) {
        if let Some(cache) = &self.offline {
            cache.keep(&self.store, || {
                let cfg = self.config();
                (cfg.offline_refresh, cfg.offline_backup_codes)
            });
        }
    }

    /// Where a login is decided now: on the fleet (outage mode off, or the fleet answers),
    /// or on this host's copy; `Closed` when offline and the copy cannot be used.
    pub(super) fn login_route(&self) -> Route<'_> {
        match &self.offline {
            None => Route::Online,
            Some(cache) => cache.route(),
        }
    }

    /// Whether `e`, met on the fleet by a login (holding no offline [`Route`]), takes this host
    /// offline (outage mode, and the database does not answer, not even a new connection).
    fn went_offline(&self, e: &StoreError, now: u64) -> bool {
        self.offline
            .as_ref()
            .is_some_and(|c| c.lost(e, now, || self.store.answers().is_ok()))
    }

    /// A change this login made online, for the copy (outage mode).
    pub(super) fn note_online(&self, change: Noted) {
        if let Some(cache) = &self.offline {
            cache.note(change);
        }
    }

    /// Whether outage mode is on and `operation` changes an enrollment as the copy holds it
    /// (removed, replaced, made at the login prompt, resynchronised, new backup codes,
    /// unlocked): the copy then follows at once, not at its next refresh.
    pub(super) fn copy_follows(&self, operation: Operation) -> bool {
        use Operation::*;
        self.offline.is_some()
            && matches!(
                operation,
                Confirm
                    | ConfirmLogin
                    | RemoveAuthenticator
                    | BackupCodes
                    | Disable
                    | Import
                    | Resync
                    | Unlock
            )
    }

    /// Brings `name`'s entry in the copy up to the fleet's (see [`Engine::copy_follows`]).
    /// When the fleet does not answer, the copy keeps what it has until its next refresh.
    pub(super) fn refresh_copy_of(&self, name: &str) {
        let Some(cache) = &self.offline else { return };
        let backup_codes = self.config().offline_backup_codes;
        if let Err(e) = cache.refresh_user(&self.store, name, backup_codes) {
            self.log.warn(&format!(
                "offline: this host's copy of user={} could not follow its change: {e}",
                audit::field(name)
            ));
        }
    }

    /// The throttle a login is decided under: offline, the lockout comes sooner.
    pub(super) fn login_throttle(&self, offline: bool) -> throttle::ThrottleConfig {
        let cfg = self.config();
        let mut t = cfg.throttle;
        if offline && (t.lockout_after == 0 || t.lockout_after > cfg.offline_lockout_after) {
            t.lockout_after = cfg.offline_lockout_after;
        }
        t
    }

    /// A login's read (`one`: a single statement, see `Store::read_one`): on the fleet, or on
    /// this host's copy while the fleet does not answer; a read that finds it not answering
    /// goes offline and reads the copy.
    pub(super) fn login_read<R>(
        &self,
        one: bool,
        now: u64,
        f: impl Fn(&dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match self.login_route() {
            Route::Offline(offline) => return offline.store().read(&f),
            Route::Closed => return Err(StoreError::Unavailable),
            Route::Online => {}
        }
        let read = match one {
            true => self.store.read_one(&f),
            false => self.store.read(&f),
        };
        match read {
            Err(e) if self.went_offline(&e, now) => match self.login_route() {
                Route::Offline(offline) => offline.store().read(&f),
                _ => Err(e),
            },
            other => other,
        }
    }

    /// Whether logins are decided offline now (remembered devices are not in the copy).
    pub(super) fn deciding_offline(&self) -> bool {
        self.offline
            .as_ref()
            .is_some_and(|c| c.status().offline_since.is_some())
    }

    /// A login's verdict (see `evaluate_on`): on the fleet while it answers; on this host's
    /// copy, audited as offline, while it does not. A login whose first read finds the fleet
    /// not answering is decided offline; one that loses it later (its decision may or may not
    /// have been made) fails closed, and the next is decided offline.
    pub(super) fn evaluate(
        &self,
        name: &str,
        code: &str,
        now: u64,
        base: LoginBase,
        grace: Option<(String, String)>,
    ) -> Result<Option<(Outcome, ByAuthenticator)>, StoreError> {
        match self.login_route() {
            Route::Offline(offline) => {
                return self.evaluate_offline(&offline, name, code, now, base)
            }
            Route::Closed => return Err(StoreError::Unavailable),
            Route::Online => {}
        }
        let state = match self.store.read_one(|tx| tx.login_state(name)) {
            Ok(state) => state,
            Err(e) => {
                if self.went_offline(&e, now) {
                    if let Route::Offline(offline) = self.login_route() {
                        return self.evaluate_offline(&offline, name, code, now, base);
                    }
                }
                return Err(e);
            }
        };
        let verdict = self.evaluate_on(&self.store, state, false, name, code, now, base, grace);
        if let Err(e) = &verdict {
            self.went_offline(e, now);
        }
        verdict
    }

    fn evaluate_offline(
        &self,
        offline: &OfflineLogin<'_>,
        name: &str,
        code: &str,
        now: u64,
        mut base: LoginBase,
    ) -> Result<Option<(Outcome, ByAuthenticator)>, StoreError> {
        base.entry.event = OFFLINE_LOGIN.into();
        let store = offline.store();
        let state = store.read(|tx| tx.login_state(name))?;
        let verdict = self.evaluate_on(store, state, true, name, code, now, base, None);
        if verdict.is_ok() {
            offline.decided();
        }
        verdict
    }
}
