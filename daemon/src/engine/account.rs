//! One account's state: status, the list, disabling, unlocking.

use super::*;

impl Engine {
    pub(super) fn disable(
        &self,
        name: &str,
        code: Option<SecretText>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let (enrolled, pending) = match self
            .store
            .read(|tx| Ok((tx.user(name)?.is_some(), tx.pending(name)?.is_some())))
        {
            Ok(x) => x,
            Err(e) => return self.store_failed("disable", name, &e),
        };
        if !enrolled && !pending {
            return ResponseBody::NotEnrolled {
                required: false,
                reason: None,
            };
        }
        if enrolled && needs_code {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let owned = name.to_string();
        let entry = admin_entry(
            now,
            "disable",
            name,
            if enrolled { "removed" } else { "cancelled" },
            uid,
        );
        let proven = enrolled || !needs_code;
        let removed = self.store.write(move |tx| {
            // Decided again inside the transaction: a confirmation landing after the snapshot
            // made an enrollment that this unproven request must not remove.
            if !proven && tx.user(&owned)?.is_some() {
                return Ok(false);
            }
            tx.delete_user(&owned)?;
            tx.audit(&entry)?;
            Ok(true)
        });
        match removed {
            Ok(false) => error(
                ErrorKind::CodeRequired,
                "an enrollment was confirmed meanwhile: give a current code or a backup code",
            ),
            Ok(true) => {
                self.log.info(&format!(
                    "disable user={} caller_uid={uid} outcome=removed",
                    audit::field(name)
                ));
                ResponseBody::Done {
                    message: if enrolled {
                        format!("two-factor enrollment of {name} removed")
                    } else {
                        format!("pending enrollment of {name} cancelled")
                    },
                }
            }
            Err(e) => self.store_failed("disable", name, &e),
        }
    }

    /// Whether a verified address is one of `name`'s factors (email codes switched on).
    pub(super) fn email_factor(&self, tx: &dyn Tx, name: &str) -> Result<bool, StoreError> {
        Ok(self.config().email_codes && tx.email(name)?.is_some_and(|e| e.verified))
    }

    pub(super) fn status_in(
        &self,
        tx: &dyn Tx,
        name: &str,
        now: u64,
    ) -> Result<UserStatus, StoreError> {
        let user = tx.user(name)?;
        let state = tx.throttle(name)?;
        let (throttled_until, locked) = match throttle::gate(&self.config().throttle, state, now) {
            Gate::Open => (None, false),
            Gate::Wait { until } => (Some(until), false),
            Gate::Locked => (None, true),
        };
        Ok(UserStatus {
            authenticators: user.as_ref().map_or(0, |u| u.authenticators.len() as u32),
            user: name.to_string(),
            enrolled: user.is_some(),
            pending: tx
                .pending(name)?
                .is_some_and(|p| now <= p.created_at.saturating_add(self.config().pending_ttl)),
            backup_codes_left: if user.is_some() {
                tx.backup_codes_left(name)?
            } else {
                0
            },
            enrolled_at: user.as_ref().map(|u| u.enrolled_at),
            last_success: user.as_ref().and_then(|u| u.last_success),
            failures: state.failures,
            throttled_until,
            locked,
            email: tx.email(name)?.map(|e| email::mask(&e.address)),
            email_verified: tx.email(name)?.is_some_and(|e| e.verified),
            invited_until: tx
                .invitation(name)?
                .map(|i| i.expires_at)
                .filter(|&t| now < t),
            bypass_until: tx
                .bypass(name)?
                .filter(|b| b.uses_left > 0)
                .map(|b| b.expires_at)
                .filter(|&t| now < t),
        })
    }

    pub(super) fn status(&self, name: &str, now: u64) -> ResponseBody {
        match self.store.read(|tx| self.status_in(tx, name, now)) {
            Ok(s) => ResponseBody::Status(s),
            Err(e) => self.store_failed("status", name, &e),
        }
    }

    pub(super) fn list(&self, now: u64) -> ResponseBody {
        let result = self.store.read(|tx| {
            let mut names = tx.user_names()?;
            names.extend(tx.pending_names()?);
            names.extend(tx.invitations()?.into_iter().map(|(n, _)| n));
            names.sort();
            names.dedup();
            names
                .iter()
                .map(|n| self.status_in(tx, n, now))
                .collect::<Result<Vec<_>, _>>()
        });
        match result {
            Ok(users) => ResponseBody::Users { users },
            Err(e) => self.store_failed("list", "-", &e),
        }
    }

    pub(super) fn unlock(&self, name: &str, uid: u32, now: u64) -> ResponseBody {
        let owned = name.to_string();
        self.apply_admin(
            admin_entry(now, "unlock", name, "cleared", uid),
            move |tx| tx.clear_throttle(&owned),
            format!("{name} unlocked: failure count cleared"),
        )
    }
}
