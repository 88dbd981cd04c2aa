//! The store contract as one behavioural spec, run on every backend: SQLite (plain and
//! sealed) always, a real PostgreSQL (plain and sealed) when root. Every rule the engine
//! relies on inside a transaction is stated here once; a backend that passes it may be
//! swapped for another without touching the verification rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::backup::{self, BackupHash};
use crate::seal::Sealer;
use crate::store::{
    BypassRecord, CodePurpose, EmailRecord, Invitation, LoginDecision, MailedCode, MarkAdvance,
    PendingRecord, Store, StoreError, ThrottleRecord, UserRecord,
};
use twofold_shared::otp::{Algorithm, OtpKind, TotpParams};
use twofold_shared::secret::Secret;
use twofold_shared::wire::AuditEntry;

const T: u64 = 1_800_000_000;

fn code_hash(code: &str) -> BackupHash {
    backup::hash(code, &[7; backup::SALT_BYTES]).unwrap()
}

fn user(name: &str, uid: Option<u32>) -> UserRecord {
    UserRecord::single(
        name,
        Secret::from_bytes((0..32).collect()),
        TotpParams {
            algorithm: Algorithm::Sha256,
            digits: 8,
            period: 60,
        },
        T,
        -1,
        vec![7; backup::SALT_BYTES],
        Some(2),
        uid,
    )
}

fn pending(at: u64) -> PendingRecord {
    PendingRecord {
        secret: Secret::from_bytes(vec![9; 20]),
        params: TotpParams::default(),
        created_at: at,
        failed_confirms: 0,
        label: "tablet".into(),
    }
}

fn mailed(sent_at: u64) -> MailedCode {
    MailedCode {
        hash: vec![1; 32],
        salt: vec![2; 16],
        sent_at,
        expires: sent_at + 600,
        tries: 0,
    }
}

fn entry(time: u64, event: &str, user: &str, outcome: &str) -> AuditEntry {
    AuditEntry {
        time,
        event: event.into(),
        user: Some(user.into()),
        outcome: outcome.into(),
        ..Default::default()
    }
}

/// Runs `f` in one write transaction of `store`.
fn w<R: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&dyn crate::store::Tx) -> crate::store::Result<R> + Send + 'static,
) -> R {
    store.write(f).unwrap()
}

/// The whole spec, on an empty store.
pub fn run(store: &Store) {
    enrollments(store);
    high_water_mark(store);
    backup_codes(store);
    pending_and_devices(store);
    throttle(store);
    email(store);
    mailed_codes(store);
    audit(store);
    audit_rows(store);
    meta(store);
    invitations_and_helpdesk_codes(store);
    login_decisions(store);
    rollback(store);
    enrollment_copies(store);
}

fn enrollments(s: &Store) {
    assert!(w(s, |tx| tx.user("alice")).is_none());
    w(s, |tx| {
        tx.activate(&user("alice", Some(1000)), &[code_hash("a1")])
    });
    let got = w(s, |tx| tx.user("alice")).unwrap();
    let want = user("alice", Some(1000));
    let (a, b) = (&got.authenticators[0], &want.authenticators[0]);
    assert_eq!(got.authenticators.len(), 1);
    assert_eq!(a.secret, b.secret, "the secret round-trips (sealed or not)");
    assert_eq!((a.label.as_str(), a.params), ("default", b.params));
    assert_eq!(
        (
            got.enrolled_at,
            a.added_at,
            a.last_step,
            got.last_success,
            a.last_used,
            a.window,
            got.uid
        ),
        (T, T, -1, None, None, Some(2), Some(1000))
    );
    assert_eq!(got.backup_salt, want.backup_salt);
    assert_eq!(a.kind, OtpKind::Totp);
    // A counter-based token beside it: its kind and counter round-trip, and the counter only
    // moves forward.
    let mut token = b.clone();
    token.label = "fob".into();
    token.kind = OtpKind::Hotp;
    token.last_step = 41;
    w(s, move |tx| tx.add_authenticator("alice", &token, false));
    let fob = |s: &Store| {
        w(s, |tx| tx.user("alice"))
            .unwrap()
            .authenticators
            .into_iter()
            .find(|a| a.label == "fob")
    };
    let got_fob = fob(s).unwrap();
    assert_eq!((got_fob.kind, got_fob.last_step), (OtpKind::Hotp, 41));
    assert!(!w(s, |tx| tx.advance_step("alice", "fob", 41, T)));
    assert!(w(s, |tx| tx.advance_step("alice", "fob", 42, T)));
    assert_eq!(fob(s).unwrap().last_step, 42);
    assert!(w(s, |tx| tx.remove_authenticator("alice", "fob")));
    assert!(fob(s).is_none());
    w(s, |tx| tx.activate(&user("bob", None), &[]));
    assert_eq!(w(s, |tx| tx.user_names()), ["alice", "bob"]);
    // Who is enrolled for an account: by its name or by its uid.
    assert_eq!(
        w(s, |tx| tx.enrollments_for("alice", 1000)),
        [("alice".to_string(), Some(1000))]
    );
    assert_eq!(
        w(s, |tx| tx.enrollments_for("alice@dom", 1000)),
        [("alice".to_string(), Some(1000))]
    );
    assert_eq!(
        w(s, |tx| tx.enrollments_for("bob", 2000)),
        [("bob".to_string(), None)]
    );
    assert!(
        w(s, |tx| tx.names_to_adopt()).is_empty(),
        "no account: nothing to adopt"
    );
    assert_eq!(w(s, |tx| tx.recorded_uid("bob")), Some(None));
    assert_eq!(w(s, |tx| tx.recorded_uid("alice")), Some(Some(1000)));
    assert_eq!(w(s, |tx| tx.recorded_uid("nobody-here")), None);
    w(s, |tx| tx.set_user_uid("bob", Some(2000)));
    assert_eq!(w(s, |tx| tx.user("bob")).unwrap().uid, Some(2000));
    // Re-activation replaces the row whole.
    w(s, |tx| tx.activate(&user("bob", Some(2001)), &[]));
    assert_eq!(w(s, |tx| tx.user("bob")).unwrap().uid, Some(2001));
    // delete_user cascades: backup codes, devices, pending; true only when enrolled.
    w(s, |tx| {
        tx.remember("bob", "sshd", "rhost:x", T)?;
        tx.put_pending("bob", &pending(T))
    });
    assert!(w(s, |tx| tx.delete_user("bob")));
    assert!(!w(s, |tx| tx.delete_user("bob")));
    assert!(w(s, |tx| tx.user("bob")).is_none());
    assert!(w(s, |tx| tx.pending("bob")).is_none());
    assert!(w(s, |tx| tx.remembered_at("bob", "sshd", "rhost:x")).is_none());
    assert_eq!(w(s, |tx| tx.user_names()), ["alice"]);
}

fn high_water_mark(s: &Store) {
    let d = "default";
    assert!(w(s, move |tx| tx.advance_step("alice", d, 5, T + 1)));
    assert!(
        !w(s, move |tx| tx.advance_step("alice", d, 5, T + 2)),
        "the same step twice"
    );
    assert!(
        !w(s, move |tx| tx.advance_step("alice", d, 4, T + 3)),
        "a step below"
    );
    assert!(w(s, move |tx| tx.advance_step("alice", d, 7, T + 4)));
    let u = w(s, |tx| tx.user("alice")).unwrap();
    assert_eq!(
        (u.authenticators[0].last_step, u.authenticators[0].last_used),
        (7, Some(T + 4))
    );
    assert!(
        !w(s, move |tx| tx.advance_step("alice", "tablet", 9, T)),
        "no such authenticator"
    );
    assert!(
        !w(s, move |tx| tx.advance_step("nobody", d, 9, T)),
        "no such user"
    );
    // delete_user takes the authenticators along.
    w(s, |tx| tx.activate(&user("carol", None), &[]));
    assert!(w(s, |tx| tx.delete_user("carol")));
    w(s, |tx| {
        tx.put_user(&UserRecord {
            authenticators: Vec::new(),
            ..user("carol", None)
        })
    });
    assert!(w(s, |tx| tx.user("carol"))
        .unwrap()
        .authenticators
        .is_empty());
    w(s, |tx| tx.delete_user("carol").map(|_| ()));
}

fn backup_codes(s: &Store) {
    w(s, |tx| {
        tx.replace_backup_codes("alice", &[8; 16], &[code_hash("b1"), code_hash("b2")])
    });
    assert_eq!(
        w(s, |tx| tx.user("alice")).unwrap().backup_salt,
        vec![8; 16]
    );
    assert_eq!(w(s, |tx| tx.backup_codes_left("alice")), 2);
    assert!(
        !w(s, |tx| tx.consume_backup_code("alice", &code_hash("a1"), T)),
        "replaced"
    );
    assert!(w(s, |tx| tx.consume_backup_code(
        "alice",
        &code_hash("b1"),
        T + 10
    )));
    assert!(
        !w(s, |tx| tx.consume_backup_code(
            "alice",
            &code_hash("b1"),
            T + 11
        )),
        "once"
    );
    assert_eq!(w(s, |tx| tx.backup_codes_left("alice")), 1);
    assert_eq!(
        w(s, |tx| tx.user("alice")).unwrap().last_success,
        Some(T + 10)
    );
    assert_eq!(w(s, |tx| tx.backup_codes_left("nobody")), 0);
    // What is left, as hashes (the outage copy's), read back equal.
    assert_eq!(w(s, |tx| tx.backup_hashes("alice")), vec![code_hash("b2")]);
    assert!(w(s, |tx| tx.backup_hashes("nobody")).is_empty());
}

fn pending_and_devices(s: &Store) {
    w(s, |tx| tx.put_pending("carol", &pending(T)));
    w(s, |tx| tx.count_failed_confirm("carol"));
    let p = w(s, |tx| tx.pending("carol")).unwrap();
    assert_eq!((p.failed_confirms, p.created_at), (1, T));
    assert_eq!(p.secret, pending(T).secret);
    assert_eq!(p.label, "tablet", "the name its authenticator will get");
    assert_eq!(w(s, |tx| tx.pending_names()), ["carol"]);
    // A new pending enrollment starts afresh.
    w(s, |tx| tx.put_pending("carol", &pending(T + 5)));
    assert_eq!(w(s, |tx| tx.pending("carol")).unwrap().failed_confirms, 0);
    // Activating spends the pending enrollment and forgets remembered devices.
    w(s, |tx| {
        tx.remember("carol", "sshd", "rhost:a", T)?;
        tx.remember("carol", "sshd", "rhost:a", T + 1)
    });
    assert_eq!(
        w(s, |tx| tx.remembered_at("carol", "sshd", "rhost:a")),
        Some(T + 1)
    );
    assert!(w(s, |tx| tx.remembered_at("carol", "sudo", "rhost:a")).is_none());
    w(s, |tx| tx.activate(&user("carol", None), &[]));
    assert!(w(s, |tx| tx.pending("carol")).is_none());
    assert!(w(s, |tx| tx.remembered_at("carol", "sshd", "rhost:a")).is_none());
    // Housekeeping.
    w(s, |tx| {
        tx.put_pending("dave", &pending(T))?;
        tx.remember("carol", "sshd", "rhost:b", T)
    });
    assert_eq!(w(s, |tx| tx.prune_pending(T + 1)), 1);
    assert_eq!(w(s, |tx| tx.prune_grace(T + 1)), 1);
    w(s, |tx| tx.delete_pending("nobody"));
}

fn throttle(s: &Store) {
    assert_eq!(w(s, |tx| tx.throttle("alice")), ThrottleRecord::default());
    let three = ThrottleRecord {
        failures: 3,
        last_failure: T,
    };
    w(s, move |tx| tx.set_throttle("alice", three));
    assert_eq!(w(s, |tx| tx.throttle("alice")), three);
    w(s, |tx| tx.clear_throttle("alice"));
    assert_eq!(w(s, |tx| tx.throttle("alice")), ThrottleRecord::default());
    // Stale counts of names without enrollment go; enrolled names and locks stay.
    let locked = ThrottleRecord {
        failures: 100,
        last_failure: T,
    };
    w(s, move |tx| {
        tx.set_throttle("alice", three)?;
        tx.set_throttle("ghost", three)?;
        tx.set_throttle("locked-ghost", locked)?;
        tx.count_unknown_rejection()
    });
    assert_eq!(w(s, |tx| tx.prune_throttle(T + 1, 100)), 1);
    assert_eq!(w(s, |tx| tx.throttle("alice")), three);
    assert_eq!(w(s, |tx| tx.throttle("ghost")), ThrottleRecord::default());
    assert_eq!(w(s, |tx| tx.throttle("locked-ghost")), locked);
    // With no lockout, every stale count of nobody goes.
    assert_eq!(w(s, |tx| tx.prune_throttle(T + 1, 0)), 1);
    w(s, |tx| tx.clear_throttle("alice"));
}

fn email(s: &Store) {
    let record = |a: &str, v| {
        Some(EmailRecord {
            address: a.into(),
            verified: v,
        })
    };
    assert!(w(s, |tx| tx.email("alice")).is_none());
    w(s, |tx| tx.put_email("alice", "a@example.org"));
    assert_eq!(w(s, |tx| tx.email("alice")), record("a@example.org", false));
    // Unverified: a new address replaces it.
    w(s, |tx| tx.put_email("alice", "b@example.org"));
    assert_eq!(w(s, |tx| tx.email("alice")), record("b@example.org", false));
    w(s, |tx| {
        tx.put_mailed_code("alice", CodePurpose::Verify, &mailed(T))?;
        tx.set_email_verified("alice")
    });
    assert_eq!(w(s, |tx| tx.email("alice")), record("b@example.org", true));
    // Verifying spends the verification code but keeps when it was sent.
    let code = w(s, |tx| tx.mailed_code("alice", CodePurpose::Verify)).unwrap();
    assert_eq!((code.sent_at, code.expires), (T, 0));
    // Verified: a new address waits beside it, and a live login code dies.
    w(s, |tx| {
        tx.put_mailed_code("alice", CodePurpose::Login, &mailed(T))?;
        tx.put_email("alice", "c@example.org")
    });
    assert_eq!(w(s, |tx| tx.email("alice")), record("b@example.org", true));
    assert!(w(s, |tx| tx.mailed_code("alice", CodePurpose::Login)).is_none());
    w(s, |tx| tx.set_email_verified("alice"));
    assert_eq!(w(s, |tx| tx.email("alice")), record("c@example.org", true));
    // delete_email forgets the address and every mailed code.
    w(s, |tx| {
        tx.put_mailed_code("alice", CodePurpose::Login, &mailed(T))
    });
    assert!(w(s, |tx| tx.delete_email("alice")));
    assert!(!w(s, |tx| tx.delete_email("alice")));
    assert!(w(s, |tx| tx.email("alice")).is_none());
    assert!(w(s, |tx| tx.mailed_code("alice", CodePurpose::Login)).is_none());
    assert!(w(s, |tx| tx.mailed_code("alice", CodePurpose::Verify)).is_none());
}

fn mailed_codes(s: &Store) {
    w(s, |tx| {
        tx.put_mailed_code("erin", CodePurpose::Login, &mailed(T))?;
        tx.put_mailed_code("erin", CodePurpose::Verify, &mailed(T + 1))
    });
    assert_eq!(
        w(s, |tx| tx.mailed_code("erin", CodePurpose::Login)),
        Some(mailed(T))
    );
    w(s, |tx| tx.count_mailed_code_try("erin", CodePurpose::Login));
    assert_eq!(
        w(s, |tx| tx.mailed_code("erin", CodePurpose::Login))
            .unwrap()
            .tries,
        1
    );
    // Replacing resets it.
    w(s, |tx| {
        tx.put_mailed_code("erin", CodePurpose::Login, &mailed(T + 2))
    });
    assert_eq!(
        w(s, |tx| tx.mailed_code("erin", CodePurpose::Login)),
        Some(mailed(T + 2))
    );
    // Killed: unusable, its send time kept (the resend limit counts from it).
    w(s, |tx| tx.kill_mailed_code("erin", CodePurpose::Login));
    let killed = w(s, |tx| tx.mailed_code("erin", CodePurpose::Login)).unwrap();
    assert_eq!((killed.sent_at, killed.expires), (T + 2, 0));
    assert_ne!(killed.hash, mailed(T).hash);
    assert_eq!(
        w(s, |tx| tx.mailed_code("erin", CodePurpose::Verify)),
        Some(mailed(T + 1)),
        "each purpose apart"
    );
    w(s, |tx| tx.delete_mailed_code("erin", CodePurpose::Verify));
    assert!(w(s, |tx| tx.mailed_code("erin", CodePurpose::Verify)).is_none());
    // Pruned once sent and expired before the cut.
    assert_eq!(w(s, |tx| tx.prune_mailed_codes(T + 1)), 0);
    assert_eq!(w(s, |tx| tx.prune_mailed_codes(T + 3)), 1);
    // The hour's count: mails sent and sends that failed, of this user, since then.
    w(s, |tx| {
        for (t, outcome) in [
            (T, "sent"),
            (T + 5, "failed"),
            (T + 6, "refused"),
            (T - 1, "sent"),
        ] {
            tx.audit(&entry(t, "email", "erin", outcome))?;
        }
        tx.audit(&entry(T, "login", "erin", "sent"))?;
        tx.audit(&entry(T, "email", "frank", "sent"))
    });
    assert_eq!(w(s, |tx| tx.mails_sent_since("erin", T)), 2);
}

fn audit(s: &Store) {
    w(s, |tx| tx.prune_audit(u64::MAX));
    w(s, |tx| {
        for i in 0..5 {
            tx.audit(&AuditEntry {
                method: Some("totp".into()),
                service: Some("sshd".into()),
                rhost: Some("192.0.2.1".into()),
                tty: Some("pts/1".into()),
                caller_uid: Some(0),
                detail: Some(format!("n{i}")),
                ..entry(
                    T + i,
                    "login",
                    if i % 2 == 0 { "alice" } else { "bob" },
                    "accepted",
                )
            })?;
        }
        Ok(())
    });
    let (all, omitted) = w(s, |tx| tx.audit_entries(None, 0, 100));
    assert_eq!((all.len(), omitted), (5, 0));
    assert_eq!(all[0].detail.as_deref(), Some("n0"), "oldest first");
    assert_eq!(all[4].caller_uid, Some(0));
    assert_eq!(all[4].tty.as_deref(), Some("pts/1"));
    let (newest, omitted) = w(s, |tx| tx.audit_entries(None, 0, 2));
    assert_eq!(omitted, 3);
    assert_eq!(
        newest.iter().map(|e| e.time).collect::<Vec<_>>(),
        [T + 3, T + 4],
        "the newest, oldest first"
    );
    let (alice, _) = w(s, |tx| tx.audit_entries(Some("alice"), T + 1, 100));
    assert_eq!(
        alice.iter().map(|e| e.time).collect::<Vec<_>>(),
        [T + 2, T + 4]
    );
    assert_eq!(w(s, |tx| tx.prune_audit(T + 1)), 1);
    assert_eq!(w(s, |tx| tx.prune_audit_beyond(2)), 2);
    let (left, _) = w(s, |tx| tx.audit_entries(None, 0, 100));
    assert_eq!(
        left.iter().map(|e| e.time).collect::<Vec<_>>(),
        [T + 3, T + 4]
    );
}

/// Rows in the order written, pruned up to one of them (outage mode's batches).
fn audit_rows(s: &Store) {
    w(s, |tx| tx.prune_audit(u64::MAX));
    w(s, |tx| {
        // Times out of order: rows keep the order they were written in.
        for (i, t) in [T + 9, T + 1, T + 5].into_iter().enumerate() {
            tx.audit(&AuditEntry {
                detail: Some(format!("r{i}")),
                ..entry(t, "offline-login", "alice", "rejected")
            })?;
        }
        Ok(())
    });
    let rows = w(s, |tx| tx.audit_rows(i64::MAX));
    let details = |rows: &[(i64, AuditEntry)]| {
        rows.iter()
            .map(|(_, e)| e.detail.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(details(&rows), ["r0", "r1", "r2"]);
    assert!(rows.windows(2).all(|p| p[0].0 < p[1].0), "row numbers grow");
    let second = rows[1].0;
    assert_eq!(
        details(&w(s, move |tx| tx.audit_rows(second))),
        ["r0", "r1"]
    );
    assert_eq!(w(s, move |tx| tx.prune_audit_through(second)), 2);
    w(s, |tx| {
        tx.audit(&entry(T, "offline-login", "bob", "accepted"))
    });
    let left = w(s, |tx| tx.audit_rows(i64::MAX));
    assert_eq!(left.len(), 2);
    assert_eq!(left[0].0, rows[2].0, "the row kept keeps its number");
    assert!(left[1].0 > rows[2].0, "a new row comes after it");
    assert_eq!(left[1].1.user.as_deref(), Some("bob"));
    w(s, |tx| tx.prune_audit(u64::MAX));
}

/// The database's facts about itself: kept once, forgotten by prefix and age.
fn meta(s: &Store) {
    assert!(w(s, |tx| tx.put_meta_once("merged:a", &[0, 1])));
    assert!(
        !w(s, |tx| tx.put_meta_once("merged:a", &[0, 9])),
        "kept twice"
    );
    assert_eq!(w(s, |tx| tx.meta("merged:a")), Some(vec![0, 1]));
    assert_eq!(w(s, |tx| tx.meta("merged:none")), None);
    w(s, |tx| {
        tx.put_meta_once("merged:b", &[0, 3])?;
        tx.put_meta_once("merged_c", &[0, 0])?;
        tx.put_meta_once("other", &[0, 0])
    });
    // Below [0, 2], under the prefix: only merged:a ("_" is no wildcard here).
    assert_eq!(w(s, |tx| tx.forget_meta("merged:", &[0, 2])), 1);
    assert_eq!(w(s, |tx| tx.meta("merged:a")), None);
    assert_eq!(w(s, |tx| tx.meta("merged:b")), Some(vec![0, 3]));
    assert_eq!(w(s, |tx| tx.meta("merged_c")), Some(vec![0, 0]));
    assert!(w(s, |tx| tx.delete_meta("merged:b")));
    assert!(!w(s, |tx| tx.delete_meta("merged:b")));
    w(s, |tx| {
        tx.delete_meta("merged_c")?;
        tx.delete_meta("other")
    });
    // A key being kept by a transaction not yet committed: the second waits for it, and finds
    // it kept.
    let (kept, told) = std::sync::mpsc::channel();
    let first = {
        let s = s.clone();
        std::thread::spawn(move || {
            w(&s, move |tx| {
                let first = tx.put_meta_once("race", &[1])?;
                let _ = kept.send(());
                std::thread::sleep(std::time::Duration::from_millis(300));
                Ok(first)
            })
        })
    };
    told.recv().unwrap();
    let second = w(s, |tx| tx.put_meta_once("race", &[2]));
    assert!(first.join().unwrap(), "the first keeps it");
    assert!(!second, "kept by both");
    assert_eq!(w(s, |tx| tx.meta("race")), Some(vec![1]));
    w(s, |tx| tx.delete_meta("race"));
}

fn invitations_and_helpdesk_codes(s: &Store) {
    let invite = |expires_at, replace| Invitation {
        created_at: T,
        expires_at,
        replace,
        expiry_noted: false,
    };
    assert!(w(s, |tx| tx.invitation("ivy")).is_none());
    w(s, move |tx| {
        tx.put_invitation("ivy", &invite(T + 60, false))
    });
    w(s, move |tx| tx.put_invitation("ivo", &invite(T + 10, true)));
    // A new invitation replaces the old one.
    w(s, move |tx| {
        tx.put_invitation("ivy", &invite(T + 90, false))
    });
    assert_eq!(
        w(s, |tx| tx.invitations()),
        [
            ("ivo".to_string(), invite(T + 10, true)),
            ("ivy".to_string(), invite(T + 90, false))
        ]
    );
    w(s, |tx| tx.note_invitation_expired("ivo"));
    assert!(w(s, |tx| tx.invitation("ivo")).unwrap().expiry_noted);
    assert_eq!(w(s, |tx| tx.prune_invitations(T + 11)), 1);
    assert!(w(s, |tx| tx.invitation("ivo")).is_none());
    // Activating an enrollment uses the invitation up.
    w(s, |tx| tx.activate(&user("ivy", None), &[]));
    assert!(w(s, |tx| tx.invitation("ivy")).is_none());
    assert!(!w(s, |tx| tx.delete_invitation("ivy")));

    let code = BypassRecord {
        hash: vec![3; 32],
        salt: vec![4; 16],
        created_at: T,
        expires_at: T + 3600,
        uses_left: 2,
    };
    let stored = code.clone();
    w(s, move |tx| tx.put_bypass("ivy", &stored));
    assert_eq!(w(s, |tx| tx.bypass("ivy")), Some(code.clone()));
    let spent = code.clone();
    assert_eq!(w(s, move |tx| tx.spend_bypass("ivy", &spent)), 1);
    let once_more = BypassRecord {
        uses_left: 1,
        ..code.clone()
    };
    assert_eq!(w(s, |tx| tx.bypass("ivy")), Some(once_more.clone()));
    assert_eq!(w(s, move |tx| tx.spend_bypass("ivy", &once_more)), 0);
    assert!(
        w(s, |tx| tx.bypass("ivy")).is_none(),
        "the last use removes it"
    );
    let stored = code.clone();
    w(s, move |tx| tx.put_bypass("ivy", &stored));
    assert_eq!(w(s, |tx| tx.prune_bypass(T + 3600)), 0);
    assert_eq!(w(s, |tx| tx.prune_bypass(T + 3601)), 1);
    // Removing the enrollment removes its helpdesk code.
    let stored = code.clone();
    w(s, move |tx| tx.put_bypass("ivy", &stored));
    w(s, |tx| tx.delete_user("ivy"));
    assert!(w(s, |tx| tx.bypass("ivy")).is_none());
}

fn rollback(s: &Store) {
    let failed = s.write(|tx| {
        tx.activate(&user("ghost", None), &[])?;
        tx.audit(&entry(T, "x", "ghost", "y"))?;
        Err::<(), _>(StoreError::Corrupt("the caller gave up".into()))
    });
    assert!(failed.is_err());
    assert!(
        w(s, |tx| tx.user("ghost")).is_none(),
        "nothing of a failed write is kept"
    );
    let (trail, _) = w(s, |tx| tx.audit_entries(Some("ghost"), 0, 10));
    assert!(trail.is_empty());
    // Reads see what writes committed.
    assert!(s.read(|tx| tx.user("alice")).unwrap().is_some());
}

/// A login decision stands only on the state it was made from (the throttle it saw, the mark
/// it raises), and is applied whole or not at all; `Store::decide` falls back to deciding under
/// the lock when it does not stand.
fn login_decisions(s: &Store) {
    w(s, |tx| tx.activate(&user("dee", Some(77)), &[]));
    let state = s.read_one(|tx| tx.login_state("dee")).unwrap();
    let u = state.user.clone().unwrap();
    assert_eq!((u.uid, u.authenticators.len()), (Some(77), 1));
    assert_eq!(
        u.authenticators[0].secret.as_bytes(),
        &(0..32).collect::<Vec<u8>>()[..]
    );
    assert_eq!(state.throttle, ThrottleRecord::default());
    assert!(state.mailed.is_none() && !state.verified_address);
    let nobody = s.read_one(|tx| tx.login_state("nobody-here")).unwrap();
    assert!(nobody.user.is_none() && nobody.mailed.is_none());
    let audits = |s: &Store| {
        s.read(|tx| tx.audit_entries(Some("dee"), 0, 1000))
            .unwrap()
            .0
    };
    let before = audits(s).len();
    let mark = MarkAdvance {
        label: "default".into(),
        added_at: T,
        last_step: -1,
        step: 100,
        now: T + 5,
    };
    let accept = LoginDecision {
        throttle_was: ThrottleRecord::default(),
        throttle: Some(None),
        mark: Some(mark.clone()),
        last_success: Some(T + 5),
        audit: vec![entry(T + 5, "login", "dee", "accepted")],
        remember: Some(("sshd".into(), "rhost:10.0.0.9".into(), T + 5)),
    };
    let d = accept.clone();
    assert!(w(s, move |tx| tx.apply_decision("dee", &d)));
    let u = w(s, |tx| tx.user("dee")).unwrap();
    assert_eq!(u.authenticators[0].last_step, 100);
    assert_eq!(
        (u.last_success, u.authenticators[0].last_used),
        (Some(T + 5), Some(T + 5))
    );
    assert_eq!(
        w(s, |tx| tx.remembered_at("dee", "sshd", "rhost:10.0.0.9")),
        Some(T + 5)
    );
    assert_eq!(audits(s).len(), before + 1);
    // The same decision again: the mark moved; nothing of it is written.
    let d = LoginDecision {
        audit: vec![entry(T + 6, "login", "dee", "accepted"); 2],
        ..accept.clone()
    };
    assert!(!w(s, move |tx| tx.apply_decision("dee", &d)), "spent twice");
    assert_eq!(audits(s).len(), before + 1);
    // An authenticator replaced meanwhile (another added_at): the old read does not stand.
    let d = LoginDecision {
        mark: Some(MarkAdvance {
            added_at: T - 1,
            last_step: 100,
            step: 101,
            ..mark.clone()
        }),
        ..accept.clone()
    };
    assert!(!w(s, move |tx| tx.apply_decision("dee", &d)));
    // A failure counted on the throttle it saw, once.
    let one = ThrottleRecord {
        failures: 1,
        last_failure: T + 7,
    };
    let fail = LoginDecision {
        throttle_was: ThrottleRecord::default(),
        throttle: Some(Some(one)),
        audit: vec![entry(T + 7, "login", "dee", "rejected")],
        ..Default::default()
    };
    let d = fail.clone();
    assert!(w(s, move |tx| tx.apply_decision("dee", &d)));
    let d = fail.clone();
    assert!(
        !w(s, move |tx| tx.apply_decision("dee", &d)),
        "counted on a stale throttle"
    );
    assert_eq!(w(s, |tx| tx.throttle("dee")), one);
    assert_eq!(audits(s).len(), before + 2);
    // Through `Store::decide`: a stale first decision falls back to the locked one.
    let stale = ((7u8, "first"), fail.clone());
    let got = s
        .decide("dee", Some(stale), |tx| {
            Ok((tx.throttle("dee")?.failures as u8, "locked"))
        })
        .unwrap();
    assert_eq!(got, (1, "locked"));
    let fresh = LoginDecision {
        throttle_was: one,
        throttle: Some(None),
        ..Default::default()
    };
    // A first decision that stands, or (SQLite) the locked one that means the same.
    s.decide("dee", Some(((), fresh)), |tx| tx.clear_throttle("dee"))
        .unwrap();
    assert_eq!(w(s, |tx| tx.throttle("dee")), ThrottleRecord::default());
    w(s, |tx| tx.delete_user("dee").map(|_| ()));
}

fn sealer() -> Sealer {
    Sealer::from_key(&Sealer::generate_key().unwrap())
}

#[test]
fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run(&Store::open(&dir.path().join("plain.db")).unwrap());
}

#[test]
fn sqlite_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, which) = Store::open_sealed(&dir.path().join("sealed.db"), vec![sealer()]).unwrap();
    assert_eq!(which, Some(0));
    run(&store);
}

#[test]
fn postgres() {
    let Some(server) = twofold_tests::Postgres::start("conformance::postgres") else {
        return;
    };
    let url = server.socket_url();
    crate::store::postgres::init(&url, None, None).unwrap();
    // `fleet init` arrives at exactly the described tables and columns.
    let mut client = crate::store::postgres::connect_with_schema(&url, None).unwrap();
    for t in crate::store::schema::TABLES {
        let cols: Vec<(String, String)> = client
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = $1",
                &[&t.name],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        crate::store::schema::check(t.name, &cols).unwrap();
    }
    let (store, _) = Store::open_postgres(&url, None, Vec::new()).unwrap();
    run(&store);
    // A one-statement call runs outside a transaction: a second statement is refused, not run
    // in a snapshot of its own.
    let two = store.read_one(|tx| {
        tx.throttle("x")?;
        tx.throttle("x")
    });
    assert!(
        two.unwrap_err().to_string().contains("second statement"),
        "two statements ran as one"
    );
    assert_eq!(
        store.read_one(|tx| tx.throttle("x")).unwrap(),
        ThrottleRecord::default()
    );
}

#[test]
fn postgres_sealed() {
    let Some(server) = twofold_tests::Postgres::start("conformance::postgres_sealed") else {
        return;
    };
    let url = server.socket_url();
    let key = sealer();
    crate::store::postgres::init(&url, None, Some(&key)).unwrap();
    let (store, which) = Store::open_postgres(&url, None, vec![key]).unwrap();
    assert_eq!(which, Some(0));
    run(&store);
}

/// Outage mode's read of the whole fleet: the same as one user at a time.
fn enrollment_copies(s: &Store) {
    w(s, |tx| {
        let mut a = user("cp-a", Some(7));
        let mut second = a.authenticators[0].clone();
        second.label = "fob".into();
        second.secret = Secret::from_bytes(vec![9; 20]);
        second.last_step = 12;
        second.added_at = T + 1;
        a.authenticators.push(second);
        tx.activate(&a, &[code_hash("c1"), code_hash("c2")])?;
        tx.set_throttle(
            "cp-a",
            ThrottleRecord {
                failures: 3,
                last_failure: T + 5,
            },
        )?;
        tx.activate(&user("cp-b", None), &[])?;
        // A failure count of a name with no enrollment is no enrollment.
        tx.set_throttle(
            "cp-none",
            ThrottleRecord {
                failures: 1,
                last_failure: T,
            },
        )
    });
    type Summary = (
        String,
        Option<u32>,
        Vec<(String, Vec<u8>, i64)>,
        ThrottleRecord,
        usize,
    );
    let summary = |c: &crate::store::EnrollmentCopy| -> Summary {
        let authenticators = c
            .user
            .authenticators
            .iter()
            .map(|a| (a.label.clone(), a.secret.as_bytes().to_vec(), a.last_step))
            .collect();
        (
            c.user.name.clone(),
            c.user.uid,
            authenticators,
            c.throttle,
            c.backup_codes.len(),
        )
    };
    for backup_codes in [true, false] {
        let all = w(s, move |tx| tx.enrollment_copies(backup_codes));
        let names: Vec<String> = all.iter().map(|c| c.user.name.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "by name");
        assert!(!names.contains(&"cp-none".to_string()));
        for name in ["cp-a", "cp-b"] {
            let one = w(s, move |tx| tx.enrollment_copy(name, backup_codes)).unwrap();
            let bulk = all.iter().find(|c| c.user.name == name).unwrap();
            assert_eq!(summary(bulk), summary(&one), "{name}");
            assert_eq!(bulk.backup_codes, one.backup_codes);
        }
        let a = all.iter().find(|c| c.user.name == "cp-a").unwrap();
        assert_eq!(a.user.authenticators.len(), 2);
        assert_eq!(a.throttle.failures, 3);
        assert_eq!(a.backup_codes.len(), if backup_codes { 2 } else { 0 });
    }
    assert!(w(s, |tx| tx.enrollment_copy("cp-none", true)).is_none());
}
