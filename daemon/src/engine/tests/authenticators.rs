//! Several named authenticators per account, through the engine: each with its own key and
//! high-water mark, one throttle, at most `max_authenticators`.

use super::*;

fn enroll_named(
    e: &Engine,
    uid: u32,
    user: Option<&str>,
    label: &str,
    force: bool,
    code: Option<&str>,
    now: u64,
) -> ResponseBody {
    e.handle(
        uid,
        RequestBody::Enroll {
            user: user.map(Into::into),
            force,
            code: code.map(SecretText::new),
            params: None,
            authenticator: Some(label.into()),
        },
        now,
    )
}

/// Adds `label` to `name` (as root) and confirms it with its code at `now`; its key.
fn add(e: &Engine, name: &str, label: &str, now: u64) -> Secret {
    let ResponseBody::Enrollment(info) = enroll_named(e, 0, Some(name), label, false, None, now)
    else {
        panic!("enroll {label} refused")
    };
    let secret = Secret::from_base32(info.secret.expose()).unwrap();
    let reply = e.handle(
        0,
        RequestBody::Confirm {
            user: Some(name.into()),
            code: SecretText::new(otp::totp_at(&secret, &TotpParams::default(), now)),
        },
        now,
    );
    assert!(
        matches!(&reply, ResponseBody::Done { message } if message.contains(label)),
        "{reply:?}"
    );
    secret
}

fn names(e: &Engine, name: &str) -> Vec<String> {
    match e.handle(
        0,
        RequestBody::Authenticators {
            user: Some(name.into()),
        },
        T0,
    ) {
        ResponseBody::Authenticators { authenticators, .. } => {
            authenticators.into_iter().map(|a| a.name).collect()
        }
        other => panic!("{other:?}"),
    }
}

fn remove(e: &Engine, name: &str, label: &str) -> ResponseBody {
    e.handle(
        0,
        RequestBody::RemoveAuthenticator {
            user: Some(name.into()),
            authenticator: label.into(),
            code: None,
        },
        T0 + 500,
    )
}

#[test]
fn a_code_from_either_authenticator_is_accepted_once_each() {
    let (e, _dir) = engine("");
    let phone = enrolled(&e, "two", T0);
    let tablet = add(&e, "two", "tablet", T0 + 1);
    assert_eq!(names(&e, "two"), ["default", "tablet"]);
    let t = T0 / 30;
    // Each authenticator's own mark: the tablet's confirming code (step t) is spent on the
    // tablet, the phone's step t+1 is still good.
    assert!(matches!(
        verify(&e, "two", &code_at_step(&tablet, t), T0 + 5),
        ResponseBody::Rejected
    ));
    assert!(matches!(
        verify(&e, "two", &code_at_step(&phone, t + 1), T0 + 30),
        ResponseBody::Accepted { .. }
    ));
    assert!(matches!(
        verify(&e, "two", &code_at_step(&tablet, t + 1), T0 + 31),
        ResponseBody::Accepted { .. }
    ));
    for replay in [code_at_step(&phone, t + 1), code_at_step(&tablet, t + 1)] {
        assert!(matches!(
            verify(&e, "two", &replay, T0 + 32),
            ResponseBody::Rejected
        ));
    }
    let ResponseBody::Status(s) = e.handle(
        0,
        RequestBody::Status {
            user: Some("two".into()),
        },
        T0 + 33,
    ) else {
        panic!()
    };
    assert_eq!((s.authenticators, s.backup_codes_left), (2, 12));
    // The audit trail names the authenticator.
    let ResponseBody::Audit { entries, .. } = e.handle(
        0,
        RequestBody::Audit {
            user: Some("two".into()),
            since_secs: None,
        },
        T0 + 40,
    ) else {
        panic!()
    };
    assert!(entries
        .iter()
        .any(|a| a.outcome == "accepted" && a.detail.as_deref() == Some("authenticator tablet")));
}

#[test]
fn at_most_max_authenticators_and_names_are_checked() {
    let (e, _dir) = engine("max_authenticators = 3");
    enrolled(&e, "many", T0);
    add(&e, "many", "b", T0 + 1);
    add(&e, "many", "c", T0 + 2);
    let refused = enroll_named(&e, 0, Some("many"), "d", false, None, T0 + 3);
    assert!(
        matches!(&refused, ResponseBody::Error { kind: ErrorKind::BadRequest, message } if message.contains("max_authenticators")),
        "{refused:?}"
    );
    for bad in ["", "has space", "x/y", &"x".repeat(33)] {
        assert!(matches!(
            enroll_named(&e, 0, Some("many"), bad, false, None, T0),
            ResponseBody::Error {
                kind: ErrorKind::BadRequest,
                ..
            }
        ));
    }
    // An existing name only with --force.
    assert!(matches!(
        enroll_named(&e, 0, Some("many"), "b", false, None, T0 + 4),
        ResponseBody::Error {
            kind: ErrorKind::AlreadyEnrolled,
            ..
        }
    ));
    assert!(matches!(
        enroll_named(&e, 0, Some("many"), "b", true, None, T0 + 4),
        ResponseBody::Enrollment(_)
    ));
}

#[test]
fn a_removed_authenticator_s_codes_are_refused_and_the_last_stays() {
    let (e, _dir) = engine("");
    let phone = enrolled(&e, "rm", T0);
    let tablet = add(&e, "rm", "tablet", T0 + 1);
    assert!(matches!(
        remove(&e, "rm", "tablet"),
        ResponseBody::Done { .. }
    ));
    let t = (T0 + 600) / 30;
    assert!(matches!(
        verify(&e, "rm", &code_at_step(&tablet, t), T0 + 600),
        ResponseBody::Rejected
    ));
    assert!(matches!(
        verify(&e, "rm", &code_at_step(&phone, t), T0 + 601),
        ResponseBody::Accepted { .. }
    ));
    assert!(matches!(
        remove(&e, "rm", "default"),
        ResponseBody::Error {
            kind: ErrorKind::BadRequest,
            ..
        }
    ));
    assert!(matches!(
        remove(&e, "rm", "nonesuch"),
        ResponseBody::Error { .. }
    ));
}

/// A user adding or removing an authenticator of their own proves the factor they have.
#[test]
fn users_add_and_remove_their_own_with_a_current_code() {
    let (e, _dir) = engine("");
    let daemon_uid = crate::users::uid_of("daemon").unwrap();
    let phone = enrolled(&e, "daemon", T0);
    assert!(matches!(
        enroll_named(&e, daemon_uid, None, "tablet", false, None, T0 + 1),
        ResponseBody::Error {
            kind: ErrorKind::CodeRequired,
            ..
        }
    ));
    let now = T0 + 30;
    let current = code_at_step(&phone, now / 30);
    assert!(matches!(
        enroll_named(&e, daemon_uid, None, "tablet", false, Some(&current), now),
        ResponseBody::Enrollment(_)
    ));
    let asked = e.handle(
        daemon_uid,
        RequestBody::RemoveAuthenticator {
            user: None,
            authenticator: "default".into(),
            code: None,
        },
        now,
    );
    assert!(
        matches!(asked, ResponseBody::Error { .. }),
        "only one authenticator is confirmed: {asked:?}"
    );
}

#[test]
fn one_code_of_one_authenticator_is_accepted_once_under_concurrency() {
    let (e, _dir) = engine("[throttle]\nfree_failures = 1000\nlockout_after = 0");
    let phone = enrolled(&e, "race", T0);
    let tablet = add(&e, "race", "tablet", T0 + 1);
    let t = (T0 + 60) / 30;
    let code = code_at_step(&tablet, t);
    let accepted = std::thread::scope(|s| {
        let runs: Vec<_> = (0..100)
            .map(|_| s.spawn(|| verify(&e, "race", &code, T0 + 60)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap())
            .filter(|r| matches!(r, ResponseBody::Accepted { .. }))
            .count()
    });
    assert_eq!(accepted, 1);
    assert!(matches!(
        verify(&e, "race", &code_at_step(&phone, t + 1), T0 + 90),
        ResponseBody::Accepted { .. }
    ));
}

/// `twofold import google-authenticator --name NAME` adds beside the enrollment; its scratch
/// code joins the backup codes.
#[test]
fn an_import_with_a_name_is_added_beside_the_others() {
    let (e, _dir) = engine("");
    let phone = enrolled(&e, "imp", T0);
    let imported = Secret::from_base32("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP").unwrap();
    let import = |label: Option<&str>, force: bool| RequestBody::Import {
        user: "imp".into(),
        secret: SecretText::new(imported.to_base32()),
        params: TotpParams::default(),
        window: None,
        backup_codes: vec![SecretText::new("12345678")],
        last_used_step: Some(T0 / 30),
        force,
        authenticator: label.map(Into::into),
        counter: None,
    };
    assert!(matches!(
        e.handle(0, import(None, false), T0 + 1),
        ResponseBody::Error {
            kind: ErrorKind::AlreadyEnrolled,
            ..
        }
    ));
    let reply = e.handle(0, import(Some("old-phone"), false), T0 + 1);
    assert!(matches!(reply, ResponseBody::Done { .. }), "{reply:?}");
    assert_eq!(names(&e, "imp"), ["default", "old-phone"]);
    let t = (T0 + 30) / 30;
    assert!(matches!(
        verify(&e, "imp", &code_at_step(&imported, t), T0 + 30),
        ResponseBody::Accepted { .. }
    ));
    assert!(matches!(
        verify(&e, "imp", &code_at_step(&phone, t), T0 + 31),
        ResponseBody::Accepted { .. }
    ));
    assert!(matches!(
        verify(&e, "imp", "12345678", T0 + 32),
        ResponseBody::Accepted {
            method: Method::BackupCode,
            backup_codes_left: Some(12)
        }
    ));
}

#[test]
fn force_without_a_name_replaces_only_the_default_authenticator() {
    let (e, _dir) = engine("");
    let old = enrolled(&e, "redo", T0);
    let tablet = add(&e, "redo", "tablet", T0 + 1);
    let ResponseBody::Enrollment(info) = e.handle(
        0,
        RequestBody::Enroll {
            user: Some("redo".into()),
            force: true,
            code: None,
            params: None,
            authenticator: None,
        },
        T0 + 30,
    ) else {
        panic!("enroll --force refused")
    };
    let new = Secret::from_base32(info.secret.expose()).unwrap();
    let t = T0 / 30 + 1;
    // Until confirmed, the old key still opens a login.
    assert!(matches!(
        verify(&e, "redo", &code_at_step(&old, t), T0 + 31),
        ResponseBody::Accepted { .. }
    ));
    let reply = e.handle(
        0,
        RequestBody::Confirm {
            user: Some("redo".into()),
            code: SecretText::new(code_at_step(&new, t + 1)),
        },
        T0 + 60,
    );
    assert!(
        matches!(&reply, ResponseBody::Done { message } if message.contains("default")),
        "{reply:?}"
    );
    // Listed by when each was added: the new default after the tablet.
    assert_eq!(names(&e, "redo"), ["tablet", "default"]);
    assert!(matches!(
        verify(&e, "redo", &code_at_step(&old, t + 2), T0 + 90),
        ResponseBody::Rejected
    ));
    assert!(matches!(
        verify(&e, "redo", &code_at_step(&new, t + 2), T0 + 91),
        ResponseBody::Accepted { .. }
    ));
    assert!(matches!(
        verify(&e, "redo", &code_at_step(&tablet, t + 2), T0 + 92),
        ResponseBody::Accepted { .. }
    ));
    let ResponseBody::Status(s) = e.handle(
        0,
        RequestBody::Status {
            user: Some("redo".into()),
        },
        T0 + 93,
    ) else {
        panic!()
    };
    // The backup codes are the account's: a replaced authenticator keeps them.
    assert_eq!((s.authenticators, s.backup_codes_left), (2, 12));
}
