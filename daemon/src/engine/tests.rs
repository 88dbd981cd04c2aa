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
        ResponseBody::NotEnrolled { required: true }
    ));
}

/// Mail that never leaves: kept for the test to read, or refused when `down`.
#[derive(Default)]
struct Outbox {
    sent: Mutex<Vec<(String, String)>>,
    down: std::sync::atomic::AtomicBool,
}

impl Mailer for Outbox {
    fn send(&self, to: &str, _subject: &str, body: &str) -> Result<(), String> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("connection refused".into());
        }
        self.sent.lock().unwrap().push((to.into(), body.into()));
        Ok(())
    }
}

impl Outbox {
    fn count(&self) -> usize {
        self.sent.lock().unwrap().len()
    }
    /// The `123-456` code of the newest mail.
    fn last_code(&self) -> String {
        let sent = self.sent.lock().unwrap();
        let body = &sent.last().unwrap().1;
        body.split_whitespace()
            .find(|w| w.len() == 7 && w.as_bytes()[3] == b'-')
            .unwrap()
            .to_string()
    }
}

fn email_engine(extra: &str) -> (Engine, Arc<Outbox>, tempfile::TempDir) {
    let (e, dir) = engine(&format!("email_codes = true\n{extra}"));
    let outbox = Arc::new(Outbox::default());
    (e.with_mailer(outbox.clone()), outbox, dir)
}

fn email_set(e: &Engine, name: &str, address: &str, now: u64) -> ResponseBody {
    e.handle(
        0,
        RequestBody::EmailSet {
            user: Some(name.into()),
            address: address.into(),
            code: None,
        },
        now,
    )
}

fn email_confirm(e: &Engine, name: &str, code: &str, now: u64) -> ResponseBody {
    e.handle(
        0,
        RequestBody::EmailConfirm {
            user: Some(name.into()),
            code: SecretText::new(code),
        },
        now,
    )
}

fn send_code(e: &Engine, name: &str, now: u64) -> ResponseBody {
    e.handle(
        0,
        RequestBody::SendEmailCode {
            user: name.into(),
            pam: PamItems::default(),
        },
        now,
    )
}

fn verified(e: &Engine, outbox: &Outbox, name: &str, now: u64) {
    let r = email_set(e, name, "root@example.org", now);
    assert!(
        matches!(r, ResponseBody::EmailSent { ref masked } if masked == "r***@example.org"),
        "{r:?}"
    );
    let r = email_confirm(e, name, &outbox.last_code(), now + 1);
    assert!(matches!(r, ResponseBody::Done { .. }), "{r:?}");
}

#[test]
fn email_codes_log_in_once_and_die_after_five_wrong_tries() {
    let (e, outbox, _dir) = email_engine("[throttle]\nfree_failures = 50");
    enrolled(&e, "root", T0);
    verified(&e, &outbox, "root", T0);
    let ResponseBody::Status(s) = e.handle(
        0,
        RequestBody::Status {
            user: Some("root".into()),
        },
        T0,
    ) else {
        panic!()
    };
    assert_eq!(s.email.as_deref(), Some("r***@example.org"));
    assert!(s.email_verified);
    // Login code: right code (with or without the dash) once.
    let t = T0 + 100;
    assert!(matches!(
        send_code(&e, "root", t),
        ResponseBody::EmailSent { .. }
    ));
    let code = outbox.last_code();
    assert!(matches!(
        verify(&e, "root", "000000", t),
        ResponseBody::Rejected
    ));
    let r = verify(&e, "root", &code, t + 1);
    assert!(
        matches!(
            r,
            ResponseBody::Accepted {
                method: Method::Email,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(
        matches!(verify(&e, "root", &code, t + 2), ResponseBody::Rejected),
        "reuse"
    );
    // Resend limit: not within a minute.
    let r = send_code(&e, "root", t + 30);
    assert!(
        matches!(
            r,
            ResponseBody::Error {
                kind: ErrorKind::RateLimited,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(outbox.count(), 2);
    let t = t + 61;
    assert!(matches!(
        send_code(&e, "root", t),
        ResponseBody::EmailSent { .. }
    ));
    let code = outbox.last_code().replace('-', "");
    for _ in 0..5 {
        assert!(matches!(
            verify(&e, "root", "111111", t),
            ResponseBody::Rejected
        ));
    }
    assert!(
        matches!(verify(&e, "root", &code, t), ResponseBody::Rejected),
        "dead after five wrong tries"
    );
    // Expired.
    let t = t + 61;
    assert!(matches!(
        send_code(&e, "root", t),
        ResponseBody::EmailSent { .. }
    ));
    let code = outbox.last_code();
    assert!(matches!(
        verify(&e, "root", &code, t + 601),
        ResponseBody::Rejected
    ));
    // Nothing in the trail holds a code.
    let ResponseBody::Audit { entries, .. } = e.handle(
        0,
        RequestBody::Audit {
            user: None,
            since_secs: None,
        },
        t + 700,
    ) else {
        panic!()
    };
    let trail = serde_json::to_string(&entries).unwrap();
    assert!(!trail.contains(&code) && !trail.contains(&code.replace('-', "")));
    assert!(entries
        .iter()
        .any(|a| a.event == "email" && a.outcome == "sent"));
    assert!(entries
        .iter()
        .any(|a| a.method.as_deref() == Some("email") && a.outcome == "accepted"));
    // Housekeeping forgets mailed codes a day later.
    let left = |e: &Engine| {
        e.store
            .read(|tx| tx.mailed_code("root", CodePurpose::Login))
            .unwrap()
    };
    e.housekeeping(t + 86_000);
    assert!(left(&e).is_some());
    e.housekeeping(t + 88_000);
    assert!(left(&e).is_none());
}

#[test]
fn email_relay_down_fails_closed_and_switch_off_rejects() {
    let (e, outbox, _dir) = email_engine("");
    verified(&e, &outbox, "root", T0);
    outbox.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = send_code(&e, "root", T0 + 100);
    assert!(
        matches!(
            r,
            ResponseBody::Error {
                kind: ErrorKind::MailFailed,
                ..
            }
        ),
        "{r:?}"
    );
    let r = email_set(&e, "root", "other@example.org", T0 + 200);
    assert!(
        matches!(
            r,
            ResponseBody::Error {
                kind: ErrorKind::MailFailed,
                ..
            }
        ),
        "{r:?}"
    );
    let (off, _dir2) = engine("");
    assert!(matches!(
        send_code(&off, "root", T0),
        ResponseBody::Rejected
    ));
}

#[test]
fn email_auto_mails_a_code_to_users_without_an_app() {
    let (e, outbox, _dir) = email_engine("email_auto = true\nunenrolled = \"deny\"");
    verified(&e, &outbox, "root", T0);
    let pre = |now| {
        e.handle(
            0,
            RequestBody::Preflight {
                user: "root".into(),
                pam: PamItems::default(),
                grace_secs: 0,
            },
            now,
        )
    };
    let r = pre(T0 + 100);
    assert!(matches!(r, ResponseBody::EmailSent { .. }), "{r:?}");
    assert!(
        matches!(pre(T0 + 101), ResponseBody::EmailSent { .. }),
        "announced again"
    );
    assert_eq!(outbox.count(), 2, "one verification mail, one login mail");
    let r = verify(&e, "root", &outbox.last_code(), T0 + 102);
    assert!(
        matches!(
            r,
            ResponseBody::Accepted {
                method: Method::Email,
                ..
            }
        ),
        "{r:?}"
    );
}

/// Finding 1 of the 2026-11 review: under `unenrolled = "allow"`, an email-only user's
/// login passed with any answer that was not six digits ("not enrolled" -> PAM_IGNORE).
#[test]
fn an_email_only_login_is_refused_whatever_is_typed() {
    let (e, outbox, _dir) = email_engine("email_auto = true\n[throttle]\nfree_failures = 50");
    verified(&e, &outbox, "root", T0);
    let pre = e.handle(
        0,
        RequestBody::Preflight {
            user: "root".into(),
            pam: PamItems::default(),
            grace_secs: 0,
        },
        T0 + 100,
    );
    assert!(matches!(pre, ResponseBody::EmailSent { .. }), "{pre:?}");
    let refused = |r: &ResponseBody| matches!(r, ResponseBody::Rejected);
    for answer in ["x", "", "12345", "abcdef", "email", "1234567", "000-000"] {
        let r = verify(&e, "root", answer, T0 + 101);
        assert!(refused(&r), "{answer:?}: {r:?}");
    }
    // Each answer counted as a failure and a try on the mailed code, which died at the
    // fifth: the right code no longer works either.
    let r = verify(&e, "root", &outbox.last_code(), T0 + 102);
    assert!(refused(&r), "{r:?}");
    let ResponseBody::Status(s) = e.handle(
        0,
        RequestBody::Status {
            user: Some("root".into()),
        },
        T0 + 102,
    ) else {
        panic!()
    };
    assert_eq!(s.failures, 8);
    // Long after the code expired: still refused, never "not enrolled".
    let r = verify(&e, "root", "x", T0 + 5_000);
    assert!(refused(&r), "{r:?}");
}

#[test]
fn an_email_only_login_while_throttled_is_throttled() {
    let (e, outbox, _dir) = email_engine("email_auto = true");
    verified(&e, &outbox, "root", T0);
    for _ in 0..5 {
        assert!(matches!(
            verify(&e, "root", "x", T0 + 10),
            ResponseBody::Rejected
        ));
    }
    for answer in ["x", "", "123456"] {
        let r = verify(&e, "root", answer, T0 + 11);
        assert!(
            matches!(r, ResponseBody::Throttled { .. }),
            "{answer:?}: {r:?}"
        );
    }
}

/// Finding 2 of the 2026-11 review: an email-only user (a stolen shell) enrolled an app of
/// its own without proving the address.
#[test]
fn adding_an_app_to_a_verified_address_needs_a_mailed_code() {
    let (e, outbox, _dir) = email_engine("email_auto = true");
    let nobody = users::uid_of("nobody").expect("the nobody account");
    let r = email_set(&e, "nobody", "nobody@example.org", T0);
    assert!(matches!(r, ResponseBody::EmailSent { .. }), "{r:?}");
    let r = email_confirm(&e, "nobody", &outbox.last_code(), T0 + 1);
    assert!(matches!(r, ResponseBody::Done { .. }), "{r:?}");
    let enroll = |code: Option<&str>, now| {
        e.handle(
            nobody,
            RequestBody::Enroll {
                user: None,
                force: false,
                code: code.map(SecretText::new),
                params: None,
            },
            now,
        )
    };
    let mails = outbox.count();
    let r = enroll(None, T0 + 2);
    assert!(
        matches!(&r, ResponseBody::Error { kind: ErrorKind::CodeRequired, message } if message.contains("mailed to n***@example.org")),
        "{r:?}"
    );
    assert_eq!(outbox.count(), mails + 1, "the proof was mailed");
    let r = enroll(Some("000000"), T0 + 3);
    assert!(matches!(r, ResponseBody::Rejected), "{r:?}");
    let r = enroll(Some(&outbox.last_code()), T0 + 4);
    assert!(matches!(r, ResponseBody::Enrollment(_)), "{r:?}");
    // Root needs no proof.
    let r = e.handle(
        0,
        RequestBody::Enroll {
            user: Some("nobody".into()),
            force: false,
            code: None,
            params: None,
        },
        T0 + 5,
    );
    assert!(matches!(r, ResponseBody::Enrollment(_)), "{r:?}");
}

/// A relay that takes its time, so that parallel requests overlap while one is sending.
struct SlowRelay(Outbox);

impl Mailer for SlowRelay {
    fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        std::thread::sleep(std::time::Duration::from_millis(100));
        self.0.send(to, subject, body)
    }
}

/// Finding 5 of the 2026-11 review: the resend limit was checked in a read snapshot and
/// the code stored after sending, so 8 parallel requests sent 8 mails; failed sends were
/// never counted.
#[test]
fn parallel_requests_send_one_mail_and_failed_sends_count() {
    let (e, _dir) = engine("email_codes = true");
    let relay = Arc::new(SlowRelay(Outbox::default()));
    let e = e.with_mailer(relay.clone());
    verified(&e, &relay.0, "root", T0);
    let before = relay.0.count();
    let replies: Vec<ResponseBody> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| send_code(&e, "root", T0 + 100)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(relay.0.count(), before + 1, "{replies:?}");
    let sent = replies
        .iter()
        .filter(|r| matches!(r, ResponseBody::EmailSent { .. }))
        .count();
    assert_eq!(sent, 1, "{replies:?}");
    assert!(replies.iter().all(|r| matches!(
        r,
        ResponseBody::EmailSent { .. }
            | ResponseBody::Error {
                kind: ErrorKind::RateLimited,
                ..
            }
    )));
    // The relay goes down: each failure counts against the hour's ten.
    relay
        .0
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failed = 0;
    for i in 1..=20u64 {
        match send_code(&e, "root", T0 + 100 + i * 61) {
            ResponseBody::Error {
                kind: ErrorKind::MailFailed,
                ..
            } => failed += 1,
            ResponseBody::Error {
                kind: ErrorKind::RateLimited,
                ..
            } => break,
            other => panic!("{other:?}"),
        }
    }
    // Two sent before (verification and the login code above), so eight failures fill it.
    assert_eq!(failed, 8);
    // And a failed send is refused again within the minute, like a sent one.
    let r = send_code(&e, "root", T0 + 100 + 61 * 9 + 1);
    assert!(
        matches!(
            r,
            ResponseBody::Error {
                kind: ErrorKind::RateLimited,
                ..
            }
        ),
        "{r:?}"
    );
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

/// From the review's notes: a new address un-verified the old one as soon as its code was
/// mailed, so under email_auto a user who mistyped it was left without that factor.
#[test]
fn a_verified_address_stays_until_the_new_one_is_verified() {
    let (e, outbox, _dir) = email_engine("email_auto = true\nemail_resend_secs = 0");
    verified(&e, &outbox, "root", T0);
    let r = email_set(&e, "root", "new@example.org", T0 + 10);
    assert!(matches!(r, ResponseBody::EmailSent { .. }), "{r:?}");
    let new_code = outbox.last_code();
    let status = |now| match e.handle(
        0,
        RequestBody::Status {
            user: Some("root".into()),
        },
        now,
    ) {
        ResponseBody::Status(s) => s,
        other => panic!("{other:?}"),
    };
    let s = status(T0 + 11);
    assert_eq!(
        (s.email.as_deref(), s.email_verified),
        (Some("r***@example.org"), true)
    );
    let r = send_code(&e, "root", T0 + 12);
    assert!(
        matches!(r, ResponseBody::EmailSent { ref masked } if masked == "r***@example.org"),
        "{r:?}"
    );
    assert_eq!(
        outbox.sent.lock().unwrap().last().unwrap().0,
        "root@example.org"
    );
    let r = email_confirm(&e, "root", &new_code, T0 + 13);
    assert!(matches!(r, ResponseBody::Done { .. }), "{r:?}");
    let s = status(T0 + 14);
    assert_eq!(
        (s.email.as_deref(), s.email_verified),
        (Some("n***@example.org"), true)
    );
}
