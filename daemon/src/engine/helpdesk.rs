//! Helpdesk codes (`twofold bypass`): a temporary code an administrator reads out to a user
//! who lost their phone. Typed at the code prompt it logs them in (once, by default) without
//! touching their enrollment or their backup codes. Stored as an Argon2id hash, refused once
//! spent or expired, checked under the login's throttle.

use super::*;
use crate::clock::format_time;
use crate::store::BypassRecord;

pub(super) const DEFAULT_BYPASS_SECS: u64 = 3_600;
pub(super) const MAX_BYPASS_SECS: u64 = 7 * 86_400;
pub(super) const MAX_BYPASS_USES: u32 = 100;

/// In the deciding transaction: the gate, then the code on record (the same salt, not
/// expired, a use left, the same hash) spent once; anything else is a failure.
pub(super) fn verify_bypass_in_tx(
    tx: &dyn Tx,
    name: &str,
    attempt: &HashedTry,
    now: u64,
    cfg: &throttle::ThrottleConfig,
) -> Result<Outcome, StoreError> {
    let state = tx.throttle(name)?;
    if let Some(blocked) = gate_outcome(cfg, state, now) {
        return Ok(blocked);
    }
    let record = tx.bypass(name)?.filter(|r| {
        r.salt == attempt.salt
            && now < r.expires_at
            && r.uses_left > 0
            && attempt.hash.as_ref().is_some_and(|h| {
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    h.as_bytes(),
                    r.hash.as_slice(),
                ))
            })
    });
    match record {
        Some(r) => {
            let left = tx.spend_bypass(name, &r)?;
            tx.set_last_success(name, now)?;
            tx.clear_throttle(name)?;
            Ok(Outcome::Accepted {
                method: Method::Bypass,
                left: Some(left),
            })
        }
        None => fail_in_tx(tx, name, state, now, cfg, Outcome::Wrong),
    }
}

impl Engine {
    /// `twofold bypass NAME [--for] [--uses]`: a new code (any earlier one stops working).
    pub(super) fn bypass(
        &self,
        name: &str,
        for_secs: Option<u64>,
        uses: Option<u32>,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let secs = for_secs.unwrap_or(DEFAULT_BYPASS_SECS);
        if !(10..=MAX_BYPASS_SECS).contains(&secs) {
            return error(
                ErrorKind::BadRequest,
                "a helpdesk code lasts from 10 seconds to 7 days (--for)",
            );
        }
        let uses = uses.unwrap_or(1);
        if !(1..=MAX_BYPASS_USES).contains(&uses) {
            return error(
                ErrorKind::BadRequest,
                format!("--uses must be 1 to {MAX_BYPASS_USES}"),
            );
        }
        match self.store.read(|tx| Ok(tx.user(name)?.is_some())) {
            Ok(true) => {}
            Ok(false) => {
                return error(
                    ErrorKind::BadRequest,
                    format!(
                        "{name} is not enrolled, so no code is asked at login; to let them \
                         enroll at their next login: 'twofold invite {name}'"
                    ),
                )
            }
            Err(e) => return self.store_failed("bypass", name, &e),
        }
        let Ok(code) = backup::generate_helpdesk() else {
            return error(
                ErrorKind::Internal,
                "the system random number generator failed",
            );
        };
        let mut salt = vec![0u8; backup::SALT_BYTES];
        if backup::random_bytes(&mut salt).is_err() {
            return error(
                ErrorKind::Internal,
                "the system random number generator failed",
            );
        }
        let hash = backup::normalize_helpdesk(code.expose())
            .and_then(|c| self.hash_backup(Lane::Bulk, &c, &salt));
        let Some(hash) = hash else {
            return error(ErrorKind::Internal, "hashing the helpdesk code failed");
        };
        let record = BypassRecord {
            hash: hash.as_bytes().to_vec(),
            salt,
            created_at: now,
            expires_at: now + secs,
            uses_left: uses,
        };
        let mut entry = admin_entry(now, "bypass", name, "issued", uid);
        entry.detail = Some(format!(
            "{uses} use(s) until {}",
            format_time(record.expires_at)
        ));
        let expires_at = record.expires_at;
        let owned = name.to_string();
        if let Err(e) = self.store.write(move |tx| {
            tx.put_bypass(&owned, &record)?;
            tx.audit(&entry)
        }) {
            return self.store_failed("bypass", name, &e);
        }
        self.log.info(&format!(
            "bypass user={} caller_uid={uid} outcome=issued uses={uses} expires={expires_at}",
            audit::field(name)
        ));
        ResponseBody::BypassCode {
            user: name.to_string(),
            code,
            expires_at,
            uses,
        }
    }

    pub(super) fn bypass_revoke(&self, name: &str, uid: u32, now: u64) -> ResponseBody {
        match self.store.read(|tx| tx.bypass(name)) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return error(
                    ErrorKind::BadRequest,
                    format!("{name} has no helpdesk code"),
                )
            }
            Err(e) => return self.store_failed("bypass revoke", name, &e),
        }
        let owned = name.to_string();
        self.apply_admin(
            admin_entry(now, "bypass", name, "revoked", uid),
            move |tx| tx.delete_bypass(&owned).map(|_| ()),
            format!("{name}'s helpdesk code revoked"),
        )
    }

    /// A typed helpdesk code, hashed (outside the writer) under the salt of the code on record,
    /// or under a decoy salt when there is none: the same work either way.
    pub(super) fn bypass_try(
        &self,
        store: &Store,
        name: &str,
        normalized: &str,
    ) -> Result<HashedTry, StoreError> {
        let salt = store
            .read(|tx| tx.bypass(name))?
            .map_or_else(|| vec![0x5a; backup::SALT_BYTES], |r| r.salt);
        Ok(HashedTry {
            hash: self.hash_backup(Lane::Login, normalized, &salt),
            salt,
        })
    }
}
