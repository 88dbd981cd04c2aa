//! Counter-based (HOTP, RFC 4226) authenticators through the engine: the look-ahead, the
//! counter advanced past the accepted code exactly once, `resync`. The key is RFC 4226's, so
//! the codes are its appendix D values.

use super::*;

/// "12345678901234567890", RFC 4226's test key.
const KEY: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// RFC 4226 appendix D: the codes of counters 0 to 9.
const CODES: [&str; 10] = [
    "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871",
    "520489",
];

fn import_hotp(e: &Engine, name: &str, counter: u64, label: Option<&str>) -> ResponseBody {
    import_hotp_forced(e, name, counter, label, false)
}

fn import_hotp_forced(
    e: &Engine,
    name: &str,
    counter: u64,
    label: Option<&str>,
    force: bool,
) -> ResponseBody {
    e.handle(
        0,
        RequestBody::Import {
            user: name.into(),
            secret: SecretText::new(KEY),
            params: TotpParams::default(),
            window: None,
            backup_codes: vec![],
            last_used_step: None,
            force,
            authenticator: label.map(Into::into),
            counter: Some(counter),
        },
        T0,
    )
}

fn resync(e: &Engine, name: &str, first: &str, second: &str) -> ResponseBody {
    e.handle(
        0,
        RequestBody::Resync {
            user: name.into(),
            authenticator: None,
            first: SecretText::new(first),
            second: SecretText::new(second),
        },
        T0,
    )
}

fn accepted(r: &ResponseBody) -> bool {
    matches!(r, ResponseBody::Accepted { .. })
}

fn next_counter(e: &Engine, name: &str) -> Option<u64> {
    match e.handle(
        0,
        RequestBody::Authenticators {
            user: Some(name.into()),
        },
        T0,
    ) {
        ResponseBody::Authenticators { authenticators, .. } => authenticators[0].counter,
        other => panic!("{other:?}"),
    }
}

#[test]
fn counters_are_looked_ahead_and_spent_once() {
    let (e, _dir) = engine("hotp_window = 3");
    assert!(matches!(
        import_hotp(&e, "tok", 2, None),
        ResponseBody::Done { .. }
    ));
    assert_eq!(next_counter(&e, "tok"), Some(2));
    // Counters before the next one were used where the token came from.
    assert!(!accepted(&verify(&e, "tok", CODES[1], T0)));
    assert!(accepted(&verify(&e, "tok", CODES[2], T0)));
    assert!(!accepted(&verify(&e, "tok", CODES[2], T0)), "replayed");
    assert_eq!(next_counter(&e, "tok"), Some(3));
    // Pressed twice without a login: counter 4 is within the look-ahead of 3 codes (3, 4, 5);
    // counter 3 is then spent with it.
    assert!(accepted(&verify(&e, "tok", CODES[4], T0 + 1)));
    assert!(!accepted(&verify(&e, "tok", CODES[3], T0 + 2)));
    assert_eq!(next_counter(&e, "tok"), Some(5));
    // Counter 8 is beyond 5, 6, 7: refused, and nothing moves.
    assert!(!accepted(&verify(&e, "tok", CODES[8], T0 + 3)));
    assert_eq!(next_counter(&e, "tok"), Some(5));
    // The clock does not matter: a code is good a day later.
    assert!(accepted(&verify(&e, "tok", CODES[5], T0 + 86_400)));
}

#[test]
fn one_code_sent_a_hundred_times_at_once_is_accepted_once() {
    let (e, _dir) = engine("");
    import_hotp(&e, "race", 0, None);
    let accepted = std::thread::scope(|s| {
        let runs: Vec<_> = (0..100)
            .map(|_| s.spawn(|| verify(&e, "race", CODES[3], T0)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap_or(ResponseBody::Rejected))
            .filter(accepted)
            .count()
    });
    assert_eq!(accepted, 1);
    assert_eq!(next_counter(&e, "race"), Some(4));
}

#[test]
fn a_token_beside_an_app_and_the_time_based_codes_still_work() {
    let (e, _dir) = engine("");
    let phone = enrolled(&e, "both", T0);
    assert!(matches!(
        import_hotp(&e, "both", 0, Some("fob")),
        ResponseBody::Done { .. }
    ));
    assert!(accepted(&verify(&e, "both", CODES[0], T0 + 30)));
    let t = (T0 + 60) / 30;
    assert!(accepted(&verify(
        &e,
        "both",
        &code_at_step(&phone, t),
        T0 + 60
    )));
}

#[test]
fn resync_takes_two_consecutive_codes_within_a_hundred() {
    let (e, _dir) = engine("hotp_window = 2");
    import_hotp(&e, "drift", 0, None);
    // The token was pressed to counter 7: beyond the look-ahead of 2.
    assert!(!accepted(&verify(&e, "drift", CODES[7], T0)));
    // Not consecutive, the wrong order, garbage: refused, nothing moves.
    for (a, b) in [
        (CODES[6], CODES[8]),
        (CODES[8], CODES[7]),
        ("000000", "111111"),
        ("x", "y"),
    ] {
        assert!(
            matches!(resync(&e, "drift", a, b), ResponseBody::Error { .. }),
            "{a} {b}"
        );
    }
    assert_eq!(next_counter(&e, "drift"), Some(0));
    assert!(matches!(
        resync(&e, "drift", CODES[7], CODES[8]),
        ResponseBody::Done { .. }
    ));
    assert_eq!(next_counter(&e, "drift"), Some(9));
    assert!(
        !accepted(&verify(&e, "drift", CODES[8], T0)),
        "spent by resync"
    );
    assert!(accepted(&verify(&e, "drift", CODES[9], T0)));
    // An account with no token, and one not enrolled.
    enrolled(&e, "apponly", T0);
    let r = resync(&e, "apponly", CODES[0], CODES[1]);
    assert!(
        matches!(&r, ResponseBody::Error { message, .. } if message.contains("HOTP")),
        "{r:?}"
    );
    assert!(matches!(
        resync(&e, "nobody-here", CODES[0], CODES[1]),
        ResponseBody::NotEnrolled { .. }
    ));
}

#[test]
fn only_root_resyncs() {
    let (e, _dir) = engine("");
    import_hotp(&e, "daemon", 0, None);
    let uid = users::uid_of("daemon").unwrap();
    let r = e.handle(
        uid,
        RequestBody::Resync {
            user: "daemon".into(),
            authenticator: None,
            first: SecretText::new(CODES[5]),
            second: SecretText::new(CODES[6]),
        },
        T0,
    );
    assert!(matches!(r, ResponseBody::Error { .. }), "{r:?}");
    assert_eq!(next_counter(&e, "daemon"), Some(0));
}

/// A seed file run again with --force (the same key): the codes already accepted stay spent.
#[test]
fn importing_the_same_key_again_does_not_rewind_its_counter() {
    let (e, _dir) = engine("");
    import_hotp(&e, "again", 0, None);
    assert!(accepted(&verify(&e, "again", CODES[3], T0)));
    assert!(matches!(
        import_hotp_forced(&e, "again", 0, None, true),
        ResponseBody::Done { .. }
    ));
    assert_eq!(next_counter(&e, "again"), Some(4));
    assert!(!accepted(&verify(&e, "again", CODES[3], T0)));
    assert!(accepted(&verify(&e, "again", CODES[4], T0)));
    // A counter no store can hold is refused.
    assert!(matches!(
        import_hotp_forced(&e, "again", u64::MAX, None, true),
        ResponseBody::Error { .. }
    ));
}
