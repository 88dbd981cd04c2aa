//! The metrics text: the counters kept since the start and the store's state now.

use super::*;
use crate::metrics::Gauges;

impl Engine {
    /// Prometheus text for `twofold metrics` and the textfile (see crate::metrics).
    pub fn metrics_text(&self, now: u64) -> String {
        let offline = self.offline_cache().map(|c| c.status());
        // Offline, the fleet is not asked (it would only time out again).
        let gauges = match offline.is_some_and(|o| o.offline_since.is_some()) {
            true => Ok(None),
            false => self.gauges(now).map(Some),
        };
        if let Err(e) = &gauges {
            self.log
                .error(&format!("metrics: the store could not be read: {e}"));
        }
        self.metrics.render(
            env!("CARGO_PKG_VERSION"),
            gauges.ok().flatten().as_ref(),
            offline.as_ref(),
            now,
        )
    }

    fn gauges(&self, now: u64) -> Result<Gauges, StoreError> {
        self.store.read(|tx| {
            let mut names = tx.user_names()?;
            names.extend(tx.pending_names()?);
            names.extend(tx.invitations()?.into_iter().map(|(n, _)| n));
            names.sort();
            names.dedup();
            let mut g = Gauges {
                database_bytes: tx.database_bytes()?,
                ..Gauges::default()
            };
            for n in &names {
                let s = self.status_in(tx, n, now)?;
                g.enrolled += u64::from(s.enrolled);
                g.pending += u64::from(s.pending);
                g.locked += u64::from(s.locked);
                g.throttled += u64::from(!s.locked && s.throttled_until.is_some_and(|t| t > now));
                g.invitations += u64::from(s.invited_until.is_some_and(|t| t > now));
                g.bypass_codes += u64::from(s.bypass_until.is_some_and(|t| t > now));
            }
            Ok(g)
        })
    }

    /// A failure that reached the lockout limit, for the metrics.
    pub(super) fn count_lockout(&self) {
        self.metrics.lockout();
    }

    /// A mail with a code, sent or refused, for the metrics.
    pub(super) fn count_mail(&self, sent: bool) {
        self.metrics.mail(sent);
    }
}
