//! An enrollment's several authenticators (issue 15): adding one beside the others (after its
//! first code), importing one, listing and removing them. Each has its own key and high-water
//! mark; backup codes, the throttle and remembered devices are the account's.

use super::*;

impl Engine {
    /// Whether an authenticator named `label` may be added to (or, with `force`, replaced in)
    /// the enrollment `user`: `None` if so, else the refusal.
    pub(super) fn may_add(
        &self,
        name: &str,
        user: Option<&UserRecord>,
        label: &str,
        force: bool,
    ) -> Option<ResponseBody> {
        let user = user?;
        let exists = user.authenticators.iter().any(|a| a.label == label);
        let max = self.config().max_authenticators as usize;
        match (exists, force) {
            (true, false) if label == DEFAULT_AUTHENTICATOR => Some(error(
                ErrorKind::AlreadyEnrolled,
                format!(
                    "{name} is already enrolled; use --force to replace the enrollment, or \
                     --name NAME to add another authenticator"
                ),
            )),
            (true, false) => Some(error(
                ErrorKind::AlreadyEnrolled,
                format!("{name} has an authenticator named {label}; --force replaces it"),
            )),
            (false, _) if user.authenticators.len() >= max => Some(error(
                ErrorKind::BadRequest,
                format!(
                    "{name} has {max} authenticators, the most max_authenticators allows; \
                     remove one first ('twofold remove-authenticator NAME')"
                ),
            )),
            _ => None,
        }
    }

    /// `pending` (its first code matched at `step`) becomes an authenticator of the enrollment,
    /// beside the others, if it is still the one waiting and there is room.
    pub(super) fn confirm_authenticator(
        &self,
        name: &str,
        pending: PendingRecord,
        step: u64,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let label = pending.label.clone();
        let authenticator = Authenticator {
            label: label.clone(),
            secret: pending.secret.clone(),
            params: pending.params,
            added_at: now,
            // The confirming code is spent.
            last_step: i64::try_from(step).unwrap_or(i64::MAX),
            last_used: None,
            window: None,
            kind: OtpKind::Totp,
        };
        let max = self.config().max_authenticators as usize;
        let owned = name.to_string();
        let mut entry = admin_entry(now, "confirm", name, "added", uid);
        entry.detail = Some(format!("authenticator {label}"));
        let expected = pending.secret;
        let done = self.store.write(move |tx| {
            let Some(user) = tx.user(&owned)? else {
                return Ok(Err("the enrollment was removed meanwhile"));
            };
            if !tx.pending(&owned)?.is_some_and(|p| p.secret == expected) {
                return Ok(Err("the pending enrollment changed meanwhile"));
            }
            let replaces = user
                .authenticators
                .iter()
                .any(|a| a.label == authenticator.label);
            if !replaces && user.authenticators.len() >= max {
                return Ok(Err("there are max_authenticators authenticators already"));
            }
            if replaces {
                entry.outcome = "replaced".into();
            }
            tx.add_authenticator(&owned, &authenticator, replaces)?;
            tx.audit(&entry)?;
            Ok(Ok((
                replaces,
                user.authenticators.len() + usize::from(!replaces),
            )))
        });
        match done {
            Ok(Ok((replaced, count))) => {
                self.log.info(&format!(
                    "confirm user={} caller_uid={uid} outcome={} authenticator={}",
                    audit::field(name),
                    if replaced { "replaced" } else { "added" },
                    audit::field(&label)
                ));
                ResponseBody::Done {
                    message: format!(
                        "authenticator {label} of {name} {}; {count} authenticator(s)",
                        if replaced { "replaced" } else { "added" }
                    ),
                }
            }
            Ok(Err(why)) => error(
                ErrorKind::NoPendingEnrollment,
                format!("{why}; run 'twofold enroll' again"),
            ),
            Err(e) => self.store_failed("confirm", name, &e),
        }
    }

    /// An import added beside the enrollment's other authenticators (`--name`): its scratch
    /// codes join the backup codes, under the enrollment's salt.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn import_authenticator(
        &self,
        name: &str,
        import: Imported,
        secret: Secret,
        normalized: &[zeroize::Zeroizing<String>],
        salt: Vec<u8>,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let hashes = match self.hash_imported(normalized, &salt) {
            Ok(h) => h,
            Err(reply) => return *reply,
        };
        let (kind, last_step) = import.kind_and_last();
        let label = import.authenticator.unwrap_or_default();
        let authenticator = Authenticator {
            label: label.clone(),
            secret,
            params: import.params,
            added_at: now,
            last_step,
            last_used: None,
            window: import.window,
            kind,
        };
        let mut entry = admin_entry(now, "import", name, "added", uid);
        entry.detail = Some(format!(
            "authenticator {label}: {} backup codes {}",
            describe(&authenticator),
            hashes.len()
        ));
        let message = format!(
            "{name} imported: {}",
            entry.detail.as_deref().unwrap_or_default()
        );
        let owned = name.to_string();
        self.apply_admin(
            entry,
            move |tx| {
                let replaces = tx
                    .user(&owned)?
                    .is_some_and(|u| u.authenticators.iter().any(|a| a.label == label));
                tx.add_authenticator(&owned, &authenticator, replaces)?;
                hashes
                    .iter()
                    .try_for_each(|h| tx.insert_backup_code(&owned, h))
            },
            message,
        )
    }

    /// The account's authenticators, without their secrets.
    pub(super) fn authenticators(&self, name: &str) -> ResponseBody {
        match self.store.read(|tx| tx.user(name)) {
            Ok(Some(user)) => ResponseBody::Authenticators {
                user: name.to_string(),
                authenticators: user
                    .authenticators
                    .iter()
                    .map(|a| wire::AuthenticatorInfo {
                        name: a.label.clone(),
                        added_at: a.added_at,
                        last_used: a.last_used,
                        algorithm: a.params.algorithm,
                        digits: a.params.digits,
                        period: a.params.period,
                        kind: a.kind,
                        counter: (a.kind == OtpKind::Hotp)
                            .then(|| u64::try_from(a.last_step.saturating_add(1)).unwrap_or(0)),
                    })
                    .collect(),
            },
            Ok(None) => ResponseBody::NotEnrolled {
                required: false,
                reason: None,
            },
            Err(e) => self.store_failed("authenticators", name, &e),
        }
    }

    /// Removes one authenticator (not the last: that is `disable`); its codes stop working and
    /// remembered devices are forgotten.
    pub(super) fn remove_authenticator(
        &self,
        name: &str,
        label: &str,
        code: Option<SecretText>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let user = match self.store.read(|tx| tx.user(name)) {
            Ok(Some(u)) => u,
            Ok(None) => {
                return ResponseBody::NotEnrolled {
                    required: false,
                    reason: None,
                }
            }
            Err(e) => return self.store_failed("remove authenticator", name, &e),
        };
        if !user.authenticators.iter().any(|a| a.label == label) {
            return error(
                ErrorKind::BadRequest,
                format!("{name} has no authenticator named {}", audit::field(label)),
            );
        }
        if user.authenticators.len() == 1 {
            return error(
                ErrorKind::BadRequest,
                format!(
                    "{label} is {name}'s only authenticator; 'twofold disable' removes the \
                     enrollment"
                ),
            );
        }
        if needs_code {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let (owned, gone) = (name.to_string(), label.to_string());
        let mut entry = admin_entry(now, "remove-authenticator", name, "removed", uid);
        entry.detail = Some(format!("authenticator {label}"));
        self.apply_admin(
            entry,
            move |tx| {
                // Decided again in the transaction: the last one stays.
                let left = tx.user(&owned)?.map_or(0, |u| u.authenticators.len());
                if left > 1 {
                    tx.remove_authenticator(&owned, &gone)?;
                }
                Ok(())
            },
            format!("authenticator {label} of {name} removed"),
        )
    }
}

/// How far beyond a token's look-ahead (`hotp_window`) `twofold resync` looks for its two
/// codes.
pub(super) const RESYNC_RANGE: u64 = 100;

impl Engine {
    /// `twofold resync`: the first counter within [`RESYNC_RANGE`] beyond the look-ahead of an HOTP
    /// authenticator (the one named, or any) that makes `codes[0]`, whose successor makes
    /// `codes[1]`; both are spent, and the token's next code is the one after.
    pub(super) fn resync(
        &self,
        name: &str,
        label: Option<&str>,
        codes: [&SecretText; 2],
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let user = match self.store.read(|tx| tx.user(name)) {
            Ok(Some(u)) => u,
            Ok(None) => {
                return ResponseBody::NotEnrolled {
                    required: false,
                    reason: None,
                }
            }
            Err(e) => return self.store_failed("resync", name, &e),
        };
        let tokens: Vec<&Authenticator> = user
            .authenticators
            .iter()
            .filter(|a| a.kind == OtpKind::Hotp && label.is_none_or(|l| l == a.label))
            .collect();
        if tokens.is_empty() {
            let which = label.map_or(String::new(), |l| format!(" named {l}"));
            return error(
                ErrorKind::BadRequest,
                format!("{name} has no counter-based (HOTP) authenticator{which}"),
            );
        }
        let range = u32::try_from(RESYNC_RANGE)
            .unwrap_or(u32::MAX)
            .saturating_add(self.config().hotp_window);
        let found = tokens.iter().find_map(|a| {
            let next = u64::try_from(a.last_step.saturating_add(1)).unwrap_or(0);
            let digits = a.params.digits;
            let [one, two] = codes.map(|c| otp::normalize_code(c.expose(), digits));
            let (one, two) = (one?, two?);
            let at = otp::matching_counter(&a.secret, &a.params, &one, next, range)?;
            let following = otp::matching_counter(&a.secret, &a.params, &two, at + 1, 1)?;
            Some((a.label.clone(), following))
        });
        let Some((found_label, last)) = found else {
            return error(
                ErrorKind::BadRequest,
                format!(
                    "the two codes are not consecutive codes of {name}'s token within the next {RESYNC_RANGE}; press the button twice and give the two codes in order"
                ),
            );
        };
        let mut entry = admin_entry(now, "resync", name, "resynchronised", uid);
        entry.detail = Some(format!(
            "authenticator {found_label}: next counter {}",
            last + 1
        ));
        let owned = name.to_string();
        let step = i64::try_from(last).unwrap_or(i64::MAX);
        self.apply_admin(
            entry,
            move |tx| tx.advance_step(&owned, &found_label, step, now).map(|_| ()),
            format!(
                "{name}'s token is back in step: its next code is counter {}",
                last + 1
            ),
        )
    }
}

/// An authenticator's parameters for the audit trail and the administrator (never its key).
pub(super) fn describe(a: &Authenticator) -> String {
    match a.kind {
        OtpKind::Totp => format!(
            "{} {} digits {} s window {}",
            a.params.algorithm,
            a.params.digits,
            a.params.period,
            a.window.map_or("default".into(), |w| format!("±{w}"))
        ),
        OtpKind::Hotp => format!(
            "HOTP {} {} digits next counter {}",
            a.params.algorithm,
            a.params.digits,
            a.last_step.saturating_add(1)
        ),
    }
}
