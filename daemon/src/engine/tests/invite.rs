//! Enrollment at the login prompt and helpdesk codes, through the engine. Accounts are real
//! ones every Debian system has (`daemon`, `bin`, `sys`), none of them enrolled.

use super::*;

fn sshd() -> PamItems {
    PamItems {
        service: Some("sshd".into()),
        rhost: Some("192.0.2.9".into()),
        ..Default::default()
    }
}

fn preflight(e: &Engine, name: &str, can_enroll: bool, now: u64) -> ResponseBody {
    e.handle(
        0,
        RequestBody::Preflight {
            user: name.into(),
            pam: sshd(),
            grace_secs: 0,
            can_enroll,
            combined: false,
        },
        now,
    )
}

fn confirm(e: &Engine, name: &str, code: &str, now: u64) -> ResponseBody {
    e.handle(
        0,
        RequestBody::ConfirmLogin {
            user: name.into(),
            code: SecretText::new(code),
            pam: sshd(),
        },
        now,
    )
}

fn invite(e: &Engine, name: &str, for_secs: Option<u64>, replace: bool, now: u64) -> ResponseBody {
    e.handle(
        0,
        RequestBody::Invite {
            user: name.into(),
            for_secs,
            replace,
        },
        now,
    )
}

fn status(e: &Engine, name: &str, now: u64) -> UserStatus {
    match e.handle(
        0,
        RequestBody::Status {
            user: Some(name.into()),
        },
        now,
    ) {
        ResponseBody::Status(s) => s,
        other => panic!("{other:?}"),
    }
}

fn events(e: &Engine, name: &str) -> Vec<String> {
    let ResponseBody::Audit { entries, .. } = e.handle(
        0,
        RequestBody::Audit {
            user: Some(name.into()),
            since_secs: None,
        },
        T0 + 100_000,
    ) else {
        panic!("no audit")
    };
    entries
        .iter()
        .map(|a| format!("{} {}", a.event, a.outcome))
        .collect()
}

/// The offer's key, checked against the QR codes it carries.
fn offered(reply: ResponseBody) -> Secret {
    let ResponseBody::EnrollAtLogin(offer) = reply else {
        panic!("no enrollment offered: {reply:?}")
    };
    assert!(offer.info.label.ends_with(&format!(":{}", offer.info.user)));
    assert!(offer.qr.expose().contains('█') && offer.qr_inverted.expose().contains('█'));
    assert_ne!(offer.qr.expose(), offer.qr_inverted.expose());
    Secret::from_base32(offer.info.secret.expose()).unwrap()
}

#[test]
fn an_invited_account_enrolls_in_its_login() {
    let (e, _dir) = engine("unenrolled = \"deny\"");
    assert!(matches!(
        invite(&e, "daemon", None, false, T0),
        ResponseBody::Done { .. }
    ));
    assert_eq!(status(&e, "daemon", T0).invited_until, Some(T0 + 86_400));
    let shown = offered(preflight(&e, "daemon", true, T0));
    // Interrupted: still pending, still invited; the next login shows a new key, and the one
    // shown before no longer enrolls.
    let s = status(&e, "daemon", T0 + 1);
    assert!(s.pending && s.invited_until.is_some());
    let secret = offered(preflight(&e, "daemon", true, T0 + 60));
    assert_ne!(shown.as_bytes(), secret.as_bytes());
    let t = (T0 + 90) / 30;
    assert!(matches!(
        confirm(&e, "daemon", &code_at_step(&shown, t), T0 + 90),
        ResponseBody::Rejected
    ));
    assert!(matches!(
        confirm(&e, "daemon", "000000", T0 + 90),
        ResponseBody::Rejected
    ));
    let ResponseBody::EnrolledAtLogin { codes } =
        confirm(&e, "daemon", &code_at_step(&secret, t), T0 + 90)
    else {
        panic!("not enrolled")
    };
    assert_eq!(codes.len(), 12);
    let s = status(&e, "daemon", T0 + 91);
    assert!(s.enrolled && !s.pending && s.invited_until.is_none());
    assert_eq!(
        s.failures, 0,
        "the right code clears the wrong ones' failures"
    );
    assert_eq!(
        s.last_success,
        Some(T0 + 90),
        "the first code opened a login"
    );
    // The first code is spent; the next one opens a login.
    assert!(matches!(
        verify(&e, "daemon", &code_at_step(&secret, t), T0 + 91),
        ResponseBody::Rejected
    ));
    assert!(matches!(
        verify(&e, "daemon", &code_at_step(&secret, t + 1), T0 + 120),
        ResponseBody::Accepted { .. }
    ));
    // Enrolled now: logins are asked for a code, not shown an enrollment.
    assert!(matches!(
        preflight(&e, "daemon", true, T0 + 150),
        ResponseBody::Prompt
    ));
    let trail = events(&e, "daemon");
    for want in [
        "invite issued",
        "enroll pending",
        "confirm rejected",
        "confirm enrolled",
        "login accepted",
        "invite used",
    ] {
        assert!(trail.iter().any(|t| t == want), "{want} in {trail:?}");
    }
}

#[test]
fn refusals_say_why_and_what_to_do() {
    let (e, _dir) = engine("unenrolled = \"deny\"");
    let reason = |reply| match reply {
        ResponseBody::NotEnrolled {
            required: true,
            reason: Some(r),
        } => r,
        other => panic!("{other:?}"),
    };
    let r = reason(preflight(&e, "daemon", true, T0));
    assert!(r.contains("twofold invite daemon"), "{r}");
    invite(&e, "daemon", Some(3600), false, T0);
    // A login that cannot show it (PAM_SILENT, noenroll): refused with the reason.
    let r = reason(preflight(&e, "daemon", false, T0 + 1));
    assert!(r.contains("cannot show the QR code"), "{r}");
    assert!(!status(&e, "daemon", T0 + 1).pending);
    // Expired.
    let r = reason(preflight(&e, "daemon", true, T0 + 3600));
    assert!(r.contains("expired"), "{r}");
    // The expiry goes on record once.
    e.housekeeping(T0 + 3700);
    e.housekeeping(T0 + 3800);
    let trail = events(&e, "daemon");
    assert_eq!(trail.iter().filter(|t| *t == "invite expired").count(), 1);
    // Where policy lets unenrolled accounts in, nothing is refused.
    let (e, _dir) = engine("");
    assert!(matches!(
        preflight(&e, "daemon", true, T0),
        ResponseBody::NotEnrolled {
            required: false,
            reason: None
        }
    ));
}

#[test]
fn wrong_first_codes_keep_it_pending_then_discard_it() {
    let (e, _dir) = engine("unenrolled = \"deny\"");
    invite(&e, "daemon", None, false, T0);
    let first = offered(preflight(&e, "daemon", true, T0));
    for i in 0..3 {
        assert!(matches!(
            confirm(&e, "daemon", "123456", T0 + i),
            ResponseBody::Rejected
        ));
    }
    let s = status(&e, "daemon", T0 + 5);
    assert!(s.pending && !s.enrolled && s.invited_until.is_some());
    assert_eq!(s.failures, 3, "wrong first codes count for the throttle");
    for i in 3..5 {
        confirm(&e, "daemon", "123456", T0 + i);
    }
    // The fifth discarded it: the next login shows a new key.
    assert!(!status(&e, "daemon", T0 + 6).pending);
    let second = offered(preflight(&e, "daemon", true, T0 + 10));
    assert_ne!(first.as_bytes(), second.as_bytes());
    // After five failures in a row the throttle waits 30 s, right code or not.
    let good = code_at_step(&second, (T0 + 40) / 30);
    assert!(matches!(
        confirm(&e, "daemon", &good, T0 + 11),
        ResponseBody::Throttled { .. }
    ));
    assert!(matches!(
        confirm(&e, "daemon", &good, T0 + 40),
        ResponseBody::EnrolledAtLogin { .. }
    ));
}

#[test]
fn a_revoked_or_uninvited_confirmation_enrolls_nothing() {
    let (e, _dir) = engine("unenrolled = \"deny\"");
    invite(&e, "daemon", None, false, T0);
    let secret = offered(preflight(&e, "daemon", true, T0));
    assert!(matches!(
        e.handle(
            0,
            RequestBody::InviteRevoke {
                user: "daemon".into()
            },
            T0 + 1
        ),
        ResponseBody::Done { .. }
    ));
    let code = code_at_step(&secret, (T0 + 2) / 30);
    assert!(matches!(
        confirm(&e, "daemon", &code, T0 + 2),
        ResponseBody::NotEnrolled {
            required: true,
            reason: Some(_)
        }
    ));
    assert!(!status(&e, "daemon", T0 + 3).enrolled);
    // A pending enrollment of `twofold enroll` cannot be finished at a login uninvited.
    let ResponseBody::Enrollment(info) = e.handle(
        0,
        RequestBody::Enroll {
            user: Some("bin".into()),
            force: false,
            code: None,
            params: None,
            authenticator: None,
        },
        T0,
    ) else {
        panic!()
    };
    let s = Secret::from_base32(info.secret.expose()).unwrap();
    assert!(matches!(
        confirm(&e, "bin", &code_at_step(&s, T0 / 30), T0),
        ResponseBody::NotEnrolled { .. }
    ));
    assert!(events(&e, "daemon").iter().any(|t| t == "invite revoked"));
}

#[test]
fn one_first_code_enrolls_once_under_concurrency() {
    let (e, _dir) = engine("unenrolled = \"deny\"");
    invite(&e, "daemon", None, false, T0);
    let secret = offered(preflight(&e, "daemon", true, T0));
    let code = code_at_step(&secret, T0 / 30);
    let enrolled = std::thread::scope(|s| {
        let runs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| confirm(&e, "daemon", &code, T0 + 1)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap())
            .filter(|r| matches!(r, ResponseBody::EnrolledAtLogin { .. }))
            .count()
    });
    assert_eq!(enrolled, 1);
}

#[test]
fn a_replacement_keeps_the_old_factor_until_confirmed() {
    let (e, _dir) = engine("");
    let old = enrolled(&e, "sys", T0);
    assert!(matches!(
        invite(&e, "sys", None, false, T0),
        ResponseBody::Error {
            kind: ErrorKind::AlreadyEnrolled,
            ..
        }
    ));
    invite(&e, "sys", None, true, T0);
    // Where no enrollment can be shown, the login asks for the old code as always.
    assert!(matches!(
        preflight(&e, "sys", false, T0 + 30),
        ResponseBody::Prompt
    ));
    let new = offered(preflight(&e, "sys", true, T0 + 30));
    // The old phone turned up: its code still opens the login, and the offer stays.
    assert!(matches!(
        confirm(&e, "sys", &code_at_step(&old, (T0 + 30) / 30), T0 + 30),
        ResponseBody::Accepted {
            method: Method::Totp,
            ..
        }
    ));
    assert!(status(&e, "sys", T0 + 31).pending);
    let ResponseBody::EnrolledAtLogin { .. } =
        confirm(&e, "sys", &code_at_step(&new, (T0 + 60) / 30), T0 + 60)
    else {
        panic!("not replaced")
    };
    assert!(matches!(
        verify(&e, "sys", &code_at_step(&old, (T0 + 90) / 30), T0 + 90),
        ResponseBody::Rejected
    ));
    assert!(matches!(
        verify(&e, "sys", &code_at_step(&new, (T0 + 90) / 30), T0 + 90),
        ResponseBody::Accepted { .. }
    ));
}

#[test]
fn the_modes() {
    // always: no invitation needed.
    let (e, _dir) = engine("enroll_at_login = \"always\"");
    offered(preflight(&e, "daemon", true, T0));
    // never: an invitation changes nothing at the login.
    let (e, _dir) = engine("enroll_at_login = \"never\"\nunenrolled = \"deny\"");
    let ResponseBody::Done { message } = invite(&e, "daemon", None, false, T0) else {
        panic!()
    };
    assert!(message.contains("never"), "{message}");
    assert!(matches!(
        preflight(&e, "daemon", true, T0),
        ResponseBody::NotEnrolled {
            required: true,
            reason: None
        }
    ));
}

#[test]
fn invitations_are_root_s_and_for_accounts() {
    let (e, _dir) = engine("");
    for bad in [Some(9), Some(31 * 86_400)] {
        assert!(matches!(
            invite(&e, "daemon", bad, false, T0),
            ResponseBody::Error {
                kind: ErrorKind::BadRequest,
                ..
            }
        ));
    }
    assert!(matches!(
        invite(&e, "no-such-account-here", None, false, T0),
        ResponseBody::Error {
            kind: ErrorKind::NoSuchUser,
            ..
        }
    ));
    let asked_by_nobody = e.handle(
        65534,
        RequestBody::Invite {
            user: "nobody".into(),
            for_secs: None,
            replace: false,
        },
        T0,
    );
    assert!(matches!(
        asked_by_nobody,
        ResponseBody::Error {
            kind: ErrorKind::PermissionDenied,
            ..
        }
    ));
    invite(&e, "daemon", Some(600), false, T0);
    let ResponseBody::Invitations { invitations } =
        e.handle(0, RequestBody::InviteList {}, T0 + 601)
    else {
        panic!()
    };
    assert_eq!(invitations.len(), 1);
    assert!(invitations[0].expired && invitations[0].user == "daemon");
    // `list` shows invited accounts.
    invite(&e, "bin", None, false, T0);
    let ResponseBody::Users { users } = e.handle(0, RequestBody::List {}, T0 + 1) else {
        panic!()
    };
    assert!(users
        .iter()
        .any(|u| u.user == "bin" && u.invited_until.is_some()));
}

fn bypass(e: &Engine, name: &str, for_secs: Option<u64>, uses: Option<u32>) -> ResponseBody {
    e.handle(
        0,
        RequestBody::Bypass {
            user: name.into(),
            for_secs,
            uses,
        },
        T0,
    )
}

#[test]
fn a_helpdesk_code_logs_in_as_often_as_issued_while_it_lasts() {
    let (e, _dir) = engine("");
    assert!(matches!(
        bypass(&e, "daemon", None, None),
        ResponseBody::Error { .. }
    ));
    enrolled(&e, "daemon", T0);
    let ResponseBody::BypassCode {
        code,
        expires_at,
        uses,
        ..
    } = bypass(&e, "daemon", None, None)
    else {
        panic!()
    };
    assert_eq!((expires_at, uses), (T0 + 3600, 1));
    assert!(status(&e, "daemon", T0 + 1).bypass_until.is_some());
    assert!(matches!(
        verify(&e, "daemon", code.expose(), T0 + 10),
        ResponseBody::Accepted {
            method: Method::Bypass,
            backup_codes_left: None
        }
    ));
    assert!(matches!(
        verify(&e, "daemon", code.expose(), T0 + 11),
        ResponseBody::Rejected
    ));
    let s = status(&e, "daemon", T0 + 12);
    assert!(s.enrolled && s.backup_codes_left == 12 && s.bypass_until.is_none());
    // Two uses; expiry.
    let ResponseBody::BypassCode { code, .. } = bypass(&e, "daemon", Some(600), Some(2)) else {
        panic!()
    };
    let spaced = code.expose().replace('-', " ");
    for t in [T0 + 1, T0 + 2] {
        assert!(matches!(
            verify(&e, "daemon", &spaced, t),
            ResponseBody::Accepted { .. }
        ));
    }
    assert!(matches!(
        verify(&e, "daemon", &spaced, T0 + 3),
        ResponseBody::Rejected
    ));
    let ResponseBody::BypassCode { code, .. } = bypass(&e, "daemon", Some(600), None) else {
        panic!()
    };
    assert!(matches!(
        verify(&e, "daemon", code.expose(), T0 + 600),
        ResponseBody::Rejected
    ));
    // Revoked; a new one replaces the old.
    let ResponseBody::BypassCode { code: a, .. } = bypass(&e, "daemon", None, None) else {
        panic!()
    };
    let ResponseBody::BypassCode { code: b, .. } = bypass(&e, "daemon", None, None) else {
        panic!()
    };
    assert!(matches!(
        verify(&e, "daemon", a.expose(), T0 + 5),
        ResponseBody::Rejected
    ));
    e.handle(
        0,
        RequestBody::BypassRevoke {
            user: "daemon".into(),
        },
        T0 + 6,
    );
    assert!(matches!(
        verify(&e, "daemon", b.expose(), T0 + 7),
        ResponseBody::Rejected
    ));
    let trail = events(&e, "daemon");
    for want in ["bypass issued", "bypass used", "bypass revoked"] {
        assert!(trail.iter().any(|t| t == want), "{want} in {trail:?}");
    }
}

#[test]
fn a_helpdesk_code_is_used_once_under_concurrency() {
    let (e, _dir) = engine("");
    enrolled(&e, "daemon", T0);
    let ResponseBody::BypassCode { code, .. } = bypass(&e, "daemon", None, None) else {
        panic!()
    };
    let accepted = std::thread::scope(|s| {
        let runs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| verify(&e, "daemon", code.expose(), T0 + 1)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap())
            .filter(|r| matches!(r, ResponseBody::Accepted { .. }))
            .count()
    });
    assert_eq!(accepted, 1);
}

/// A process running as the account itself (a stolen shell) is never shown the key its next
/// login will enroll, and cannot confirm an enrollment at the prompt.
#[test]
fn only_root_s_pam_services_enroll_at_the_prompt() {
    let (e, _dir) = engine("unenrolled = \"deny\"");
    let daemon_uid = crate::users::uid_of("daemon").unwrap();
    invite(&e, "daemon", None, false, T0);
    let own = e.handle(
        daemon_uid,
        RequestBody::Preflight {
            user: "daemon".into(),
            pam: sshd(),
            grace_secs: 0,
            can_enroll: true,
            combined: false,
        },
        T0,
    );
    assert!(
        matches!(&own, ResponseBody::NotEnrolled { required: true, reason: Some(r) } if r.contains("cannot show")),
        "{own:?}"
    );
    assert!(!status(&e, "daemon", T0).pending);
    let asked = e.handle(
        daemon_uid,
        RequestBody::ConfirmLogin {
            user: "daemon".into(),
            code: SecretText::new("123456"),
            pam: sshd(),
        },
        T0,
    );
    assert!(matches!(
        asked,
        ResponseBody::Error {
            kind: ErrorKind::PermissionDenied,
            ..
        }
    ));
    // Nor does an enrollment it started itself (`twofold enroll`) survive the next offer.
    let ResponseBody::Enrollment(planted) = e.handle(
        daemon_uid,
        RequestBody::Enroll {
            user: None,
            force: false,
            code: None,
            params: None,
            authenticator: None,
        },
        T0,
    ) else {
        panic!()
    };
    let planted = Secret::from_base32(planted.secret.expose()).unwrap();
    let shown = offered(preflight(&e, "daemon", true, T0 + 1));
    assert_ne!(planted.as_bytes(), shown.as_bytes());
    // A revoked invitation takes the key it showed along.
    e.handle(
        0,
        RequestBody::InviteRevoke {
            user: "daemon".into(),
        },
        T0 + 2,
    );
    assert!(!status(&e, "daemon", T0 + 2).pending);
}

/// A one-answer login (forward_pass) learns the length of the code at the end of the answer,
/// the same for names without an enrollment; it never shows an enrollment, invited or not.
#[test]
fn a_one_answer_preflight_says_how_long_the_code_is() {
    let (e, _dir) = engine("unenrolled = \"deny\"");
    let one_answer = |name: &str| {
        e.handle(
            0,
            RequestBody::Preflight {
                user: name.into(),
                pam: sshd(),
                grace_secs: 0,
                can_enroll: true,
                combined: true,
            },
            T0,
        )
    };
    enrolled(&e, "bin", T0);
    let eight = TotpParams {
        digits: 8,
        ..TotpParams::default()
    };
    let ResponseBody::Enrollment(info) = e.handle(
        0,
        RequestBody::Enroll {
            user: Some("sys".into()),
            force: false,
            code: None,
            params: Some(eight),
            authenticator: None,
        },
        T0,
    ) else {
        panic!("enroll failed")
    };
    let secret = Secret::from_base32(info.secret.expose()).unwrap();
    let first = otp::totp_at(&secret, &eight, T0);
    assert!(matches!(
        e.handle(
            0,
            RequestBody::Confirm {
                user: Some("sys".into()),
                code: SecretText::new(first),
            },
            T0,
        ),
        ResponseBody::BackupCodes { .. }
    ));
    assert!(matches!(
        one_answer("bin"),
        ResponseBody::PromptCombined { digits: 6 }
    ));
    assert!(matches!(
        one_answer("sys"),
        ResponseBody::PromptCombined { digits: 8 }
    ));
    assert!(matches!(
        one_answer("no-such-account-anywhere"),
        ResponseBody::PromptCombined { digits: 6 }
    ));
    assert!(matches!(
        invite(&e, "daemon", None, false, T0),
        ResponseBody::Done { .. }
    ));
    assert!(
        matches!(
            one_answer("daemon"),
            ResponseBody::NotEnrolled { required: true, .. }
        ),
        "no enrollment in a one-answer login"
    );
    // The same login asking one question for the code alone is offered the enrollment.
    assert!(matches!(
        preflight(&e, "daemon", true, T0),
        ResponseBody::EnrollAtLogin(_)
    ));
}
