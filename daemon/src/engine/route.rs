//! Routing one request: which account it is about (resolved through the name service to
//! the account's own name), whether that account's enrollment is its own, who may ask, and
//! which operation answers.

use super::*;

impl Engine {
    pub(super) fn answer(
        &self,
        uid: u32,
        session: Option<u32>,
        body: RequestBody,
        now: u64,
    ) -> ResponseBody {
        let caller = Caller {
            uid,
            admin: uid == 0 || uid == self.daemon_uid,
        };
        let op = body.op_name();
        let (operation, target, pam) = match &body {
            RequestBody::Ping {} => (Operation::Ping, None, None),
            RequestBody::Preflight { user, pam, .. } => {
                (Operation::Preflight, Some(Some(user.clone())), Some(pam))
            }
            RequestBody::Verify { user, pam, .. } => {
                (Operation::Verify, Some(Some(user.clone())), Some(pam))
            }
            RequestBody::Enroll { user, .. } => (Operation::Enroll, Some(user.clone()), None),
            RequestBody::Confirm { user, .. } => (Operation::Confirm, Some(user.clone()), None),
            RequestBody::Status { user } => (Operation::Status, Some(user.clone()), None),
            RequestBody::BackupCodes { user, .. } => {
                (Operation::BackupCodes, Some(user.clone()), None)
            }
            RequestBody::Disable { user, .. } => (Operation::Disable, Some(user.clone()), None),
            RequestBody::List {} => (Operation::List, None, None),
            RequestBody::Policy {} => (Operation::Policy, None, None),
            RequestBody::Audit { user, .. } => (Operation::Audit, user.clone().map(Some), None),
            RequestBody::Import { user, .. } => (Operation::Import, Some(Some(user.clone())), None),
            RequestBody::SealRekey {} => (Operation::SealRekey, None, None),
            RequestBody::Unlock { user } => (Operation::Unlock, Some(Some(user.clone())), None),
            RequestBody::EmailSet { user, .. } => (Operation::EmailSet, Some(user.clone()), None),
            RequestBody::EmailConfirm { user, .. } => {
                (Operation::EmailConfirm, Some(user.clone()), None)
            }
            RequestBody::EmailRemove { user, .. } => {
                (Operation::EmailRemove, Some(user.clone()), None)
            }
            RequestBody::SendEmailCode { user, pam } => (
                Operation::SendEmailCode,
                Some(Some(user.clone())),
                Some(pam),
            ),
        };
        if let Some(pam) = pam {
            for item in [&pam.service, &pam.rhost, &pam.tty].into_iter().flatten() {
                if item.len() > MAX_ITEM {
                    return error(
                        ErrorKind::BadRequest,
                        format!("a PAM item is longer than {MAX_ITEM} bytes"),
                    );
                }
            }
        }
        // Resolve who the request is about: named, or the caller's own account. A name with an
        // account is replaced by the account's own name for its uid (see users::canonical), so
        // that every name of one account meets the same enrollment and throttle.
        let (name, target_uid) = match target {
            None => (String::new(), None),
            Some(Some(name)) => {
                if let Err(why) = users::validate_name(&name) {
                    return error(ErrorKind::BadRequest, why);
                }
                match users::canonical(&name) {
                    Ok(Some((canonical, account_uid))) => (canonical, Some(account_uid)),
                    Ok(None) => (name, None),
                    Err(why) => {
                        self.log.error(&format!(
                            "name service failed for user={}: {why}",
                            audit::field(&name)
                        ));
                        return error(ErrorKind::Internal, "the name service failed; try again");
                    }
                }
            }
            Some(None) => match users::name_of(uid) {
                Some(name) => (name, Some(uid)),
                None => return error(ErrorKind::NoSuchUser, format!("uid {uid} has no user name")),
            },
        };
        // An enrollment belongs to the account it was made for. Logins, and everything a user
        // asks about their own account, meet only that account's; root may still look at and
        // clean up a stale one.
        let login = matches!(operation, Operation::Preflight | Operation::Verify);
        if let (Some(account_uid), true) = (target_uid, login || !caller.admin) {
            if let Some(refusal) = self.check_owner(&name, account_uid, now) {
                return refusal;
            }
        }
        let decision = policy::authorize(caller, operation, target_uid, self.config().self_enroll);
        if let Decision::Deny(why) = decision {
            self.warn_repeated(
                &format!("denied:{uid}"),
                now,
                &format!(
                    "denied op={op} caller_uid={uid} user={} reason={}",
                    audit::field(&name),
                    audit::field(why)
                ),
            );
            return error(ErrorKind::PermissionDenied, why);
        }
        if !caller.admin && operation.changes() && !self.budget.spend(uid, now) {
            self.warn_repeated(
                &format!("budget:{uid}"),
                now,
                &format!(
                    "refused op={op} caller_uid={uid} reason=more than {} changes in a minute",
                    limits::WRITES_PER_MINUTE
                ),
            );
            return error(
                ErrorKind::RateLimited,
                "too many changes asked for in the last minute: wait a minute",
            );
        }
        let needs_code = decision == Decision::AllowWithCode;
        let target_user = (!name.is_empty()).then(|| name.clone());
        match body {
            RequestBody::Ping {} => ResponseBody::Pong {
                daemon_version: env!("CARGO_PKG_VERSION").into(),
            },
            RequestBody::Preflight {
                pam, grace_secs, ..
            } => {
                let device = (grace_secs > 0).then(|| grace_key(&pam, session)).flatten();
                self.preflight(
                    &name,
                    &pam,
                    device.map(|d| (d, grace_secs.min(MAX_GRACE_SECS))),
                    uid,
                    now,
                )
            }
            RequestBody::Verify {
                code,
                pam,
                grace_secs,
                ..
            } => {
                let device = (grace_secs > 0).then(|| grace_key(&pam, session)).flatten();
                self.verify(&name, &code, &pam, device, uid, now)
            }
            RequestBody::Enroll {
                force,
                code,
                params,
                ..
            } => self.enroll(&name, force, code, params, needs_code, uid, now),
            RequestBody::Confirm { code, .. } => self.confirm(&name, &code, target_uid, uid, now),
            RequestBody::Status { .. } => self.status(&name, now),
            RequestBody::BackupCodes { code, .. } => {
                self.regenerate(&name, code, needs_code, uid, now)
            }
            RequestBody::Disable { code, .. } => self.disable(&name, code, needs_code, uid, now),
            RequestBody::List {} => self.list(now),
            RequestBody::Policy {} => self.policy_report(),
            RequestBody::Unlock { .. } => self.unlock(&name, uid, now),
            RequestBody::EmailSet { address, code, .. } => {
                self.email_set(&name, &address, code, needs_code, uid, now)
            }
            RequestBody::EmailConfirm { code, .. } => self.email_confirm(&name, &code, uid, now),
            RequestBody::EmailRemove { code, .. } => {
                self.email_remove(&name, code, needs_code, uid, now)
            }
            RequestBody::SendEmailCode { pam, .. } => {
                if !self.config().enabled {
                    return ResponseBody::Disabled;
                }
                self.send_email_code(&name, &pam, false, uid, now)
            }
            RequestBody::Audit { since_secs, .. } => self.audit_trail(target_user, since_secs, now),
            RequestBody::SealRekey {} => self.seal_rekey(uid, now),
            RequestBody::Import {
                secret,
                params,
                window,
                backup_codes,
                last_used_step,
                force,
                ..
            } => self.import(
                &name,
                Imported {
                    secret,
                    params,
                    window,
                    backup_codes,
                    last_used_step,
                    force,
                },
                target_uid,
                uid,
                now,
            ),
        }
    }

    /// Whether the enrollments stored under `name` (an account's own name) or for its uid are
    /// that account's: `None` if so, else the refusal, with a log line saying what to do. An
    /// enrollment made before uids were recorded is taken as the account's (and recorded).
    pub(super) fn check_owner(&self, name: &str, uid: u32, now: u64) -> Option<ResponseBody> {
        let found = match self.store.read(|tx| tx.enrollments_for(name, uid)) {
            Ok(f) => f,
            Err(e) => return Some(self.store_failed("enrollment owner", name, &e)),
        };
        let mut legacy = false;
        for (enrolled, recorded) in &found {
            let why = match (enrolled == name, recorded) {
                (true, None) => {
                    legacy = true;
                    continue;
                }
                (true, Some(r)) if *r == uid => continue,
                (true, Some(r)) => format!(
                    "was made for uid {r}, and the account now has uid {uid} (deleted and made again?)"
                ),
                (false, _) => format!(
                    "is stored under the name {} (the account's name changed, or fully \
                     qualified names were switched on)",
                    audit::field(enrolled)
                ),
            };
            self.warn_repeated(
                &format!("owner:{name}"),
                now,
                &format!(
                    "user={} uid={uid}: refused: the enrollment {why}; if it is this account's, \
                     'twofold disable --user {}' and enroll again",
                    audit::field(name),
                    audit::field(enrolled)
                ),
            );
            return Some(error(
                ErrorKind::Internal,
                "this account's two-factor enrollment does not match the account; ask an administrator",
            ));
        }
        if legacy {
            let owned = name.to_string();
            if let Err(e) = self.store.write(move |tx| tx.set_user_uid(&owned, uid)) {
                return Some(self.store_failed("enrollment owner", name, &e));
            }
        }
        None
    }
}
