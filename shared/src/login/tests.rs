//! The hand codec against serde's: the same request bytes, the same answers read, and nothing
//! read that serde would refuse.

use super::*;
use crate::wire::{self, Request, Response};

fn items() -> Vec<PamItems> {
    vec![
        PamItems::default(),
        PamItems {
            service: Some("sshd".into()),
            rhost: Some("203.0.113.9".into()),
            tty: Some("ssh".into()),
            ruser: Some("op\"er\\a\u{1}".into()),
            session: Some(u32::MAX),
        },
        PamItems {
            service: Some("sudo".into()),
            rhost: None,
            tty: Some("/dev/pts/0\t\u{7f}é".into()),
            ruser: None,
            session: Some(0),
        },
    ]
}

fn login_requests() -> Vec<RequestBody> {
    let users = ["alice", "a\"b\\c", "ünï€😀", "\u{1f}\u{0}x"];
    let codes = ["123456", "", "email", "\"\\\n\u{2028}"];
    let mut out = Vec::new();
    for (i, pam) in items().into_iter().enumerate() {
        for (j, user) in users.iter().enumerate() {
            let user = user.to_string();
            let code = SecretText::new(codes[(i + j) % codes.len()]);
            for (grace_secs, can_enroll, combined) in [
                (0, false, false),
                (3600, true, false),
                (u64::MAX, false, true),
                (1, true, true),
            ] {
                out.push(RequestBody::Preflight {
                    user: user.clone(),
                    pam: pam.clone(),
                    grace_secs,
                    can_enroll,
                    combined,
                });
                out.push(RequestBody::Verify {
                    user: user.clone(),
                    code: code.clone(),
                    pam: pam.clone(),
                    grace_secs,
                });
            }
            out.push(RequestBody::SendEmailCode {
                user: user.clone(),
                pam: pam.clone(),
            });
            out.push(RequestBody::ConfirmLogin {
                user,
                code,
                pam: pam.clone(),
            });
        }
    }
    out
}

#[test]
fn requests_are_byte_for_byte_serdes() {
    let requests = login_requests();
    assert!(requests.len() > 100);
    for body in requests {
        let ours = encode_frame(&body).expect("a login's request");
        let theirs = wire::encode_frame(&body.clone().into_request(), wire::MAX_FRAME).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
        assert_eq!(*ours, *theirs);
        // And the daemon reads it back.
        let back: Request = wire::decode(&ours[4..]).unwrap();
        assert_eq!(back.body.op_name(), body.op_name());
    }
}

#[test]
fn other_requests_are_not_a_logins() {
    for body in [
        RequestBody::Ping {},
        RequestBody::Status { user: None },
        RequestBody::Confirm {
            user: None,
            code: SecretText::new("123456"),
        },
        RequestBody::Unlock {
            user: "alice".into(),
        },
    ] {
        assert!(encode_frame(&body).is_none(), "{}", body.op_name());
    }
}

fn enrollment() -> LoginEnrollment {
    LoginEnrollment {
        info: EnrollmentInfo {
            user: "alice".into(),
            issuer: "twofold on host".into(),
            label: "twofold on host:alice".into(),
            secret: SecretText::new("JBSWY3DPEHPK3PXP"),
            otpauth_uri: SecretText::new("otpauth://totp/x:alice?secret=JBSWY3DPEHPK3PXP"),
            algorithm: Algorithm::Sha256,
            digits: 8,
            period: 30,
        },
        qr: SecretText::new("█▀▀▀▀▀█ ▄\n█ ███ █\n"),
        qr_inverted: SecretText::new("\u{2588}\"\\\u{1}"),
    }
}

/// Every answer a login can get, in its variations.
fn login_answers() -> Vec<ResponseBody> {
    let mut out = vec![
        ResponseBody::Pong {
            daemon_version: "0.2.0".into(),
        },
        ResponseBody::Prompt,
        ResponseBody::PromptCombined { digits: 0 },
        ResponseBody::PromptCombined { digits: 255 },
        ResponseBody::EmailSent {
            masked: "a***@example.org".into(),
        },
        ResponseBody::Rejected,
        ResponseBody::Throttled {
            retry_after_secs: 0,
        },
        ResponseBody::Throttled {
            retry_after_secs: u64::MAX,
        },
        ResponseBody::Locked,
        ResponseBody::NotEnrolled {
            required: true,
            reason: None,
        },
        ResponseBody::NotEnrolled {
            required: false,
            reason: Some("ask root: twofold invite \"x\"\n".into()),
        },
        ResponseBody::Disabled,
        ResponseBody::EnrollAtLogin(enrollment()),
        ResponseBody::EnrolledAtLogin { codes: vec![] },
        ResponseBody::EnrolledAtLogin {
            codes: vec![SecretText::new("abcd-efgh"), SecretText::new("2345-6789")],
        },
    ];
    for method in [
        Method::Totp,
        Method::BackupCode,
        Method::Remembered,
        Method::Email,
        Method::Bypass,
    ] {
        for backup_codes_left in [None, Some(0), Some(u32::MAX)] {
            out.push(ResponseBody::Accepted {
                method,
                backup_codes_left,
            });
        }
    }
    for kind in [
        ErrorKind::BadRequest,
        ErrorKind::VersionMismatch,
        ErrorKind::PermissionDenied,
        ErrorKind::CodeRequired,
        ErrorKind::NoPendingEnrollment,
        ErrorKind::AlreadyEnrolled,
        ErrorKind::NoSuchUser,
        ErrorKind::Busy,
        ErrorKind::RateLimited,
        ErrorKind::MailFailed,
        ErrorKind::Storage,
        ErrorKind::Internal,
    ] {
        out.push(ResponseBody::Error {
            kind,
            message: "unknown field `can_enroll`".into(),
        });
    }
    out
}

fn as_json(body: &ResponseBody) -> serde_json::Value {
    serde_json::to_value(Response {
        v: PROTOCOL_VERSION,
        body: body.clone(),
    })
    .unwrap()
}

fn serde_bytes(body: &ResponseBody) -> Vec<u8> {
    serde_json::to_vec(&Response {
        v: PROTOCOL_VERSION,
        body: body.clone(),
    })
    .unwrap()
}

#[test]
fn reads_every_answer_serde_writes() {
    for body in login_answers() {
        let bytes = serde_bytes(&body);
        let ours = decode_response(&bytes).unwrap_or_else(|e| panic!("{body:?}: {e:?}"));
        assert_eq!(as_json(&ours), as_json(&body));
        // Pretty-printed, with the fields in another order: the same.
        let mut value = as_json(&body);
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        assert_eq!(as_json(&decode_response(&pretty).unwrap()), value);
        if let Some(fields) = value.get_mut("body").and_then(|b| b.as_object_mut()) {
            let reversed: serde_json::Map<_, _> = fields.clone().into_iter().rev().collect();
            *fields = reversed;
        }
        let text = format!(
            "{{\"body\":{},\"v\":1}}",
            serde_json::to_string(&value["body"]).unwrap()
        );
        assert_eq!(as_json(&decode_response(text.as_bytes()).unwrap()), value);
    }
}

#[test]
fn optional_fields_may_be_missing_or_null() {
    let ok = |text: &str| as_json(&decode_response(text.as_bytes()).unwrap());
    assert_eq!(
        ok(r#"{"v":1,"body":{"result":"accepted","method":"backup_code"}}"#),
        ok(
            r#"{"v":1,"body":{"result":"accepted","method":"backup_code","backup_codes_left":null}}"#
        )
    );
    assert_eq!(
        ok(r#"{"v":1,"body":{"result":"not_enrolled","required":true}}"#),
        ok(r#"{"v":1,"body":{"result":"not_enrolled","required":true,"reason":null}}"#)
    );
}

fn refused(text: &str) -> String {
    match decode_response(text.as_bytes()) {
        Err(DecodeError::Frame(e)) => e.to_string(),
        other => panic!("{text}: {other:?}"),
    }
}

#[test]
fn refuses_what_serde_refuses_and_more() {
    let cases = [
        (
            r#"{"v":1,"body":{"result":"prompt"},"x":1}"#,
            "unknown field `x`",
        ),
        (r#"{"v":1}"#, "missing field `body`"),
        (r#"{"body":{"result":"prompt"}}"#, "missing field `v`"),
        (r#"{"v":"1","body":{"result":"prompt"}}"#, "field `v`"),
        (r#"{"v":1,"body":[]}"#, "not an object"),
        (r#"{"v":1,"body":{}}"#, "missing field `result`"),
        (
            r#"{"v":1,"body":{"result":"status","user":"alice"}}"#,
            "`status`",
        ),
        (
            r#"{"v":1,"body":{"result":"format_disk"}}"#,
            "`format_disk`",
        ),
        (
            r#"{"v":1,"body":{"result":"prompt","extra":true}}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"v":1,"body":{"result":"accepted"}}"#,
            "missing field `method`",
        ),
        (
            r#"{"v":1,"body":{"result":"accepted","method":"magic"}}"#,
            "`method`",
        ),
        (
            r#"{"v":1,"body":{"result":"accepted","method":"totp","method":"totp"}}"#,
            "duplicate key",
        ),
        (
            r#"{"v":1,"body":{"result":"accepted","method":"totp","backup_codes_left":-1}}"#,
            "negative",
        ),
        (
            r#"{"v":1,"body":{"result":"accepted","method":"totp","backup_codes_left":4294967296}}"#,
            "`backup_codes_left`",
        ),
        (
            r#"{"v":1,"body":{"result":"prompt_combined","digits":256}}"#,
            "`digits`",
        ),
        (
            r#"{"v":1,"body":{"result":"throttled","retry_after_secs":1.5}}"#,
            "not an integer",
        ),
        (
            r#"{"v":1,"body":{"result":"not_enrolled","required":1}}"#,
            "`required`",
        ),
        (
            r#"{"v":1,"body":{"result":"error","kind":"busy"}}"#,
            "missing field `message`",
        ),
        (
            r#"{"v":1,"body":{"result":"error","kind":"oops","message":""}}"#,
            "`kind`",
        ),
        (
            r#"{"v":1,"body":{"result":"enrolled_at_login","codes":["a",1]}}"#,
            "`codes`",
        ),
        (
            r#"{"v":1,"body":{"result":"enrolled_at_login","codes":"a"}}"#,
            "`codes`",
        ),
        (
            r#"{"v":1,"body":{"result":"prompt"}} x"#,
            "trailing characters",
        ),
    ];
    for (text, expected) in cases {
        let err = refused(text);
        assert!(err.contains(expected), "{text}: {err}");
        // serde refuses these too, except the answers that are not a login's and the extra
        // field beside a unit answer, which serde's internally tagged enums let through.
        if !text.contains("status") && !text.contains("extra") {
            assert!(wire::decode::<Response>(text.as_bytes()).is_err(), "{text}");
        }
    }
}

#[test]
fn another_version_is_named() {
    for text in [
        r#"{"v":2,"body":{"result":"prompt"}}"#,
        r#"{"v":2,"body":{"result":"a future answer","new":[1,2]}}"#,
    ] {
        assert!(matches!(
            decode_response(text.as_bytes()),
            Err(DecodeError::Version(2))
        ));
    }
}

#[test]
fn errors_never_quote_secrets() {
    // Values are never quoted, whatever is wrong with them or around them.
    let texts = [
        r#"{"v":1,"body":{"result":"enrolled_at_login","codes":["SECRETCODE",7]}}"#,
        r#"{"v":1,"body":{"result":"enroll_at_login","qr":"SECRETCODE"}}"#,
        r#"{"v":1,"body":{"result":"enroll_at_login","qr":["SECRETCODE"],"info":{}}}"#,
        r#"{"v":1,"body":{"result":"error","kind":"SECRETCODE","message":"m"}}"#,
        r#"{"v":1,"body":{"result":"accepted","method":"SECRETCODE"}}"#,
        r#"{"v":1,"body":{"result":"prompt","x":"SECRETCODE"}}"#,
        r#"{"v":1,"body":{"result":"prompt"},"SECRETCODE"}"#,
    ];
    for text in texts {
        let err = refused(text);
        assert!(!err.contains("SECRETCODE"), "{text}: {err}");
    }
    // Names of fields and answers are quoted, cut at 40 characters.
    for text in [
        format!(r#"{{"v":1,"body":{{"result":"{}"}}}}"#, "x".repeat(500)),
        format!(
            r#"{{"v":1,"body":{{"result":"prompt","{}":1}}}}"#,
            "x".repeat(500)
        ),
    ] {
        let err = refused(&text);
        assert!(err.contains(&"x".repeat(40)), "{err}");
        assert!(!err.contains(&"x".repeat(41)), "{err}");
    }
}

/// A small deterministic fuzzer: mutations of every answer, each read by both codecs. Whatever
/// ours reads, serde reads the same; the fuzz target `login` runs the same check for longer.
#[test]
fn never_reads_what_serde_would_not() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"{}[]\":,\\ 0123456789-.eEtrufalsn\x00\x1f\x7f\xc3\xa9u";
    let mut agreed = 0;
    for body in login_answers() {
        let base = serde_bytes(&body);
        for _ in 0..400 {
            let mut bytes = base.clone();
            for _ in 0..=(next() % 3) {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if let Some(verdict) = check_against_serde(&bytes) {
                agreed += usize::from(verdict);
            }
        }
    }
    assert!(agreed > 100, "only {agreed} mutations were read");
}

/// Both codecs on one input: `Some(true)` when both read it (alike), `Some(false)` when ours
/// refused it. Panics when ours reads what serde refuses or reads it differently.
fn check_against_serde(bytes: &[u8]) -> Option<bool> {
    let theirs = wire::decode::<Response>(bytes);
    match decode_response(bytes) {
        Ok(ours) => {
            let theirs = theirs.unwrap_or_else(|e| {
                panic!(
                    "ours read what serde refuses ({e}): {}",
                    String::from_utf8_lossy(bytes)
                )
            });
            assert_eq!(as_json(&ours), as_json(&theirs.body));
            Some(true)
        }
        Err(DecodeError::Version(v)) => {
            assert_eq!(wire::peek_version(bytes), Some(v));
            None
        }
        Err(DecodeError::Frame(_)) => Some(false),
    }
}
