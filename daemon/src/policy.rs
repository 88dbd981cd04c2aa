//! Who may do what: one pure function of the caller, the target and the operation (ARCHITECTURE.md §2).

/// The operations a client can ask for, without their arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Ping,
    Preflight,
    Verify,
    Enroll,
    Confirm,
    Status,
    BackupCodes,
    Disable,
    List,
    Unlock,
    Policy,
    /// The Prometheus text of what has been decided (root).
    Metrics,
    Audit,
    Import,
    EmailSet,
    EmailConfirm,
    EmailRemove,
    SendEmailCode,
    SealRekey,
    /// The first code of an enrollment made in the login's conversation.
    ConfirmLogin,
    Invite,
    InviteList,
    InviteRevoke,
    Bypass,
    BypassRevoke,
    Authenticators,
    RemoveAuthenticator,
    Resync,
}

impl Operation {
    /// A step of a login, asked by a PAM service.
    pub fn is_login(self) -> bool {
        matches!(
            self,
            Operation::Preflight | Operation::Verify | Operation::ConfirmLogin
        )
    }

    /// Whether the operation changes an account's factors or mails a code: what an
    /// unprivileged caller may ask for only a few times a minute.
    pub fn changes(self) -> bool {
        use Operation::*;
        matches!(
            self,
            Enroll
                | Confirm
                | RemoveAuthenticator
                | BackupCodes
                | Disable
                | EmailSet
                | EmailConfirm
                | EmailRemove
                | SendEmailCode
        )
    }
}

/// The caller as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// Root, or the uid twofoldd itself runs as (which can read the database anyway).
    pub admin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed, but replacing or removing an active enrollment first needs a current code.
    AllowWithCode,
    Deny(&'static str),
}

/// `target_uid`: the uid of the account the request is about (`None`: no such account, or no
/// target). `self_enroll`: the config switch that lets users enroll themselves.
pub fn authorize(
    caller: Caller,
    op: Operation,
    target_uid: Option<u32>,
    self_enroll: bool,
) -> Decision {
    use Operation::*;
    if caller.admin {
        return Decision::Allow;
    }
    match op {
        Ping => return Decision::Allow,
        List | Unlock | Policy | Metrics | Audit | Import | SealRekey | Invite | InviteList
        | InviteRevoke | Bypass | BypassRevoke | Resync => {
            return Decision::Deny("only root may do this")
        }
        _ => {}
    }
    if target_uid != Some(caller.uid) {
        return Decision::Deny("you may only act on your own account");
    }
    match op {
        Preflight | Verify | Status | Authenticators | SendEmailCode => Decision::Allow,
        // Enrollment at the login prompt is root's PAM services' (see engine/invite.rs).
        ConfirmLogin => Decision::Deny("only root's PAM services enroll at the login prompt"),
        // Registering an address is enrolling a second factor.
        Enroll | Confirm | EmailSet | EmailConfirm if !self_enroll => {
            Decision::Deny("self-enrollment is switched off; ask an administrator")
        }
        Confirm | EmailConfirm => Decision::Allow,
        // Changing where second-factor codes go is changing the second factor.
        EmailSet | EmailRemove => Decision::AllowWithCode,
        Enroll | BackupCodes | Disable | RemoveAuthenticator => Decision::AllowWithCode,
        Ping | List | Unlock | Policy | Metrics | Audit | Import | SealRekey | Invite
        | InviteList | InviteRevoke | Bypass | BypassRevoke | Resync => {
            Decision::Deny("only root may do this")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Decision::*;
    use super::Operation::*;
    use super::*;

    const ROOT: Caller = Caller {
        uid: 0,
        admin: true,
    };
    const ALICE: Caller = Caller {
        uid: 1000,
        admin: false,
    };
    const ALICE_UID: Option<u32> = Some(1000);
    const BOB_UID: Option<u32> = Some(1001);
    const NOBODY: Option<u32> = None;

    #[test]
    fn policy_table() {
        let deny_root = Deny("only root may do this");
        let deny_other = Deny("you may only act on your own account");
        let deny_self_enroll = Deny("self-enrollment is switched off; ask an administrator");
        #[rustfmt::skip]
        let table: &[(Caller, Operation, Option<u32>, bool, Decision)] = &[
            // root: everything, for anyone, even with self-enrollment off
            (ROOT, Ping, NOBODY, true, Allow),
            (ROOT, Verify, BOB_UID, true, Allow),
            (ROOT, Enroll, BOB_UID, false, Allow),
            (ROOT, Enroll, NOBODY, false, Allow),
            (ROOT, Disable, BOB_UID, true, Allow),
            (ROOT, BackupCodes, BOB_UID, true, Allow),
            (ROOT, List, NOBODY, true, Allow),
            (ROOT, Unlock, BOB_UID, true, Allow),
            // a user, on their own account
            (ALICE, Ping, NOBODY, true, Allow),
            (ALICE, Preflight, ALICE_UID, true, Allow),
            (ALICE, Verify, ALICE_UID, true, Allow),
            (ALICE, Status, ALICE_UID, true, Allow),
            (ALICE, Enroll, ALICE_UID, true, AllowWithCode),
            (ALICE, Confirm, ALICE_UID, true, Allow),
            (ALICE, BackupCodes, ALICE_UID, true, AllowWithCode),
            (ALICE, Disable, ALICE_UID, true, AllowWithCode),
            (ALICE, Enroll, ALICE_UID, false, deny_self_enroll),
            (ALICE, Confirm, ALICE_UID, false, deny_self_enroll),
            (ALICE, Status, ALICE_UID, false, Allow),
            // a user, on someone else's account or an unknown one
            (ALICE, Preflight, BOB_UID, true, deny_other),
            (ALICE, Verify, BOB_UID, true, deny_other),
            (ALICE, Status, BOB_UID, true, deny_other),
            (ALICE, Enroll, BOB_UID, true, deny_other),
            (ALICE, Confirm, BOB_UID, true, deny_other),
            (ALICE, BackupCodes, BOB_UID, true, deny_other),
            (ALICE, Disable, BOB_UID, true, deny_other),
            (ALICE, Verify, NOBODY, true, deny_other),
            (ALICE, Enroll, NOBODY, true, deny_other),
            // admin-only operations
            (ALICE, List, NOBODY, true, deny_root),
            (ALICE, Policy, NOBODY, true, deny_root),
            (ALICE, Audit, ALICE_UID, true, deny_root),
            (ALICE, Audit, NOBODY, true, deny_root),
            (ALICE, Import, ALICE_UID, true, deny_root),
            (ROOT, Import, BOB_UID, true, Allow),
            (ROOT, Audit, BOB_UID, true, Allow),
            (ROOT, Policy, NOBODY, true, Allow),
            (ALICE, Unlock, ALICE_UID, true, deny_root),
            (ALICE, Unlock, BOB_UID, true, deny_root),
            // email codes
            (ROOT, EmailSet, BOB_UID, true, Allow),
            (ROOT, EmailRemove, BOB_UID, false, Allow),
            (ROOT, SendEmailCode, BOB_UID, true, Allow),
            (ALICE, SendEmailCode, ALICE_UID, true, Allow),
            (ALICE, EmailSet, ALICE_UID, true, AllowWithCode),
            (ALICE, EmailSet, ALICE_UID, false, deny_self_enroll),
            (ALICE, EmailConfirm, ALICE_UID, false, deny_self_enroll),
            (ALICE, EmailRemove, ALICE_UID, false, AllowWithCode),
            (ALICE, SendEmailCode, ALICE_UID, false, Allow),
            (ALICE, EmailConfirm, ALICE_UID, true, Allow),
            (ALICE, EmailRemove, ALICE_UID, true, AllowWithCode),
            (ALICE, SendEmailCode, BOB_UID, true, deny_other),
            (ALICE, SendEmailCode, NOBODY, true, deny_other),
            (ALICE, EmailSet, BOB_UID, true, deny_other),
            (ALICE, EmailConfirm, BOB_UID, true, deny_other),
            (ALICE, EmailRemove, BOB_UID, true, deny_other),
            // enrollment at the login prompt, invitations, helpdesk codes
            (
                ALICE,
                ConfirmLogin,
                ALICE_UID,
                true,
                Deny("only root's PAM services enroll at the login prompt"),
            ),
            (ALICE, ConfirmLogin, BOB_UID, true, deny_other),
            (ROOT, ConfirmLogin, BOB_UID, true, Allow),
            (ROOT, Invite, BOB_UID, true, Allow),
            (ROOT, Bypass, BOB_UID, true, Allow),
            (ALICE, Invite, ALICE_UID, true, deny_root),
            (ALICE, InviteList, NOBODY, true, deny_root),
            (ALICE, InviteRevoke, ALICE_UID, true, deny_root),
            (ALICE, Bypass, ALICE_UID, true, deny_root),
            (ALICE, BypassRevoke, ALICE_UID, true, deny_root),
            (ALICE, Resync, ALICE_UID, true, deny_root),
            // authenticators
            (ALICE, Authenticators, ALICE_UID, false, Allow),
            (ALICE, Authenticators, BOB_UID, true, deny_other),
            (ALICE, RemoveAuthenticator, ALICE_UID, false, AllowWithCode),
            (ALICE, RemoveAuthenticator, BOB_UID, true, deny_other),
            (ROOT, RemoveAuthenticator, BOB_UID, true, Allow),
        ];
        for (caller, op, target, self_enroll, want) in table {
            assert_eq!(
                authorize(*caller, *op, *target, *self_enroll),
                *want,
                "{caller:?} {op:?} {target:?} {self_enroll}"
            );
        }
    }

    #[test]
    fn daemon_uid_counts_as_admin() {
        let daemon_user = Caller {
            uid: 4242,
            admin: true,
        };
        assert_eq!(authorize(daemon_user, Unlock, BOB_UID, true), Allow);
    }
}
