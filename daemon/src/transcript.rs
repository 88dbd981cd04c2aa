//! The engine's golden transcript (issue 13): every request type, at a fixed clock, through
//! `Engine::handle`; each reply (secrets, codes and what depends on the machine redacted) and
//! the audit trail it left are compared with `testdata/engine-transcript.json`. A change of
//! behaviour shows up as a diff of that file; `TWOFOLD_BLESS=1 cargo test -p twofold-daemon
//! --lib transcript` writes it anew (then read the diff before committing it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::audit::Logger;
use crate::config::Config;
use crate::email::Mailer;
use crate::engine::Engine;
use crate::store::Store;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use twofold_shared::otp::{self, TotpParams};
use twofold_shared::secret::Secret;
use twofold_shared::wire::{PamItems, RequestBody, ResponseBody, SecretText};

const T0: u64 = 1_800_000_000;
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/engine-transcript.json"
);

/// Mail kept for the transcript to read the codes from.
#[derive(Default)]
struct Outbox(Mutex<Vec<String>>);

impl Mailer for Outbox {
    fn send(&self, _to: &str, _subject: &str, body: &str) -> Result<(), String> {
        self.0.lock().unwrap().push(body.to_string());
        Ok(())
    }
}

impl Outbox {
    fn last_code(&self) -> String {
        let sent = self.0.lock().unwrap();
        sent.last()
            .unwrap()
            .split_whitespace()
            .find(|w| w.len() == 7 && w.as_bytes()[3] == b'-')
            .unwrap()
            .to_string()
    }
}

/// Replaces what differs from run to run or machine to machine.
fn redact(mut v: Value) -> Value {
    const SECRET: &[&str] = &[
        "secret",
        "otpauth_uri",
        "codes",
        "code",
        "qr",
        "qr_inverted",
        "daemon_version",
    ];
    const MACHINE: &[&str] = &[
        "accounts",
        "asked_for_code",
        "refused_until_enrolled",
        "pass_without_code",
        "other_enrolled",
    ];
    if let Value::Object(map) = &mut v {
        for (k, val) in map.iter_mut() {
            if SECRET.contains(&k.as_str()) || MACHINE.contains(&k.as_str()) {
                *val = json!("[redacted]");
            } else {
                *val = redact(val.take());
            }
        }
    } else if let Value::Array(items) = &mut v {
        for item in items.iter_mut() {
            *item = redact(item.take());
        }
    }
    v
}

struct Script {
    engine: Engine,
    outbox: Arc<Outbox>,
    steps: Vec<Value>,
}

impl Script {
    fn ask(&mut self, label: &str, uid: u32, body: RequestBody, now: u64) -> ResponseBody {
        let reply = self.engine.handle(uid, body, now);
        self.steps.push(json!({
            "step": label,
            "uid": uid,
            "at": now - T0,
            "reply": redact(serde_json::to_value(&reply).unwrap()),
        }));
        reply
    }

    fn verify(&mut self, label: &str, user: &str, code: &str, grace: u64, now: u64) {
        let body = RequestBody::Verify {
            user: user.into(),
            code: SecretText::new(code),
            pam: sshd(),
            grace_secs: grace,
        };
        self.ask(label, 0, body, now);
    }

    fn preflight(&mut self, label: &str, user: &str, grace: u64, now: u64) {
        let body = RequestBody::Preflight {
            user: user.into(),
            pam: sshd(),
            grace_secs: grace,
            can_enroll: false,
            combined: false,
        };
        self.ask(label, 0, body, now);
    }
}

fn sshd() -> PamItems {
    PamItems {
        service: Some("sshd".into()),
        rhost: Some("192.0.2.7".into()),
        tty: None,
        ruser: None,
        session: None,
    }
}

fn code(secret: &Secret, at: u64) -> String {
    otp::totp_at(secret, &TotpParams::default(), at)
}

fn transcript(store: Store) -> Value {
    let config = Config::parse(
        "issuer = \"t\"\nemail_codes = true\nemail_resend_secs = 0\n[throttle]\nfree_failures = 3",
    )
    .unwrap();
    let outbox = Arc::new(Outbox::default());
    let engine = Engine::new(store, config, Arc::new(Logger::Stderr)).with_mailer(outbox.clone());
    let mut s = Script {
        engine,
        outbox,
        steps: Vec::new(),
    };
    let nobody = crate::users::uid_of("nobody").expect("the nobody account");

    logins(&mut s, nobody);
    email_and_self_service(&mut s, nobody);
    administration(&mut s);
    enrollment_at_login(&mut s, nobody);
    json!({ "steps": s.steps })
}

/// Enrollment by root, then logins of every kind, the throttle and unlocking.
fn logins(s: &mut Script, nobody: u32) {
    let me = |user: &str| Some(user.to_string());
    s.ask("ping", nobody, RequestBody::Ping {}, T0);
    // Enrollment: root enrolls root; a wrong first code, then the right one.
    let ResponseBody::Enrollment(info) = s.ask(
        "enroll",
        0,
        RequestBody::Enroll {
            user: me("root"),
            force: false,
            code: None,
            params: None,
            authenticator: None,
        },
        T0,
    ) else {
        panic!("enroll")
    };
    let secret = Secret::from_base32(info.secret.expose()).unwrap();
    let confirm = |code: String| RequestBody::Confirm {
        user: me("root"),
        code: SecretText::new(code),
    };
    s.ask("confirm wrong", 0, confirm("000000".into()), T0 + 1);
    let ResponseBody::BackupCodes { codes, .. } =
        s.ask("confirm", 0, confirm(code(&secret, T0)), T0 + 2)
    else {
        panic!("confirm")
    };
    s.ask(
        "enroll again",
        0,
        RequestBody::Enroll {
            user: me("root"),
            force: false,
            code: None,
            params: None,
            authenticator: None,
        },
        T0 + 3,
    );
    s.ask(
        "status",
        0,
        RequestBody::Status { user: me("root") },
        T0 + 3,
    );
    // Logins.
    s.preflight("preflight enrolled", "root", 0, T0 + 30);
    s.verify(
        "verify right",
        "root",
        &code(&secret, T0 + 30),
        600,
        T0 + 30,
    );
    s.verify(
        "verify replayed",
        "root",
        &code(&secret, T0 + 30),
        0,
        T0 + 31,
    );
    s.preflight("preflight remembered", "root", 600, T0 + 40);
    s.verify("verify garbage", "root", "x", 0, T0 + 41);
    s.verify("verify backup code", "root", codes[0].expose(), 0, T0 + 42);
    s.verify(
        "verify spent backup code",
        "root",
        codes[0].expose(),
        0,
        T0 + 43,
    );
    s.verify(
        "verify unknown name",
        "ghost-without-account",
        "123456",
        0,
        T0 + 44,
    );
    s.preflight(
        "preflight unknown name",
        "ghost-without-account",
        0,
        T0 + 44,
    );
    s.preflight("preflight unenrolled", "nobody", 0, T0 + 45);
    s.verify("verify unenrolled", "nobody", "123456", 0, T0 + 45);
    // Throttle: three free failures, then waits; unlock.
    s.verify("wrong 2", "root", "000000", 0, T0 + 46);
    s.verify("wrong 3", "root", "000000", 0, T0 + 47);
    s.verify("throttled", "root", "000000", 0, T0 + 48);
    s.ask(
        "unlock",
        0,
        RequestBody::Unlock {
            user: "root".into(),
        },
        T0 + 49,
    );
    s.verify("after unlock", "root", &code(&secret, T0 + 60), 0, T0 + 60);
    s.ask(
        "backup codes",
        0,
        RequestBody::BackupCodes {
            user: me("root"),
            code: None,
        },
        T0 + 61,
    );
}

/// What an unprivileged account may ask, and codes by email.
fn email_and_self_service(s: &mut Script, nobody: u32) {
    let me = |user: &str| Some(user.to_string());
    // Self-service by an unprivileged account.
    s.ask(
        "status self",
        nobody,
        RequestBody::Status { user: None },
        T0 + 62,
    );
    s.ask(
        "status other",
        nobody,
        RequestBody::Status { user: me("root") },
        T0 + 62,
    );
    s.ask("list denied", nobody, RequestBody::List {}, T0 + 62);
    // Email: an address for nobody, verified, then a login by mail.
    s.ask(
        "email set",
        0,
        RequestBody::EmailSet {
            user: me("nobody"),
            address: "nobody@example.org".into(),
            code: None,
        },
        T0 + 70,
    );
    let mailed = s.outbox.last_code();
    s.ask(
        "email confirm wrong",
        0,
        RequestBody::EmailConfirm {
            user: me("nobody"),
            code: SecretText::new("000-000"),
        },
        T0 + 71,
    );
    s.ask(
        "email confirm",
        0,
        RequestBody::EmailConfirm {
            user: me("nobody"),
            code: SecretText::new(mailed),
        },
        T0 + 72,
    );
    s.ask(
        "send email code",
        0,
        RequestBody::SendEmailCode {
            user: "nobody".into(),
            pam: sshd(),
        },
        T0 + 73,
    );
    let mailed = s.outbox.last_code();
    s.verify("verify mailed code", "nobody", &mailed, 0, T0 + 74);
    s.verify("verify mailed code again", "nobody", &mailed, 0, T0 + 75);
    s.ask(
        "self enroll with an address",
        nobody,
        RequestBody::Enroll {
            user: None,
            force: false,
            code: None,
            params: None,
            authenticator: None,
        },
        T0 + 76,
    );
    s.ask(
        "email remove",
        0,
        RequestBody::EmailRemove {
            user: me("nobody"),
            code: None,
        },
        T0 + 77,
    );
}

/// Import, root's reports and changes, the trail and housekeeping.
fn administration(s: &mut Script) {
    let me = |user: &str| Some(user.to_string());
    // Import, administration, reports.
    s.ask(
        "import",
        0,
        RequestBody::Import {
            user: "imported-without-account".into(),
            secret: SecretText::new("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"),
            params: TotpParams::default(),
            window: Some(2),
            backup_codes: vec![SecretText::new("12345678")],
            last_used_step: Some(T0 / 30),
            force: false,
            authenticator: None,
            counter: None,
        },
        T0 + 80,
    );
    s.verify(
        "verify imported scratch code",
        "imported-without-account",
        "12345678",
        0,
        T0 + 81,
    );
    s.ask("list", 0, RequestBody::List {}, T0 + 82);
    s.ask("policy", 0, RequestBody::Policy {}, T0 + 82);
    s.ask("seal rekey unsealed", 0, RequestBody::SealRekey {}, T0 + 82);
    s.ask(
        "disable",
        0,
        RequestBody::Disable {
            user: me("imported-without-account"),
            code: None,
        },
        T0 + 83,
    );
    s.ask(
        "status disabled",
        0,
        RequestBody::Status {
            user: me("imported-without-account"),
        },
        T0 + 83,
    );
    s.ask(
        "audit",
        0,
        RequestBody::Audit {
            user: None,
            since_secs: None,
        },
        T0 + 84,
    );
    s.ask(
        "audit of one user",
        0,
        RequestBody::Audit {
            user: me("nobody"),
            since_secs: Some(30),
        },
        T0 + 84,
    );
    // A day later: expired pending enrollments and stale counts go; 90 days on, the trail.
    s.engine.housekeeping(T0 + 86_400);
    s.ask("list a day later", 0, RequestBody::List {}, T0 + 86_400);
    s.engine.housekeeping(T0 + 90 * 86_400 + 100);
    s.ask(
        "audit after 90 days",
        0,
        RequestBody::Audit {
            user: None,
            since_secs: None,
        },
        T0 + 90 * 86_400 + 101,
    );
}

/// Invitations, an enrollment in a login's conversation, helpdesk codes.
fn enrollment_at_login(s: &mut Script, nobody: u32) {
    let t = T0 + 91 * 86_400;
    let invite = |user: &str| RequestBody::Invite {
        user: user.into(),
        for_secs: Some(600),
        replace: false,
    };
    s.ask("invite denied", nobody, invite("nobody"), t);
    s.ask("invite", 0, invite("daemon"), t);
    s.ask("invite list", 0, RequestBody::InviteList {}, t);
    let offer = s.ask(
        "preflight that can enroll",
        0,
        RequestBody::Preflight {
            user: "daemon".into(),
            pam: sshd(),
            grace_secs: 0,
            can_enroll: true,
            combined: false,
        },
        t + 1,
    );
    let ResponseBody::EnrollAtLogin(offer) = offer else {
        panic!("no enrollment offered: {offer:?}")
    };
    let secret = Secret::from_base32(offer.info.secret.expose()).unwrap();
    let confirm = |code: &str| RequestBody::ConfirmLogin {
        user: "daemon".into(),
        code: SecretText::new(code),
        pam: sshd(),
    };
    s.ask("first code wrong", 0, confirm("000000"), t + 2);
    s.ask("first code right", 0, confirm(&code(&secret, t + 3)), t + 3);
    let issued = s.ask(
        "bypass",
        0,
        RequestBody::Bypass {
            user: "daemon".into(),
            for_secs: None,
            uses: None,
        },
        t + 4,
    );
    let ResponseBody::BypassCode { code: helpdesk, .. } = issued else {
        panic!("no helpdesk code: {issued:?}")
    };
    s.verify(
        "verify helpdesk code",
        "daemon",
        helpdesk.expose(),
        0,
        t + 5,
    );
    s.verify("helpdesk code again", "daemon", helpdesk.expose(), 0, t + 6);
    let revoke = RequestBody::BypassRevoke {
        user: "daemon".into(),
    };
    s.ask("bypass revoke of none", 0, revoke, t + 7);
    let revoke = RequestBody::InviteRevoke {
        user: "daemon".into(),
    };
    s.ask("invite revoke of a used one", 0, revoke, t + 7);
    s.ask(
        "audit of enrollment at login",
        0,
        RequestBody::Audit {
            user: Some("daemon".into()),
            since_secs: Some(60),
        },
        t + 8,
    );
}

#[test]
fn transcript_matches_the_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    compare(
        transcript(Store::open(&dir.path().join("t.db")).unwrap()),
        true,
    );
}

/// The same script over a real PostgreSQL (root): the same replies and the same trail.
#[test]
fn transcript_on_postgres_matches_the_golden_file() {
    let Some(server) = twofold_tests::Postgres::start("transcript::postgres") else {
        return;
    };
    let url = server.socket_url();
    crate::store::postgres::init(&url, None, None).unwrap();
    let (store, _) = Store::open_postgres(&url, None, Vec::new()).unwrap();
    compare(transcript(store), false);
}

fn compare(transcript: Value, may_bless: bool) {
    let got = serde_json::to_string_pretty(&transcript).unwrap() + "\n";
    if may_bless && std::env::var_os("TWOFOLD_BLESS").is_some() {
        std::fs::write(GOLDEN, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(GOLDEN)
        .expect("testdata/engine-transcript.json (TWOFOLD_BLESS=1 writes it)");
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "the engine's behaviour changed: first difference at line {} of {GOLDEN}:\n got: {}\nwant: {}",
            first + 1,
            got.lines().nth(first).unwrap_or(""),
            want.lines().nth(first).unwrap_or("")
        );
    }
}
