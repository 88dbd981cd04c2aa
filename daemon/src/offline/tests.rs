//! The copy and the merge, with an SQLite store standing in for the fleet (the end-to-end
//! run on PostgreSQL is `tests/tests/outage.rs`).

use super::*;
use crate::backup::{self, BackupHash};
use crate::store::{ThrottleRecord, UserRecord};
use twofold_shared::otp::TotpParams;
use twofold_shared::secret::Secret;
use twofold_shared::wire::AuditEntry;

const T: u64 = 1_800_000_000;

fn hash(code: &str) -> BackupHash {
    backup::hash(code, &[7; backup::SALT_BYTES]).unwrap()
}

fn gone() -> StoreError {
    StoreError::Unreachable("no route to host".into())
}

struct Setup {
    _dir: tempfile::TempDir,
    fleet: Store,
    cache: Cache,
    path: std::path::PathBuf,
    copy: Store,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Store::open(&dir.path().join("fleet.db")).unwrap();
    let path = dir.path().join("copy.db");
    let copy = Store::open(&path).unwrap();
    fleet
        .write(|tx| {
            let user = UserRecord::single(
                "ann",
                Secret::from_bytes(vec![1; 20]),
                TotpParams::default(),
                T,
                100,
                vec![7; backup::SALT_BYTES],
                None,
                None,
            );
            tx.activate(&user, &[hash("b1"), hash("b2"), hash("b3")])
        })
        .unwrap();
    let cache = Cache::new(copy.clone(), &path, Arc::new(Logger::Stderr), T, false).unwrap();
    Setup {
        _dir: dir,
        fleet,
        cache,
        path,
        copy,
    }
}

#[test]
fn a_copy_never_filled_decides_nothing_and_a_filled_one_survives_a_restart() {
    let s = setup();
    assert!(
        !s.cache.lost(&gone(), T, || false),
        "offline from an empty copy"
    );
    assert!(matches!(s.cache.route(), Route::Online));
    s.cache.refresh(&s.fleet, true).unwrap();
    // A refused password or a failed statement is no outage; nor is one dead connection.
    assert!(!s
        .cache
        .lost(&StoreError::Remote("password".into()), T, || false));
    assert!(!s.cache.lost(&gone(), T, || true));
    assert!(s.cache.lost(&gone(), T, || false));
    assert!(matches!(s.cache.route(), Route::Offline(_)));
    // Another twofoldd on the same copy later knows it was filled; not on a copy made anew.
    let again = Cache::new(s.copy.clone(), &s.path, Arc::new(Logger::Stderr), T, false).unwrap();
    assert!(again.lost(&gone(), T, || false));
    let empty = Store::open(&s.path.with_file_name("new.db")).unwrap();
    let anew = Cache::new(empty, &s.path, Arc::new(Logger::Stderr), T, false).unwrap();
    assert!(
        !anew.lost(&gone(), T, || false),
        "an empty copy taken as filled"
    );
}

#[test]
fn what_was_decided_offline_is_merged_once_and_survives_a_restart_until_it_is() {
    let s = setup();
    s.cache.refresh(&s.fleet, true).unwrap();
    // Online, this host accepted step 101 and spent b1 just before the outage.
    s.fleet
        .write(|tx| tx.delete_backup_code("ann", &hash("b1")).map(|_| ()))
        .unwrap();
    s.cache.note(Noted::Mark {
        name: "ann".into(),
        label: crate::store::DEFAULT_AUTHENTICATOR.into(),
        step: 101,
    });
    s.cache.note(Noted::BackupCode {
        name: "ann".into(),
        hash: hash("b1"),
    });
    assert!(s.cache.lost(&gone(), T, || false));
    let Route::Offline(offline) = s.cache.route() else {
        panic!("not offline");
    };
    let user = offline.store().read(|tx| tx.user("ann")).unwrap().unwrap();
    assert_eq!(user.authenticators[0].last_step, 101, "the noted mark");
    assert_eq!(
        offline
            .store()
            .read(|tx| tx.backup_codes_left("ann"))
            .unwrap(),
        2
    );
    // Offline: step 102 accepted, b2 spent, then two failures.
    let entry = |outcome: &str, method: Option<&str>| AuditEntry {
        time: T + 1,
        event: OFFLINE_LOGIN.into(),
        user: Some("ann".into()),
        outcome: outcome.into(),
        method: method.map(Into::into),
        ..Default::default()
    };
    offline
        .store()
        .write(move |tx| {
            tx.advance_step("ann", crate::store::DEFAULT_AUTHENTICATOR, 102, T)?;
            tx.delete_backup_code("ann", &hash("b2"))?;
            tx.set_throttle(
                "ann",
                ThrottleRecord {
                    failures: 2,
                    last_failure: T + 2,
                },
            )?;
            tx.audit(&entry("accepted", Some("totp")))?;
            tx.audit(&entry("accepted", Some("backup-code")))?;
            tx.audit(&entry("rejected", None))?;
            tx.audit(&entry("rejected", None))
        })
        .unwrap();
    drop(offline);
    // twofoldd restarts before the database is back: it starts offline, from the copy.
    let restarted =
        Cache::new(s.copy.clone(), &s.path, Arc::new(Logger::Stderr), T, false).unwrap();
    assert!(matches!(restarted.route(), Route::Offline(_)));
    // Meanwhile the fleet saw one failure elsewhere.
    s.fleet
        .write(|tx| {
            tx.set_throttle(
                "ann",
                ThrottleRecord {
                    failures: 1,
                    last_failure: T,
                },
            )
        })
        .unwrap();
    restarted.reconnect(&s.fleet, true).unwrap();
    assert!(matches!(restarted.route(), Route::Online));
    let fleet_user = s.fleet.read(|tx| tx.user("ann")).unwrap().unwrap();
    assert_eq!(fleet_user.authenticators[0].last_step, 102);
    assert_eq!(s.fleet.read(|tx| tx.throttle("ann")).unwrap().failures, 3);
    assert_eq!(
        s.fleet.read(|tx| tx.backup_hashes("ann")).unwrap(),
        vec![hash("b3")]
    );
    let (trail, _) = s
        .fleet
        .read(|tx| tx.audit_entries(Some("ann"), 0, 100))
        .unwrap();
    assert_eq!(trail.iter().filter(|e| e.event == OFFLINE_LOGIN).count(), 4);
    // Merged once: a second reconnect has nothing left to add.
    assert!(restarted.lost(&gone(), T + 5, || false));
    restarted.reconnect(&s.fleet, true).unwrap();
    assert_eq!(s.fleet.read(|tx| tx.throttle("ann")).unwrap().failures, 3);
    // The copy follows the fleet: a user removed there goes.
    s.fleet.write(|tx| tx.delete_user("ann")).unwrap();
    restarted.refresh(&s.fleet, true).unwrap();
    assert!(s.copy.read(|tx| tx.user("ann")).unwrap().is_none());
}

#[test]
fn a_batch_whose_commit_answer_was_lost_is_merged_once() {
    let s = setup();
    s.cache.refresh(&s.fleet, true).unwrap();
    assert!(s.cache.lost(&gone(), T, || false));
    let rejected = |time: u64| AuditEntry {
        time,
        event: OFFLINE_LOGIN.into(),
        user: Some("ann".into()),
        outcome: "rejected".into(),
        ..Default::default()
    };
    s.copy
        .write(move |tx| {
            tx.audit(&rejected(T + 1))?;
            tx.audit(&rejected(T + 2))
        })
        .unwrap();
    // The first push commits in the fleet, and its answer is lost: the copy keeps the batch.
    let sent = s.cache.batch().unwrap().unwrap();
    assert_eq!(s.cache.merge_batch(&s.fleet, &sent).unwrap(), 2);
    // Still offline, one more failure here (the clock stepped back meanwhile).
    s.copy.write(move |tx| tx.audit(&rejected(T))).unwrap();
    // The same batch comes back (not the new entry with it), and the fleet has it already.
    let again = s.cache.batch().unwrap().unwrap();
    assert_eq!(again.token, sent.token);
    assert_eq!(again.entries.len(), 2);
    s.cache.merge_batch(&s.fleet, &again).unwrap();
    let failures = || s.fleet.read(|tx| tx.throttle("ann")).unwrap().failures;
    assert_eq!(failures(), 2, "a batch merged twice");
    // twofoldd restarts, then the database is back: the rest is merged, once.
    let restarted =
        Cache::new(s.copy.clone(), &s.path, Arc::new(Logger::Stderr), T, false).unwrap();
    restarted.reconnect(&s.fleet, true).unwrap();
    assert!(matches!(restarted.route(), Route::Online));
    assert_eq!(failures(), 3);
    let (trail, _) = s
        .fleet
        .read(|tx| tx.audit_entries(Some("ann"), 0, 100))
        .unwrap();
    assert_eq!(trail.iter().filter(|e| e.event == OFFLINE_LOGIN).count(), 3);
    let left = s.copy.read(|tx| tx.audit_rows(i64::MAX)).unwrap();
    assert!(left.is_empty(), "the copy still holds {left:?}");
    assert_eq!(s.copy.read(|tx| tx.meta("offline-batch")).unwrap(), None);
    assert!(restarted.batch().unwrap().is_none());
    // The fleet keeps one key per batch merged (two), and forgets them after a month.
    let merged = s
        .fleet
        .write(|tx| tx.forget_meta("offline-merged:", &u64::MAX.to_be_bytes()))
        .unwrap();
    assert_eq!(merged, 2);
}

#[test]
fn a_refresh_once_offline_writes_nothing() {
    let s = setup();
    s.cache.refresh(&s.fleet, true).unwrap();
    assert!(s.cache.lost(&gone(), T, || false));
    // Decided offline here: four failures. The fleet (as a refresh would read it) has none.
    let throttled = ThrottleRecord {
        failures: 4,
        last_failure: T,
    };
    s.copy
        .write(move |tx| tx.set_throttle("ann", throttled))
        .unwrap();
    s.cache.refresh(&s.fleet, true).unwrap();
    s.cache.refresh_user(&s.fleet, "ann", true).unwrap();
    assert_eq!(s.copy.read(|tx| tx.throttle("ann")).unwrap(), throttled);
    // Online again (nothing to merge but the copy's own state), a refresh writes again.
    s.cache.reconnect(&s.fleet, true).unwrap();
    assert_eq!(
        s.copy.read(|tx| tx.throttle("ann")).unwrap(),
        ThrottleRecord::default()
    );
}
