//! The engine's rules at a fixed clock, over a real SQLite file.

use super::*;

/// An engine over a real SQLite file in a temp dir, with the clock under the test's control.
fn engine(extra: &str) -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let config = Config::parse(&format!("issuer = \"t\"\n{extra}")).unwrap();
    (Engine::new(store, config, Arc::new(Logger::Stderr)), dir)
}

const T0: u64 = 1_800_000_000; // a step boundary: 1_800_000_000 / 30 = 60_000_000

/// Enrolls `name` at `now`, confirming with the code of step(now); returns the secret.
fn enrolled(e: &Engine, name: &str, now: u64) -> Secret {
    let ResponseBody::Enrollment(info) = e.handle(
        0,
        RequestBody::Enroll {
            user: Some(name.into()),
            force: false,
            code: None,
            params: None,
            authenticator: None,
        },
        now,
    ) else {
        panic!("enroll failed")
    };
    let secret = Secret::from_base32(info.secret.expose()).unwrap();
    let code = otp::totp_at(&secret, &TotpParams::default(), now);
    let reply = e.handle(
        0,
        RequestBody::Confirm {
            user: Some(name.into()),
            code: SecretText::new(code),
        },
        now,
    );
    assert!(
        matches!(reply, ResponseBody::BackupCodes { .. }),
        "{reply:?}"
    );
    secret
}

fn verify(e: &Engine, name: &str, code: &str, now: u64) -> ResponseBody {
    e.handle(
        0,
        RequestBody::Verify {
            user: name.into(),
            code: SecretText::new(code),
            pam: PamItems::default(),
            grace_secs: 0,
        },
        now,
    )
}

fn code_at_step(secret: &Secret, step: u64) -> String {
    otp::totp_for_step(secret, &TotpParams::default(), step)
}

#[test]
fn window_edges_through_the_engine() {
    let (e, _dir) = engine("[throttle]\nfree_failures = 100\nlockout_after = 0");
    // Enrolled long ago so that the high-water mark is below every step tried here.
    let secret = enrolled(&e, "w", T0 - 3600);
    let now = T0 + 1_000 * 30 + 10;
    let t = now / 30;
    for (step, ok) in [
        (t - 2, false),
        (t - 1, true),
        (t, true),
        (t + 1, true),
        (t + 2, false),
    ] {
        let reply = verify(&e, "w", &code_at_step(&secret, step), now);
        assert_eq!(
            matches!(reply, ResponseBody::Accepted { .. }),
            ok,
            "step offset {}",
            step as i64 - t as i64
        );
    }
}

#[test]
fn replay_is_by_step_not_by_code() {
    let (e, _dir) = engine("");
    let secret = enrolled(&e, "r", T0);
    let t = T0 / 30;
    // The confirming code (step t) cannot open a login.
    assert!(matches!(
        verify(&e, "r", &code_at_step(&secret, t), T0 + 5),
        ResponseBody::Rejected
    ));
    assert!(matches!(
        verify(&e, "r", &code_at_step(&secret, t + 2), T0 + 60),
        ResponseBody::Accepted { .. }
    ));
    // Step t+1 was never used and is inside the window, but below the high-water mark.
    assert!(matches!(
        verify(&e, "r", &code_at_step(&secret, t + 1), T0 + 60),
        ResponseBody::Rejected
    ));
    assert!(matches!(
        verify(&e, "r", &code_at_step(&secret, t + 3), T0 + 61),
        ResponseBody::Accepted { .. }
    ));
}

#[test]
fn clock_rollback_cannot_reenable_old_codes() {
    let (e, _dir) = engine("");
    let secret = enrolled(&e, "c", T0);
    let t = T0 / 30;
    assert!(matches!(
        verify(&e, "c", &code_at_step(&secret, t + 1), T0 + 30),
        ResponseBody::Accepted { .. }
    ));
    // The clock jumps back an hour: codes of that time are valid by the window, but old.
    let back = T0 - 3600;
    assert!(matches!(
        verify(&e, "c", &code_at_step(&secret, back / 30), back),
        ResponseBody::Rejected
    ));
}

#[test]
fn throttle_schedule_through_the_engine() {
    let (e, _dir) = engine("");
    let secret = enrolled(&e, "th", T0);
    for i in 0..5 {
        assert!(matches!(
            verify(&e, "th", "000000", T0 + i),
            ResponseBody::Rejected
        ));
    }
    // Sixth at once: throttled for 30 s from the last failure, not evaluated.
    let good = code_at_step(&secret, (T0 + 40) / 30);
    assert!(matches!(
        verify(&e, "th", &good, T0 + 5),
        ResponseBody::Throttled {
            retry_after_secs: 29
        }
    ));
    // After the wait the right code is accepted and the count is reset.
    assert!(matches!(
        verify(&e, "th", &good, T0 + 40),
        ResponseBody::Accepted { .. }
    ));
    let ResponseBody::Status(s) = e.handle(
        0,
        RequestBody::Status {
            user: Some("th".into()),
        },
        T0 + 41,
    ) else {
        panic!()
    };
    assert_eq!(s.failures, 0);
}

#[test]
fn garbage_and_overlong_input_count_as_failures_without_panicking() {
    // No free failures and no delay: every input is evaluated, and each must count.
    let (e, _dir) =
        engine("[throttle]\nfree_failures = 0\nbase_delay = 0\nmax_delay = 0\nlockout_after = 0");
    enrolled(&e, "g", T0);
    let junk = [
        "",
        "12345",
        "abc",
        &"9".repeat(10_000),
        "１２３４５６",
        "\u{0}\u{1b}",
    ];
    for (i, input) in junk.iter().enumerate() {
        assert!(
            matches!(verify(&e, "g", input, T0), ResponseBody::Rejected),
            "{i}"
        );
    }
    let ResponseBody::Status(s) = e.handle(
        0,
        RequestBody::Status {
            user: Some("g".into()),
        },
        T0,
    ) else {
        panic!("no status")
    };
    assert_eq!(s.failures as usize, junk.len());
}

#[test]
fn pending_enrollment_expires_and_dies_after_wrong_codes() {
    let (e, _dir) = engine("pending_ttl = 600");
    let reply = e.handle(
        0,
        RequestBody::Enroll {
            user: Some("p".into()),
            force: false,
            code: None,
            params: None,
            authenticator: None,
        },
        T0,
    );
    assert!(matches!(reply, ResponseBody::Enrollment(_)));
    let late = e.handle(
        0,
        RequestBody::Confirm {
            user: Some("p".into()),
            code: SecretText::new("123456"),
        },
        T0 + 601,
    );
    assert!(
        matches!(
            late,
            ResponseBody::Error {
                kind: ErrorKind::NoPendingEnrollment,
                ..
            }
        ),
        "{late:?}"
    );
    e.handle(
        0,
        RequestBody::Enroll {
            user: Some("p".into()),
            force: false,
            code: None,
            params: None,
            authenticator: None,
        },
        T0,
    );
    for _ in 0..4 {
        let r = e.handle(
            0,
            RequestBody::Confirm {
                user: Some("p".into()),
                code: SecretText::new("000000"),
            },
            T0,
        );
        assert!(matches!(r, ResponseBody::Rejected), "{r:?}");
    }
    let r = e.handle(
        0,
        RequestBody::Confirm {
            user: Some("p".into()),
            code: SecretText::new("000000"),
        },
        T0,
    );
    assert!(
        matches!(
            r,
            ResponseBody::Error {
                kind: ErrorKind::NoPendingEnrollment,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn switched_off_means_disabled_for_logins() {
    let (e, _dir) = engine("enabled = false");
    let r = e.handle(
        0,
        RequestBody::Preflight {
            user: "root".into(),
            pam: PamItems::default(),
            grace_secs: 0,
            can_enroll: false,
            combined: false,
        },
        T0,
    );
    assert!(matches!(r, ResponseBody::Disabled));
    assert!(matches!(
        verify(&e, "root", "123456", T0),
        ResponseBody::Disabled
    ));
}

#[test]
fn audit_entries_are_pruned_by_age() {
    let (e, _dir) = engine("audit_days = 1");
    enrolled(&e, "old", T0);
    let count = |now| match e.handle(
        0,
        RequestBody::Audit {
            user: None,
            since_secs: None,
        },
        now,
    ) {
        ResponseBody::Audit { entries, .. } => entries.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(count(T0), 2, "enroll and confirm");
    e.housekeeping(T0 + 86_400);
    assert_eq!(count(T0 + 86_400), 2, "a day old is kept");
    e.housekeeping(T0 + 86_401);
    assert_eq!(count(T0 + 86_401), 0);
}

#[test]
fn housekeeping_forgets_stale_counts_of_nobody_and_expired_pendings() {
    let (e, _dir) = engine("");
    enrolled(&e, "kept", T0);
    for name in ["kept", "ghost"] {
        assert!(matches!(
            verify(&e, name, "000000", T0),
            ResponseBody::Rejected
        ));
    }
    e.handle(
        0,
        RequestBody::Enroll {
            user: Some("late".into()),
            force: false,
            code: None,
            params: None,
            authenticator: None,
        },
        T0,
    );
    let status = |name: &str, now| match e.handle(
        0,
        RequestBody::Status {
            user: Some(name.into()),
        },
        now,
    ) {
        ResponseBody::Status(s) => s,
        other => panic!("{other:?}"),
    };
    assert!(status("late", T0).pending);
    assert!(
        !status("late", T0 + 901).pending,
        "expired pending enrollments are not shown as pending"
    );
    e.housekeeping(T0 + 86_401);
    assert_eq!(
        status("kept", T0 + 86_401).failures,
        1,
        "an enrolled user's count stays"
    );
    assert_eq!(
        status("ghost", T0 + 86_401).failures,
        0,
        "nobody's stale count goes"
    );
    let ResponseBody::Users { users } = e.handle(0, RequestBody::List {}, T0 + 86_401) else {
        panic!()
    };
    assert!(
        users.iter().all(|u| u.user != "late"),
        "expired pending enrollment removed"
    );
}

#[test]
fn remembered_devices_expire_and_do_not_outlast_a_lock() {
    let (e, _dir) =
        engine("[throttle]\nfree_failures = 5\nbase_delay = 0\nmax_delay = 0\nlockout_after = 2");
    let secret = enrolled(&e, "g", T0);
    let pam = PamItems {
        service: Some("sshd".into()),
        rhost: Some("192.0.2.1".into()),
        tty: None,
        ..Default::default()
    };
    let pre = |grace, now| {
        e.handle(
            0,
            RequestBody::Preflight {
                user: "g".into(),
                pam: pam.clone(),
                grace_secs: grace,
                can_enroll: false,
                combined: false,
            },
            now,
        )
    };
    let code = code_at_step(&secret, T0 / 30 + 1);
    let ok = e.handle(
        0,
        RequestBody::Verify {
            user: "g".into(),
            code: SecretText::new(code),
            pam: pam.clone(),
            grace_secs: 60,
        },
        T0 + 30,
    );
    assert!(
        matches!(
            ok,
            ResponseBody::Accepted {
                method: Method::Totp,
                ..
            }
        ),
        "{ok:?}"
    );
    assert!(matches!(
        pre(60, T0 + 89),
        ResponseBody::Accepted {
            method: Method::Remembered,
            ..
        }
    ));
    assert!(matches!(pre(60, T0 + 90), ResponseBody::Prompt), "expired");
    assert!(matches!(pre(0, T0 + 31), ResponseBody::Prompt), "grace off");
    assert!(
        matches!(pre(60, T0 + 29), ResponseBody::Prompt),
        "a clock that went back does not extend it"
    );
    // Locked: a remembered device does not get around the lock.
    for _ in 0..2 {
        verify(&e, "g", "000000", T0 + 40);
    }
    assert!(matches!(pre(60, T0 + 41), ResponseBody::Prompt));
}

#[test]
fn at_most_n_hashes_run_at_once() {
    let gate = Arc::new(HashGate::new(2));
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
            std::thread::spawn(move || {
                gate.run(Lane::Login, || {
                    let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn preflight_hides_which_names_exist() {
    let (e, _dir) = engine("unenrolled = \"deny\"");
    enrolled(&e, "enrolled-name", T0);
    let pre = |n: &str| {
        e.handle(
            0,
            RequestBody::Preflight {
                user: n.into(),
                pam: PamItems::default(),
                grace_secs: 0,
                can_enroll: false,
                combined: false,
            },
            T0,
        )
    };
    assert!(matches!(pre("enrolled-name"), ResponseBody::Prompt));
    assert!(matches!(
        pre("no-such-account-anywhere"),
        ResponseBody::Prompt
    ));
    assert!(matches!(
        pre("root"),
        ResponseBody::NotEnrolled { required: true, .. }
    ));
}

/// Finding 8 of the 2026-11 review: a remembered device was a tty name (handed to the next
/// user within minutes) or whatever PAM_RHOST said (sudo's `Defaults pam_rhost`: this host).
#[test]
fn a_remembered_device_is_a_remote_host_or_a_login_session_and_who_asked() {
    let items = |rhost: Option<&str>, tty: Option<&str>, ruser: Option<&str>| PamItems {
        service: Some("sudo".into()),
        rhost: rhost.map(Into::into),
        tty: tty.map(Into::into),
        ruser: ruser.map(Into::into),
        session: None,
    };
    let key = |p: &PamItems, session| grace_key(p, session).map(|(_, origin)| origin);
    let pts = items(None, Some("/dev/pts/3"), Some("alice"));
    assert_eq!(key(&pts, None), None, "a tty alone is no device");
    assert_ne!(
        key(&pts, Some(7)),
        key(&pts, Some(8)),
        "another login, same pts"
    );
    assert_eq!(key(&pts, Some(7)), key(&pts, Some(7)));
    assert_ne!(
        key(&pts, Some(7)),
        key(&items(None, Some("/dev/pts/3"), Some("mallory")), Some(7)),
        "another user asking"
    );
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(
        key(&items(Some(&host), Some("/dev/pts/3"), None), None),
        None,
        "this host's own name is no remote host"
    );
    let remote = items(Some("192.0.2.7"), None, None);
    assert_eq!(key(&remote, None).as_deref(), Some("rhost:192.0.2.7"));
    assert_eq!(key(&remote, Some(9)), key(&remote, None));
    assert_eq!(
        grace_key(&items(Some("192.0.2.7"), None, None), None)
            .unwrap()
            .0,
        "sudo"
    );
}

/// An enrollment as twofold stored it before uids were recorded (or for a name that had no
/// account then): the same row with no uid.
/// Makes `name`'s enrollment look as the upgrade to recorded uids leaves an older one.
fn as_before_uids(dir: &tempfile::TempDir, name: &str) {
    let db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    db.execute("UPDATE users SET uid = -1 WHERE name = ?1", [name])
        .unwrap();
}

fn recorded_uid(e: &Engine, name: &str) -> Option<u32> {
    let owned = name.to_string();
    e.store
        .read(move |tx| Ok(tx.user(&owned)?.and_then(|u| u.uid)))
        .unwrap()
}

/// Review of the 2026-11 fixes: uid-less enrollments were claimed by whoever asked first;
/// now twofoldd records every one at start, from the name service.
#[test]
fn enrollments_without_a_uid_take_their_accounts_at_start() {
    let (e, dir) = engine("");
    enrolled(&e, "root", T0);
    assert_eq!(recorded_uid(&e, "root"), Some(0), "recorded at enrollment");
    enrolled(&e, "ghost-without-account", T0);
    assert_eq!(recorded_uid(&e, "ghost-without-account"), None);
    as_before_uids(&dir, "root");
    as_before_uids(&dir, "ghost-without-account");
    assert_eq!(recorded_uid(&e, "root"), None, "not bound until looked up");
    assert_eq!(e.adopt_uids().unwrap(), 1);
    assert_eq!(recorded_uid(&e, "root"), Some(0));
    assert_eq!(recorded_uid(&e, "ghost-without-account"), None);
    // Looked up once: nothing is left to adopt, and nothing is looked up again.
    assert_eq!(e.adopt_uids().unwrap(), 0);
    let left = e.store.read(|tx| tx.names_to_adopt()).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// Switched off, logins pass untouched even when the store holds an enrollment that is not
/// the account's (the check would otherwise refuse them first).
#[test]
fn switched_off_passes_even_a_mismatched_enrollment() {
    let (e, _dir) = engine("enabled = false");
    enrolled(&e, "root", T0);
    e.store
        .write(|tx| tx.set_user_uid("root", Some(4242)))
        .unwrap();
    let pre = e.handle(
        0,
        RequestBody::Preflight {
            user: "root".into(),
            pam: PamItems::default(),
            grace_secs: 0,
            can_enroll: false,
            combined: false,
        },
        T0 + 30,
    );
    assert!(matches!(pre, ResponseBody::Disabled), "{pre:?}");
}

/// PAM_RUSER is bounded like the other items (it ends up in the remembered-device key).
#[test]
fn an_overlong_pam_item_is_refused() {
    let (e, _dir) = engine("");
    let r = e.handle(
        0,
        RequestBody::Preflight {
            user: "root".into(),
            pam: PamItems {
                ruser: Some("r".repeat(MAX_ITEM + 1)),
                ..Default::default()
            },
            grace_secs: 600,
            can_enroll: false,
            combined: false,
        },
        T0,
    );
    assert!(
        matches!(
            r,
            ResponseBody::Error {
                kind: ErrorKind::BadRequest,
                ..
            }
        ),
        "{r:?}"
    );
}

mod authenticators;
mod email;
mod hotp;
mod invite;

/// Under its hardened unit twofoldd cannot read another process's /proc entry, so root's PAM
/// applications (sudo, su) send the audit session their module read; nobody else's is taken.
#[test]
fn a_session_sent_by_the_module_counts_only_from_root() {
    let (e, _dir) = engine("");
    let nobody = users::uid_of("nobody").unwrap();
    for name in ["root", "nobody"] {
        enrolled(&e, name, T0);
    }
    let items = |session| PamItems {
        service: Some("sudo".into()),
        tty: Some("/dev/pts/4".into()),
        session: Some(session),
        ..Default::default()
    };
    let login = |caller, name: &str, secret: &Secret, session| {
        let r = e.handle(
            caller,
            RequestBody::Verify {
                user: name.into(),
                code: SecretText::new(code_at_step(secret, T0 / 30 + 1)),
                pam: items(session),
                grace_secs: 600,
            },
            T0 + 30,
        );
        assert!(matches!(r, ResponseBody::Accepted { .. }), "{r:?}");
    };
    let asks = |caller, name: &str, session| {
        let r = e.handle(
            caller,
            RequestBody::Preflight {
                user: name.into(),
                pam: items(session),
                grace_secs: 600,
                can_enroll: false,
                combined: false,
            },
            T0 + 40,
        );
        matches!(r, ResponseBody::Prompt)
    };
    let root_secret = e
        .store
        .read(|tx| Ok(tx.user("root")?.unwrap().authenticators[0].secret.clone()))
        .unwrap();
    let nobody_secret = e
        .store
        .read(|tx| Ok(tx.user("nobody")?.unwrap().authenticators[0].secret.clone()))
        .unwrap();
    login(0, "root", &root_secret, 7);
    assert!(!asks(0, "root", 7), "the same session is remembered");
    assert!(asks(0, "root", 8), "another session is asked");
    login(nobody, "nobody", &nobody_secret, 7);
    assert!(
        asks(nobody, "nobody", 7),
        "a user's own claim of a session is not taken"
    );
}
