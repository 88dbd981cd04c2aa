//! Enrollment at the login prompt (ARCHITECTURE.md §12): root's invitations, the enrollment a
//! preflight offers to an account without a factor, and its first code, checked under the
//! login's throttle.

use super::*;
use crate::clock::format_time;
use crate::config::EnrollAtLogin;
use crate::qr::{self, Polarity};
use crate::store::Invitation;
use twofold_shared::wire::{InvitationInfo, LoginEnrollment};

/// How long an invitation is open unless `--for` says otherwise, and at most.
pub(super) const DEFAULT_INVITE_SECS: u64 = 86_400;
pub(super) const MAX_INVITE_SECS: u64 = 30 * 86_400;
/// How long an expired invitation is kept, so that a login can say why it is refused.
pub(super) const EXPIRED_KEPT_SECS: u64 = 30 * 86_400;

/// What a login may do about enrolling, by `enroll_at_login` and the account's invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AtLogin {
    /// Show the enrollment in the conversation and ask for its first code.
    Offer,
    /// Not here; if policy refuses the account, this is why.
    Refuse(Why),
    /// Nothing to do with enrollment: the login goes on as without this feature.
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    NotInvited,
    Expired,
    /// Invited (or `always`), but this login cannot show a QR code (PAM_SILENT, `noenroll`).
    CannotShow,
}

impl Why {
    /// The refusal the user reads: the reason and the administrator's next step.
    pub(super) fn text(self, name: &str) -> String {
        match self {
            Why::NotInvited => format!(
                "Two-factor enrollment required: run 'twofold enroll', or ask an \
                 administrator to run 'twofold invite {name}' to enroll at login."
            ),
            Why::Expired => format!(
                "Two-factor enrollment required; the invitation to enroll expired: ask an \
                 administrator to run 'twofold invite {name}' again."
            ),
            Why::CannotShow => "Two-factor enrollment required, but this login cannot show \
                 the QR code: log in by SSH or at the console to enroll, or ask an \
                 administrator."
                .to_string(),
        }
    }
}

/// The rule, as a pure function. `enrolled`: the account has an app already (then only a
/// `--replace` invitation offers a new one; its old factor keeps working).
pub(super) fn at_login(
    mode: EnrollAtLogin,
    invitation: Option<&Invitation>,
    enrolled: bool,
    can_enroll: bool,
    now: u64,
) -> AtLogin {
    let live = invitation.filter(|i| now < i.expires_at);
    if mode == EnrollAtLogin::Never {
        return AtLogin::Pass;
    }
    if enrolled {
        return match live {
            Some(i) if i.replace && can_enroll => AtLogin::Offer,
            _ => AtLogin::Pass,
        };
    }
    let may = mode == EnrollAtLogin::Always || live.is_some();
    match (may, can_enroll, invitation) {
        (true, true, _) => AtLogin::Offer,
        (true, false, _) => AtLogin::Refuse(Why::CannotShow),
        (false, _, Some(_)) => AtLogin::Refuse(Why::Expired),
        (false, _, None) => AtLogin::Refuse(Why::NotInvited),
    }
}

/// May a first code given now enroll `name` (checked again inside the activating transaction).
fn may_enroll(
    mode: EnrollAtLogin,
    invitation: Option<&Invitation>,
    enrolled: bool,
    now: u64,
) -> bool {
    at_login(mode, invitation, enrolled, true, now) == AtLogin::Offer
}

impl Engine {
    /// `twofold invite NAME [--for] [--replace]`.
    pub(super) fn invite(
        &self,
        name: &str,
        account: Option<u32>,
        for_secs: Option<u64>,
        replace: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        if account.is_none() {
            return error(
                ErrorKind::NoSuchUser,
                format!("{name} is not an account on this host"),
            );
        }
        let secs = for_secs.unwrap_or(DEFAULT_INVITE_SECS);
        if !(10..=MAX_INVITE_SECS).contains(&secs) {
            return error(
                ErrorKind::BadRequest,
                "an invitation lasts from 10 seconds to 30 days (--for)",
            );
        }
        let enrolled = match self.store.read(|tx| Ok(tx.user(name)?.is_some())) {
            Ok(e) => e,
            Err(e) => return self.store_failed("invite", name, &e),
        };
        if enrolled && !replace {
            return error(
                ErrorKind::AlreadyEnrolled,
                format!(
                    "{name} is already enrolled; 'twofold invite {name} --replace' lets them \
                     enroll a new authenticator at their next login (the current one keeps \
                     working until then)"
                ),
            );
        }
        let invitation = Invitation {
            created_at: now,
            expires_at: now + secs,
            replace: enrolled,
            expiry_noted: false,
        };
        let mut entry = admin_entry(now, "invite", name, "issued", uid);
        entry.detail = Some(format!(
            "until {}{}",
            format_time(invitation.expires_at),
            if enrolled {
                "; replaces the enrollment once the new one is confirmed"
            } else {
                ""
            }
        ));
        let mut message = format!(
            "{name} may enroll at the login prompt until {}",
            format_time(invitation.expires_at)
        );
        if self.config().enroll_at_login == EnrollAtLogin::Never {
            message.push_str(
                " (but enroll_at_login = \"never\" in twofold.toml: no login offers it; set \
                 \"invited\" and reload)",
            );
        }
        let owned = name.to_string();
        // A key shown at an earlier login of this account is not shown again.
        self.apply_admin(
            entry,
            move |tx| {
                tx.delete_pending(&owned)?;
                tx.put_invitation(&owned, &invitation)
            },
            message,
        )
    }

    pub(super) fn invite_list(&self, now: u64) -> ResponseBody {
        match self.store.read(|tx| tx.invitations()) {
            Ok(all) => ResponseBody::Invitations {
                invitations: all
                    .into_iter()
                    .map(|(user, i)| InvitationInfo {
                        user,
                        created_at: i.created_at,
                        expires_at: i.expires_at,
                        replace: i.replace,
                        expired: now >= i.expires_at,
                    })
                    .collect(),
            },
            Err(e) => self.store_failed("invite list", "-", &e),
        }
    }

    pub(super) fn invite_revoke(&self, name: &str, uid: u32, now: u64) -> ResponseBody {
        match self.store.read(|tx| tx.invitation(name)) {
            Ok(Some(_)) => {}
            Ok(None) => return error(ErrorKind::BadRequest, format!("{name} has no invitation")),
            Err(e) => return self.store_failed("invite revoke", name, &e),
        }
        let owned = name.to_string();
        self.apply_admin(
            admin_entry(now, "invite", name, "revoked", uid),
            move |tx| {
                // The key it showed, if any, goes with it.
                tx.delete_pending(&owned)?;
                tx.delete_invitation(&owned).map(|_| ())
            },
            format!("{name}'s invitation revoked"),
        )
    }

    /// Housekeeping: each expired invitation is put on record once, and forgotten after
    /// [`EXPIRED_KEPT_SECS`]; expired helpdesk codes are forgotten.
    pub(super) fn expire_invitations(&self, now: u64) -> Result<usize, StoreError> {
        self.store.write(move |tx| {
            let mut noted = 0;
            for (name, i) in tx.invitations()? {
                // Read again by name (under the user's lock on PostgreSQL): another host's
                // housekeeping may have put this expiry on record meanwhile.
                let unnoted = i.expires_at <= now
                    && tx
                        .invitation(&name)?
                        .is_some_and(|i| i.expires_at <= now && !i.expiry_noted);
                if unnoted {
                    tx.note_invitation_expired(&name)?;
                    let mut entry = admin_entry(now, "invite", &name, "expired", 0);
                    entry.caller_uid = None;
                    tx.audit(&entry)?;
                    noted += 1;
                }
            }
            tx.prune_invitations(now.saturating_sub(EXPIRED_KEPT_SECS))?;
            tx.prune_bypass(now)?;
            Ok(noted)
        })
    }

    /// Preflight of an account without an app: the enrollment to show, the refusal with its
    /// reason, or `None` to go on as before. `reply`: what policy says of the account.
    pub(super) fn enrollment_at_login(
        &self,
        name: &str,
        pam: &PamItems,
        can_enroll: bool,
        reply: ResponseBody,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let mode = self.config().enroll_at_login;
        if mode == EnrollAtLogin::Never {
            return reply;
        }
        let invitation = match self.store.read(|tx| tx.invitation(name)) {
            Ok(i) => i,
            Err(e) => return self.store_failed("preflight", name, &e),
        };
        match (
            at_login(mode, invitation.as_ref(), false, can_enroll, now),
            reply,
        ) {
            // Policy could not be checked: that error, not an enrollment.
            (_, reply @ ResponseBody::Error { .. }) => reply,
            (AtLogin::Offer, _) => self.offer_enrollment(name, pam, uid, now),
            (AtLogin::Refuse(why), ResponseBody::NotEnrolled { required: true, .. }) => {
                ResponseBody::NotEnrolled {
                    required: true,
                    reason: Some(why.text(name)),
                }
            }
            (_, reply) => reply,
        }
    }

    /// Preflight of an enrolled account with a `--replace` invitation, for a login that can
    /// show an enrollment: the new one is offered (the old factor keeps working meanwhile).
    pub(super) fn replacement_at_login(
        &self,
        name: &str,
        pam: &PamItems,
        uid: u32,
        now: u64,
    ) -> Option<ResponseBody> {
        let mode = self.config().enroll_at_login;
        let invitation = self.store.read(|tx| tx.invitation(name)).ok()??;
        (at_login(mode, Some(&invitation), true, true, now) == AtLogin::Offer)
            .then(|| self.offer_enrollment(name, pam, uid, now))
    }

    /// The enrollment shown at the prompt: a new key each time, replacing any enrollment
    /// waiting for its first code. One waiting from before may have been made by a process
    /// running as the user (`twofold enroll` from a stolen shell), whose key that process
    /// knows; and a key shown once is not shown again.
    fn offer_enrollment(&self, name: &str, pam: &PamItems, uid: u32, now: u64) -> ResponseBody {
        let pending = match new_pending(TotpParams::default(), now) {
            Ok(p) => p,
            Err(reply) => return *reply,
        };
        let owned = name.to_string();
        let mut entry = pam_entry(now, "enroll", name, pam, uid);
        entry.outcome = "pending".into();
        entry.detail = Some("at the login prompt".into());
        let stored = pending.clone();
        if let Err(e) = self.store.write(move |tx| {
            tx.put_pending(&owned, &stored)?;
            tx.audit(&entry)
        }) {
            return self.store_failed("enroll at login", name, &e);
        }
        let info = self.enrollment_info(name, &pending);
        let uri = info.otpauth_uri.expose();
        let (Some(qr), Some(qr_inverted)) = (
            qr::text(uri, Polarity::Dark),
            qr::text(uri, Polarity::Light),
        ) else {
            return error(
                ErrorKind::Internal,
                "the otpauth URI does not fit a QR code",
            );
        };
        self.log.info(&format!(
            "enroll user={} service={} rhost={} caller_uid={uid} outcome=shown-at-login",
            audit::field(name),
            audit::opt(pam.service.as_deref()),
            audit::opt(pam.rhost.as_deref()),
        ));
        ResponseBody::EnrollAtLogin(LoginEnrollment {
            info,
            qr: SecretText::new(qr),
            qr_inverted: SecretText::new(qr_inverted),
        })
    }

    /// The first code typed at the login prompt. Right: the enrollment is active, the
    /// invitation used, the login accepted. Wrong: a failure under the throttle (and a
    /// failed confirmation); for a `--replace`, the answer is then checked as a login of
    /// the old factor.
    pub(super) fn confirm_at_login(
        &self,
        name: &str,
        code: &SecretText,
        pam: &PamItems,
        account: Option<u32>,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let cfg = self.config();
        if !cfg.enabled {
            return ResponseBody::Disabled;
        }
        let snapshot = self.store.read(|tx| {
            Ok((
                tx.user(name)?.is_some(),
                tx.pending(name)?,
                tx.invitation(name)?,
                tx.throttle(name)?,
            ))
        });
        let (enrolled, pending, invitation, state) = match snapshot {
            Ok(x) => x,
            Err(e) => return self.store_failed("confirm at login", name, &e),
        };
        let mode = cfg.enroll_at_login;
        let pending = pending.filter(|p| {
            now <= p.created_at.saturating_add(cfg.pending_ttl)
                && may_enroll(mode, invitation.as_ref(), enrolled, now)
        });
        let Some(pending) = pending else {
            if enrolled {
                return self.verify(name, code, pam, None, uid, now);
            }
            return ResponseBody::NotEnrolled {
                required: true,
                reason: Some(
                    "The enrollment can no longer be finished at this login (it timed out, or \
                     the invitation was revoked or expired): log in again."
                        .into(),
                ),
            };
        };
        let base = LoginBase {
            entry: pam_entry(now, "confirm", name, pam, uid),
            quiet: self.quiet.quiet(name, now),
        };
        if let Some(blocked) = gate_outcome(&cfg.throttle, state, now) {
            let _ = self.store.write(move |tx| record_login(tx, &base, blocked));
            return throttled_reply(blocked, now);
        }
        let step = otp::normalize_code(code.expose(), pending.params.digits).and_then(|c| {
            otp::matching_steps(
                &pending.secret,
                &pending.params,
                &c,
                pending.params.step(now),
                cfg.window,
            )
            .into_iter()
            .max()
        });
        match step {
            Some(step) => self.enroll_at_login_confirmed(name, pending, step, account, base, now),
            None if enrolled => self.verify(name, code, pam, None, uid, now),
            None => self.first_code_wrong(name, base, now),
        }
    }

    fn enroll_at_login_confirmed(
        &self,
        name: &str,
        pending: PendingRecord,
        step: u64,
        account: Option<u32>,
        base: LoginBase,
        now: u64,
    ) -> ResponseBody {
        let entry = |event: &str, outcome: &str, detail: &str| AuditEntry {
            event: event.into(),
            outcome: outcome.into(),
            detail: Some(detail.into()),
            ..base.entry.clone()
        };
        let mut entries = vec![
            entry("confirm", "enrolled", "at the login prompt"),
            AuditEntry {
                method: Some("totp".into()),
                ..entry("login", "accepted", "first code of the new enrollment")
            },
        ];
        let cfg = self.config();
        let mode = cfg.enroll_at_login;
        let invited = match self.store.read(|tx| tx.invitation(name)) {
            Ok(i) => i.is_some_and(|i| now < i.expires_at),
            Err(e) => return self.store_failed("confirm at login", name, &e),
        };
        if invited {
            entries.push(entry("invite", "used", "enrolled at the login prompt"));
        }
        let owned = name.to_string();
        let throttle = cfg.throttle;
        // Decided again in the transaction: the invitation may have been revoked, or the
        // throttle closed, since the snapshot.
        let still = move |tx: &dyn Tx| {
            let enrolled = tx.user(&owned)?.is_some();
            let ok = may_enroll(mode, tx.invitation(&owned)?.as_ref(), enrolled, now)
                && gate_outcome(&throttle, tx.throttle(&owned)?, now).is_none();
            if ok {
                tx.clear_throttle(&owned)?;
            }
            Ok(ok)
        };
        match self.activate_pending(name, pending, step, account, entries, true, still) {
            Ok(Some(codes)) => {
                self.log.info(&format!(
                    "confirm user={} service={} rhost={} caller_uid={} outcome=enrolled at=login invited={}",
                    audit::field(name),
                    audit::opt(base.entry.service.as_deref()),
                    audit::opt(base.entry.rhost.as_deref()),
                    base.entry.caller_uid.unwrap_or_default(),
                    if invited { "yes" } else { "no" }
                ));
                ResponseBody::EnrolledAtLogin { codes }
            }
            Ok(None) => ResponseBody::NotEnrolled {
                required: true,
                reason: Some(
                    "The enrollment changed meanwhile (the invitation was revoked, or another \
                     login finished it): log in again."
                        .into(),
                ),
            },
            Err(reply) => *reply,
        }
    }

    /// A wrong first code: a failure for the throttle and for the pending enrollment (the
    /// fifth discards it: the next login shows a new one, while the invitation is open).
    fn first_code_wrong(&self, name: &str, mut base: LoginBase, now: u64) -> ResponseBody {
        let owned = name.to_string();
        let cfg = self.config().throttle;
        let outcome = self.store.write(move |tx| {
            let state = tx.throttle(&owned)?;
            let outcome = match gate_outcome(&cfg, state, now) {
                Some(blocked) => blocked,
                None => fail_in_tx(tx, &owned, state, now, &cfg, Outcome::Wrong)?,
            };
            if matches!(outcome, Outcome::Wrong | Outcome::NowLocked) {
                match tx.pending(&owned)? {
                    Some(p) if p.failed_confirms + 1 >= MAX_FAILED_CONFIRMS => {
                        tx.delete_pending(&owned)?;
                        base.entry.detail = Some("pending enrollment discarded".into());
                    }
                    Some(_) => tx.count_failed_confirm(&owned)?,
                    None => {}
                }
            }
            record_login(tx, &base, outcome)?;
            Ok(outcome)
        });
        match outcome {
            Ok(outcome) => {
                self.log.warn(&format!(
                    "confirm user={} at=login outcome=rejected",
                    audit::field(name)
                ));
                throttled_reply(outcome, now)
            }
            Err(e) => self.store_failed("confirm at login", name, &e),
        }
    }
}

/// The reply to a refused first code.
fn throttled_reply(outcome: Outcome, now: u64) -> ResponseBody {
    match outcome {
        Outcome::Throttled { until } => ResponseBody::Throttled {
            retry_after_secs: until.saturating_sub(now).max(1),
        },
        Outcome::Locked => ResponseBody::Locked,
        _ => ResponseBody::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn invite(replace: bool, expires_at: u64) -> Invitation {
        Invitation {
            created_at: NOW - 10,
            expires_at,
            replace,
            expiry_noted: false,
        }
    }

    #[test]
    fn the_rule() {
        use AtLogin::*;
        use EnrollAtLogin::*;
        let open = invite(false, NOW + 60);
        let gone = invite(false, NOW);
        let swap = invite(true, NOW + 60);
        #[rustfmt::skip]
        let table: &[(EnrollAtLogin, Option<&Invitation>, bool, bool, AtLogin)] = &[
            (Invited, Some(&open), false, true, Offer),
            (Invited, Some(&open), false, false, Refuse(Why::CannotShow)),
            (Invited, None, false, true, Refuse(Why::NotInvited)),
            (Invited, Some(&gone), false, true, Refuse(Why::Expired)),
            (Always, None, false, true, Offer),
            (Always, None, false, false, Refuse(Why::CannotShow)),
            (Never, Some(&open), false, true, Pass),
            // enrolled: only a live --replace invitation, shown where it can be
            (Invited, Some(&open), true, true, Pass),
            (Invited, Some(&swap), true, true, Offer),
            (Invited, Some(&swap), true, false, Pass),
            (Always, None, true, true, Pass),
            (Never, Some(&swap), true, true, Pass),
            (Invited, Some(&invite(true, NOW)), true, true, Pass),
        ];
        for (mode, inv, enrolled, can, want) in table {
            assert_eq!(
                at_login(*mode, *inv, *enrolled, *can, NOW),
                *want,
                "{mode:?} {inv:?} {enrolled} {can}"
            );
        }
    }
}
