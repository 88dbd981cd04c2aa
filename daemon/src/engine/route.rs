//! Routing one request: which account it is about (resolved through the name service to
//! the account's own name), whether that account's enrollment is its own, who may ask, and
//! which operation answers.

use super::*;

/// Whom a request is about.
enum Target {
    /// No account (ping, list, policy, seal rekey, the whole audit trail).
    None,
    /// The caller's own account.
    Caller,
    /// A named account (or a name with no account).
    Named(String),
}

/// What a request is, before its arguments: the one place that knows which request carries
/// which target and which PAM items.
struct Route<'a> {
    operation: Operation,
    target: Target,
    pam: Option<&'a PamItems>,
}

fn route(body: &RequestBody) -> Route<'_> {
    use Operation as Op;
    let own_or_named = |user: &Option<String>| user.clone().map_or(Target::Caller, Target::Named);
    let named = |user: &String| Target::Named(user.clone());
    let (operation, target, pam) = match body {
        RequestBody::Ping {} => (Op::Ping, Target::None, None),
        RequestBody::Preflight { user, pam, .. } => (Op::Preflight, named(user), Some(pam)),
        RequestBody::Verify { user, pam, .. } => (Op::Verify, named(user), Some(pam)),
        RequestBody::Enroll { user, .. } => (Op::Enroll, own_or_named(user), None),
        RequestBody::Authenticators { user } => (Op::Authenticators, own_or_named(user), None),
        RequestBody::RemoveAuthenticator { user, .. } => {
            (Op::RemoveAuthenticator, own_or_named(user), None)
        }
        RequestBody::Confirm { user, .. } => (Op::Confirm, own_or_named(user), None),
        RequestBody::Status { user } => (Op::Status, own_or_named(user), None),
        RequestBody::BackupCodes { user, .. } => (Op::BackupCodes, own_or_named(user), None),
        RequestBody::Disable { user, .. } => (Op::Disable, own_or_named(user), None),
        RequestBody::List {} => (Op::List, Target::None, None),
        RequestBody::Policy {} => (Op::Policy, Target::None, None),
        RequestBody::Metrics {} => (Op::Metrics, Target::None, None),
        RequestBody::Audit { user, .. } => (
            Op::Audit,
            user.clone().map_or(Target::None, Target::Named),
            None,
        ),
        RequestBody::Import { user, .. } => (Op::Import, named(user), None),
        RequestBody::SealRekey {} => (Op::SealRekey, Target::None, None),
        RequestBody::Unlock { user } => (Op::Unlock, named(user), None),
        RequestBody::EmailSet { user, .. } => (Op::EmailSet, own_or_named(user), None),
        RequestBody::EmailConfirm { user, .. } => (Op::EmailConfirm, own_or_named(user), None),
        RequestBody::EmailRemove { user, .. } => (Op::EmailRemove, own_or_named(user), None),
        RequestBody::SendEmailCode { user, pam } => (Op::SendEmailCode, named(user), Some(pam)),
        RequestBody::ConfirmLogin { user, pam, .. } => (Op::ConfirmLogin, named(user), Some(pam)),
        RequestBody::Invite { user, .. } => (Op::Invite, named(user), None),
        RequestBody::InviteList {} => (Op::InviteList, Target::None, None),
        RequestBody::InviteRevoke { user } => (Op::InviteRevoke, named(user), None),
        RequestBody::Bypass { user, .. } => (Op::Bypass, named(user), None),
        RequestBody::BypassRevoke { user } => (Op::BypassRevoke, named(user), None),
        RequestBody::Resync { user, .. } => (Op::Resync, named(user), None),
    };
    Route {
        operation,
        target,
        pam,
    }
}

/// The account a request is about, once resolved: its own name (empty for no target) and
/// its uid (`None`: no such account, or no target).
struct Account {
    name: String,
    uid: Option<u32>,
}

impl Engine {
    /// Answers one request and counts it for the metrics.
    pub(super) fn answer(
        &self,
        uid: u32,
        pid: Option<i32>,
        body: RequestBody,
        now: u64,
    ) -> ResponseBody {
        let started = std::time::Instant::now();
        let op = body.op_name();
        let (reply, operation) = self.decide(uid, pid, body, now);
        self.metrics
            .answered(op, operation.is_login(), &reply, started.elapsed());
        reply
    }

    /// route → bound the PAM items → resolve the account → admit the caller → dispatch.
    fn decide(
        &self,
        uid: u32,
        pid: Option<i32>,
        body: RequestBody,
        now: u64,
    ) -> (ResponseBody, Operation) {
        let caller = Caller {
            uid,
            admin: uid == 0 || uid == self.daemon_uid,
        };
        let Route {
            operation,
            target,
            pam,
        } = route(&body);
        let long_item = pam.is_some_and(|p| {
            [&p.service, &p.rhost, &p.tty, &p.ruser]
                .into_iter()
                .flatten()
                .any(|item| item.len() > MAX_ITEM)
        });
        if long_item {
            let refusal = error(
                ErrorKind::BadRequest,
                format!("a PAM item is longer than {MAX_ITEM} bytes"),
            );
            return (refusal, operation);
        }
        let login = operation.is_login();
        let account = match self.resolve(target, uid, caller.admin && login, now) {
            Ok(a) => a,
            Err(refusal) => return (*refusal, operation),
        };
        let changed = self.copy_follows(operation).then(|| account.name.clone());
        let reply = match self.admit(caller, operation, body.op_name(), &account, now) {
            Ok(needs_code) => self.dispatch(body, account, needs_code, uid, pid, now),
            Err(refusal) => *refusal,
        };
        let failed = matches!(reply, ResponseBody::Error { .. });
        if let Some(name) = changed.filter(|n| !n.is_empty() && !failed) {
            self.refresh_copy_of(&name);
        }
        (reply, operation)
    }

    /// Resolves who the request is about: named, or the caller's own account. A name with an
    /// account is replaced by the account's own name for its uid (see users::canonical), so
    /// that every name of one account meets the same enrollment and throttle.
    /// `pam_login`: a preflight or verify from root's PAM services. A name enrolled under
    /// exactly that spelling with no uid recorded (a name that had no account when it was
    /// enrolled, and none when twofoldd started) is taken as it is, without asking the name
    /// service: its answer could only be "no such account" (which costs the most, tens of
    /// microseconds a miss here) or an account the enrollment is not bound to anyway.
    fn resolve(
        &self,
        target: Target,
        uid: u32,
        pam_login: bool,
        now: u64,
    ) -> Result<Account, Box<ResponseBody>> {
        match target {
            Target::None => Ok(Account {
                name: String::new(),
                uid: None,
            }),
            Target::Named(name) => {
                users::validate_name(&name)
                    .map_err(|why| Box::new(error(ErrorKind::BadRequest, why)))?;
                if pam_login && self.unbound_enrollment(&name, now) {
                    return Ok(Account { name, uid: None });
                }
                match users::canonical(&name) {
                    Ok(Some((canonical, account_uid))) => Ok(Account {
                        name: canonical,
                        uid: Some(account_uid),
                    }),
                    Ok(None) => Ok(Account { name, uid: None }),
                    Err(why) => {
                        self.log.error(&format!(
                            "name service failed for user={}: {why}",
                            audit::field(&name)
                        ));
                        Err(Box::new(error(
                            ErrorKind::Internal,
                            "the name service failed; try again",
                        )))
                    }
                }
            }
            // The caller's name must lead back to the caller: a name that two name services
            // give to different uids (files and LDAP) belongs to the first, not to the caller.
            Target::Caller => match users::name_of(uid) {
                Some(name) if users::uid_of(&name) == Some(uid) => Ok(Account {
                    name,
                    uid: Some(uid),
                }),
                Some(name) => {
                    self.warn_repeated(
                        &format!("ambiguous:{uid}"),
                        now,
                        &format!(
                            "uid {uid} is named {}, but that name belongs to uid {}: refused",
                            audit::field(&name),
                            users::uid_of(&name).map_or("none".into(), |u| u.to_string())
                        ),
                    );
                    Err(Box::new(error(
                        ErrorKind::NoSuchUser,
                        format!(
                            "uid {uid}'s name belongs to another account; ask an administrator"
                        ),
                    )))
                }
                None => Err(Box::new(error(
                    ErrorKind::NoSuchUser,
                    format!("uid {uid} has no user name"),
                ))),
            },
        }
    }

    /// Whether the caller may do this now: the account's enrollment is its own (for logins,
    /// and for everything a user asks about their own account; root may still look at and
    /// clean up a stale one), the policy allows it, and an unprivileged caller has budget
    /// left. `Ok(true)`: allowed once a current code is given.
    fn admit(
        &self,
        caller: Caller,
        operation: Operation,
        op: &str,
        account: &Account,
        now: u64,
    ) -> Result<bool, Box<ResponseBody>> {
        let uid = caller.uid;
        let login = operation.is_login();
        // Switched off, logins pass untouched (PAM_IGNORE) whatever the store holds.
        let owner_matters = if login {
            self.config().enabled
        } else {
            !caller.admin
        };
        if let (Some(account_uid), true) = (account.uid, owner_matters && self.binds_uids()) {
            if let Some(refusal) = self.check_owner(&account.name, account_uid, now) {
                return Err(Box::new(refusal));
            }
        }
        let decision = policy::authorize(caller, operation, account.uid, self.config().self_enroll);
        if let Decision::Deny(why) = decision {
            self.warn_repeated(
                &format!("denied:{uid}"),
                now,
                &format!(
                    "denied op={op} caller_uid={uid} user={} reason={}",
                    audit::field(&account.name),
                    audit::field(why)
                ),
            );
            return Err(Box::new(error(ErrorKind::PermissionDenied, why)));
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
            return Err(Box::new(error(
                ErrorKind::RateLimited,
                "too many changes asked for in the last minute: wait a minute",
            )));
        }
        Ok(decision == Decision::AllowWithCode)
    }

    /// The operation that answers the request, for an admitted caller.
    fn dispatch(
        &self,
        body: RequestBody,
        account: Account,
        needs_code: bool,
        uid: u32,
        pid: Option<i32>,
        now: u64,
    ) -> ResponseBody {
        let Account {
            name,
            uid: target_uid,
        } = account;
        // The session the kernel gives the caller, or for root's processes (which twofoldd's
        // unit may not see in /proc) the one their module read.
        let admin = uid == 0 || uid == self.daemon_uid;
        let device = |pam: &PamItems, grace_secs: u64| {
            let session = || {
                pid.and_then(users::session_of)
                    .or(pam.session.filter(|_| admin))
            };
            (grace_secs > 0)
                .then(|| grace_key(pam, session()))
                .flatten()
        };
        match body {
            RequestBody::Ping {} => ResponseBody::Pong {
                daemon_version: env!("CARGO_PKG_VERSION").into(),
            },
            RequestBody::Preflight {
                pam,
                grace_secs,
                can_enroll,
                combined,
                ..
            } => {
                let grace = device(&pam, grace_secs).map(|d| (d, grace_secs.min(MAX_GRACE_SECS)));
                // Only root's PAM services (sshd, login, su, sudo) enroll at the prompt: a
                // process running as the user (a stolen shell) must not obtain the key that the
                // user's next login enrolls, nor replace a factor without the old one.
                let asks = super::login::Asks {
                    can_enroll: can_enroll && admin && !combined,
                    combined,
                };
                self.preflight(&name, &pam, grace, asks, uid, now)
            }
            RequestBody::ConfirmLogin { code, pam, .. } => {
                self.confirm_at_login(&name, &code, &pam, target_uid, uid, now)
            }
            RequestBody::Invite {
                for_secs, replace, ..
            } => self.invite(&name, target_uid, for_secs, replace, uid, now),
            RequestBody::InviteList {} => self.invite_list(now),
            RequestBody::InviteRevoke { .. } => self.invite_revoke(&name, uid, now),
            RequestBody::Bypass { for_secs, uses, .. } => {
                self.bypass(&name, for_secs, uses, uid, now)
            }
            RequestBody::BypassRevoke { .. } => self.bypass_revoke(&name, uid, now),
            RequestBody::Resync {
                authenticator,
                first,
                second,
                ..
            } => self.resync(&name, authenticator.as_deref(), [&first, &second], uid, now),
            RequestBody::Verify {
                code,
                pam,
                grace_secs,
                ..
            } => self.verify(&name, &code, &pam, device(&pam, grace_secs), uid, now),
            RequestBody::Enroll {
                force,
                code,
                params,
                authenticator,
                ..
            } => self.enroll(
                &name,
                Enrolling {
                    force,
                    code,
                    params,
                    authenticator,
                },
                needs_code,
                uid,
                now,
            ),
            RequestBody::Authenticators { .. } => self.authenticators(&name),
            RequestBody::RemoveAuthenticator {
                authenticator,
                code,
                ..
            } => self.remove_authenticator(&name, &authenticator, code, needs_code, uid, now),
            RequestBody::Confirm { code, .. } => self.confirm(&name, &code, target_uid, uid, now),
            RequestBody::Status { .. } => self.status(&name, now),
            RequestBody::BackupCodes { code, .. } => {
                self.regenerate(&name, code, needs_code, uid, now)
            }
            RequestBody::Disable { code, .. } => self.disable(&name, code, needs_code, uid, now),
            RequestBody::List {} => self.list(now),
            RequestBody::Policy {} => self.policy_report(),
            RequestBody::Metrics {} => ResponseBody::Metrics {
                text: self.metrics_text(now),
            },
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
            RequestBody::Audit { since_secs, .. } => {
                let user = (!name.is_empty()).then_some(name);
                self.audit_trail(user, since_secs, now)
            }
            RequestBody::SealRekey {} => self.seal_rekey(uid, now),
            RequestBody::Import {
                secret,
                params,
                window,
                backup_codes,
                last_used_step,
                force,
                authenticator,
                counter,
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
                    authenticator,
                    counter,
                },
                target_uid,
                uid,
                now,
            ),
        }
    }

    /// Whether the enrollments stored under `name` (an account's own name) or for its uid are
    /// that account's: `None` if so, else the refusal, with a log line saying what to do. An
    /// enrollment with no recorded uid (its name had no account when twofoldd last started)
    /// is taken as the account's.
    pub(super) fn check_owner(&self, name: &str, uid: u32, now: u64) -> Option<ResponseBody> {
        let found = match self.store.read_one(|tx| tx.enrollments_for(name, uid)) {
            Ok(f) => f,
            Err(e) => return Some(self.store_failed("enrollment owner", name, &e)),
        };
        for (enrolled, recorded) in &found {
            let why = match (enrolled == name, recorded) {
                (true, None) => continue,
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
        None
    }

    /// Whether `name` is enrolled under exactly that spelling with no uid recorded. A store
    /// error says no: the name service is asked, and the error is met again where it is
    /// reported.
    fn unbound_enrollment(&self, name: &str, now: u64) -> bool {
        matches!(
            self.login_read(true, now, |tx| tx.recorded_uid(name)),
            Ok(Some(None))
        )
    }

    /// Whether enrollments are bound to uids: on this host's own store, yes; on a fleet's
    /// shared store, no (one person may have a different uid on every host): there the name
    /// alone, resolved through its uid on each host, is the key.
    pub(super) fn binds_uids(&self) -> bool {
        self.config().store == crate::config::StoreKind::Sqlite
    }

    /// At start: records the uid of each enrollment made before uids were recorded (the
    /// upgrade marked them), as the name service gives it now, so that no later caller can
    /// claim it; names with no account are recorded as having none. Once per enrollment.
    /// Returns how many uids were recorded.
    pub fn adopt_uids(&self) -> Result<usize, StoreError> {
        if !self.binds_uids() {
            return Ok(0);
        }
        let names = self.store.read(|tx| tx.names_to_adopt())?;
        let found: Vec<(String, Option<u32>)> = names
            .into_iter()
            .map(|n| {
                let uid = users::uid_of(&n);
                (n, uid)
            })
            .collect();
        let count = found.iter().filter(|(_, uid)| uid.is_some()).count();
        if !found.is_empty() {
            self.store.write(move |tx| {
                found
                    .iter()
                    .try_for_each(|(name, uid)| tx.set_user_uid(name, *uid))
            })?;
            self.log.info(&format!(
                "{count} enrollment(s) made before uids were recorded now carry their account's uid"
            ));
        }
        Ok(count)
    }
}
