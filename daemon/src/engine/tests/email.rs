//! Codes by email: the address, mailed login codes, their limits, the address as a factor.

use super::*;

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
                can_enroll: false,
                combined: false,
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
            can_enroll: false,
            combined: false,
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
                authenticator: None,
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
            authenticator: None,
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

/// Review of the fixes: with `email_resend_secs = 0` nothing held a parallel burst back (the
/// hour's count is of mails already sent). A send in flight now does.
#[test]
fn a_send_in_flight_holds_off_the_next_even_without_a_resend_wait() {
    let (e, _dir) = engine("email_codes = true\nemail_resend_secs = 0");
    let relay = Arc::new(SlowRelay(Outbox::default()));
    let e = e.with_mailer(relay.clone());
    verified(&e, &relay.0, "root", T0);
    let before = relay.0.count();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| send_code(&e, "root", T0 + 100));
        }
    });
    assert_eq!(relay.0.count(), before + 1);
    // Once it has gone, the next may go at once.
    assert!(matches!(
        send_code(&e, "root", T0 + 101),
        ResponseBody::EmailSent { .. }
    ));
}
