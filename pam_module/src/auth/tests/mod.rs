//! The login flow against a scripted PAM conversation and a fake twofoldd on a real Unix socket.

use super::*;
use std::collections::VecDeque;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twofold_shared::wire::{self, ErrorKind, Request, Response, PROTOCOL_VERSION};

const CODE: &str = "492039";

// ---------------------------------------------------------------------------------------------
// Scripted PAM

#[derive(Debug)]
enum Answer {
    Code(String),
    Nothing,
    Fail,
}

#[derive(Debug)]
enum Event {
    Prompt {
        text: String,
        echo: bool,
        answer: Answer,
    },
    Info(String),
    Error(String),
}

fn prompt(answer: &str) -> Event {
    Event::Prompt {
        text: "Verification code: ".into(),
        echo: false,
        answer: Answer::Code(answer.into()),
    }
}

/// A PAM handle whose conversation must happen exactly as scripted: every event expected, in
/// order, and none left over when the test ends.
struct Script {
    user: Result<Vec<u8>, UserError>,
    service: Option<Vec<u8>>,
    rhost: Option<Vec<u8>>,
    tty: Option<Vec<u8>>,
    events: VecDeque<Event>,
    logs: Vec<(LogLevel, String)>,
    /// PAM_AUTHTOK: as an earlier module left it, then as this one set it.
    authtok: Option<String>,
}

impl Script {
    fn new(user: &str, events: Vec<Event>) -> Script {
        Script {
            user: Ok(user.as_bytes().to_vec()),
            service: Some(b"sshd".to_vec()),
            rhost: Some(b"192.0.2.7".to_vec()),
            tty: None,
            events: events.into(),
            logs: Vec::new(),
            authtok: None,
        }
    }

    fn next(&mut self, what: &str) -> Event {
        match self.events.pop_front() {
            Some(e) => e,
            None => panic!("unexpected {what}: the script is finished"),
        }
    }

    fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|(_, l)| l.contains(needle))
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        assert!(
            self.events.is_empty(),
            "events expected but not seen: {:?}",
            self.events
        );
        for (_, line) in &self.logs {
            assert!(!line.contains(CODE), "a code reached the log: {line}");
        }
    }
}

impl Pam for Script {
    fn user(&mut self) -> Result<Vec<u8>, UserError> {
        self.user.clone()
    }

    fn authtok(&mut self) -> Option<SecretText> {
        self.authtok.clone().map(SecretText::new)
    }

    fn set_authtok(&mut self, password: &SecretText) -> bool {
        self.authtok = Some(password.expose().to_string());
        true
    }

    /// The test process's own audit session is none of the script's business.
    fn session(&mut self) -> Option<u32> {
        None
    }

    fn item(&mut self, kind: ItemKind) -> Option<Vec<u8>> {
        match kind {
            ItemKind::Service => self.service.clone(),
            ItemKind::RHost => self.rhost.clone(),
            ItemKind::Tty => self.tty.clone(),
            ItemKind::RUser => None,
        }
    }

    fn prompt(&mut self, text: &str, echo: bool) -> Result<Option<SecretText>, ConvError> {
        match self.next(&format!("prompt {text:?}")) {
            Event::Prompt {
                text: want,
                echo: want_echo,
                answer,
            } => {
                assert_eq!((text, echo), (want.as_str(), want_echo));
                match answer {
                    Answer::Code(c) => Ok(Some(SecretText::new(c))),
                    Answer::Nothing => Ok(None),
                    Answer::Fail => Err(ConvError),
                }
            }
            other => panic!("prompted {text:?}, expected {other:?}"),
        }
    }

    fn info(&mut self, text: &str) {
        match self.next(&format!("info {text:?}")) {
            Event::Info(want) => assert_eq!(text, want),
            other => panic!("info {text:?}, expected {other:?}"),
        }
    }

    fn error(&mut self, text: &str) {
        match self.next(&format!("error {text:?}")) {
            Event::Error(want) => assert_eq!(text, want),
            other => panic!("error {text:?}, expected {other:?}"),
        }
    }

    fn log(&mut self, level: LogLevel, text: &str) {
        self.logs.push((level, text.to_string()));
    }
}

// ---------------------------------------------------------------------------------------------
// Fake twofoldd: a real Unix socket answering each connection from a script

enum Reply {
    Body(ResponseBody),
    /// A frame with this payload, as is.
    Raw(&'static str),
    /// Accept, read the request and never answer.
    Silent,
}

struct FakeDaemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    uid: u32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Request>>>,
}

impl FakeDaemon {
    fn start(replies: Vec<Reply>) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s");
        let listener = UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let uid = std::fs::metadata(&socket).unwrap().uid();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || serve(listener, replies, &stopped));
        FakeDaemon {
            _dir: dir,
            socket,
            uid,
            stop,
            thread: Some(thread),
        }
    }

    fn args(&self, extra: &[&str]) -> Vec<CString> {
        let mut args = vec![
            format!("socket={}", self.socket.display()),
            "timeout=2".to_string(),
            format!("daemon_uid={}", self.uid),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.into_iter().map(|a| CString::new(a).unwrap()).collect()
    }

    /// Stops the server and returns the requests it received.
    fn requests(mut self) -> Vec<Request> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: UnixListener, replies: Vec<Reply>, stop: &AtomicBool) -> Vec<Request> {
    let mut seen = Vec::new();
    let mut held: Vec<UnixStream> = Vec::new();
    for reply in replies {
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if stop.load(Ordering::SeqCst) => return seen,
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let payload = wire::read_frame(&mut stream).unwrap();
        seen.push(wire::decode::<Request>(&payload).unwrap());
        match reply {
            Reply::Body(body) => {
                let response = Response {
                    v: PROTOCOL_VERSION,
                    body,
                };
                wire::write_frame(&mut stream, &response).unwrap();
            }
            Reply::Raw(json) => {
                let mut frame = (json.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(json.as_bytes());
                let _ = stream.write_all(&frame);
            }
            Reply::Silent => held.push(stream),
        }
    }
    // A connection beyond the script is a test failure: count it.
    while !stop.load(Ordering::SeqCst) {
        if let Ok((mut s, _)) = listener.accept() {
            s.set_nonblocking(false).unwrap();
            if let Ok(p) = wire::read_frame(&mut s) {
                seen.extend(wire::decode::<Request>(&p).ok());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    seen
}

fn run(pam: &mut Script, args: &[CString], flags: u32) -> PamCode {
    let refs: Vec<&CStr> = args.iter().map(|a| a.as_c_str()).collect();
    authenticate(pam, &refs, flags)
}

fn op(r: &Request) -> &'static str {
    r.body.op_name()
}

fn accepted_totp() -> Reply {
    Reply::Body(ResponseBody::Accepted {
        method: Method::Totp,
        backup_codes_left: None,
    })
}

/// Runs a full login where the preflight says "prompt" and the verification gets `answer`.
fn verify_flow(answer: ResponseBody, after_prompt: Vec<Event>) -> (PamCode, Vec<Request>) {
    let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::Prompt), Reply::Body(answer)]);
    let mut events = vec![prompt(CODE)];
    events.extend(after_prompt);
    let mut pam = Script::new("alice", events);
    let code = run(&mut pam, &d.args(&[]), 0);
    (code, d.requests())
}

// ---------------------------------------------------------------------------------------------

#[test]
fn right_code_is_accepted_with_two_separate_requests() {
    let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::Prompt), accepted_totp()]);
    let mut pam = Script::new("alice", vec![prompt(CODE)]);
    pam.tty = Some(b"pts/3".to_vec());
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::Success);
    let requests = d.requests();
    assert_eq!(requests.len(), 2);
    let items = PamItems {
        service: Some("sshd".into()),
        rhost: Some("192.0.2.7".into()),
        tty: Some("pts/3".into()),
        ..Default::default()
    };
    match &requests[0].body {
        RequestBody::Preflight {
            user,
            pam,
            grace_secs,
            can_enroll,
            combined,
        } => {
            assert!(!combined);
            assert_eq!(user, "alice");
            assert_eq!(pam, &items);
            assert_eq!(*grace_secs, 0);
            assert!(
                *can_enroll,
                "a login without PAM_SILENT can show an enrollment"
            );
        }
        other => panic!("first request: {other:?}"),
    }
    match &requests[1].body {
        RequestBody::Verify {
            user, code, pam, ..
        } => {
            assert_eq!(user, "alice");
            assert_eq!(code.expose(), CODE);
            assert_eq!(pam, &items);
        }
        other => panic!("second request: {other:?}"),
    }
    assert!(requests.iter().all(|r| r.v == PROTOCOL_VERSION));
}

#[test]
fn verification_answers_map_to_pam_results() {
    let cases: Vec<(ResponseBody, PamCode, Vec<Event>)> = vec![
        (
            ResponseBody::Accepted {
                method: Method::BackupCode,
                backup_codes_left: Some(11),
            },
            PamCode::Success,
            vec![Event::Info("Backup code used; 11 left.".into())],
        ),
        (
            ResponseBody::Accepted {
                method: Method::BackupCode,
                backup_codes_left: None,
            },
            PamCode::Success,
            vec![],
        ),
        (
            ResponseBody::Rejected,
            PamCode::AuthErr,
            vec![Event::Error(MSG_INVALID.into())],
        ),
        (
            ResponseBody::Throttled {
                retry_after_secs: 30,
            },
            PamCode::MaxTries,
            vec![Event::Error(
                "Too many failed attempts; try again in 1 min.".into(),
            )],
        ),
        (
            ResponseBody::Throttled {
                retry_after_secs: 61,
            },
            PamCode::MaxTries,
            vec![Event::Error(
                "Too many failed attempts; try again in 2 min.".into(),
            )],
        ),
        (
            ResponseBody::Locked,
            PamCode::MaxTries,
            vec![Event::Error(MSG_LOCKED.into())],
        ),
        // After a prompt, "not enrolled" or "switched off" (a disable between preflight and
        // verify, or a daemon bypassed as in finding 1 of the 2026-11 review) is a refusal.
        (
            ResponseBody::NotEnrolled {
                required: false,
                reason: None,
            },
            PamCode::AuthErr,
            vec![Event::Error(MSG_INVALID.into())],
        ),
        (
            ResponseBody::NotEnrolled {
                required: true,
                reason: None,
            },
            PamCode::AuthErr,
            vec![Event::Error(MSG_ENROLL.into())],
        ),
        (
            ResponseBody::Disabled,
            PamCode::AuthErr,
            vec![Event::Error(MSG_INVALID.into())],
        ),
        (
            ResponseBody::Error {
                kind: ErrorKind::Storage,
                message: "disk full".into(),
            },
            PamCode::AuthInfoUnavail,
            vec![Event::Error(MSG_UNAVAILABLE.into())],
        ),
        // Answers that make no sense here fail closed.
        (
            ResponseBody::Prompt,
            PamCode::AuthInfoUnavail,
            vec![Event::Error(MSG_UNAVAILABLE.into())],
        ),
        (
            ResponseBody::Pong {
                daemon_version: "9".into(),
            },
            PamCode::AuthInfoUnavail,
            vec![Event::Error(MSG_UNAVAILABLE.into())],
        ),
    ];
    for (answer, want, messages) in cases {
        let label = format!("{answer:?}");
        let (got, requests) = verify_flow(answer, messages);
        assert_eq!(got, want, "{label}");
        assert_eq!(
            requests.iter().map(op).collect::<Vec<_>>(),
            ["preflight", "verify"],
            "{label}"
        );
    }
}

#[test]
fn preflight_answers_decide_without_prompting() {
    let cases: Vec<(ResponseBody, PamCode, Vec<Event>)> = vec![
        (
            ResponseBody::NotEnrolled {
                required: false,
                reason: None,
            },
            PamCode::Ignore,
            vec![],
        ),
        (
            ResponseBody::NotEnrolled {
                required: true,
                reason: None,
            },
            PamCode::AuthErr,
            vec![Event::Error(MSG_ENROLL.into())],
        ),
        (ResponseBody::Disabled, PamCode::Ignore, vec![]),
        // A remembered device: accepted without a code.
        (
            ResponseBody::Accepted {
                method: Method::Remembered,
                backup_codes_left: None,
            },
            PamCode::Success,
            vec![],
        ),
        // "Accepted" by code before any code was typed: fail closed.
        (
            ResponseBody::Accepted {
                method: Method::Totp,
                backup_codes_left: None,
            },
            PamCode::AuthInfoUnavail,
            vec![Event::Error(MSG_UNAVAILABLE.into())],
        ),
        (
            ResponseBody::Rejected,
            PamCode::AuthErr,
            vec![Event::Error(MSG_INVALID.into())],
        ),
        (
            ResponseBody::Error {
                kind: ErrorKind::Busy,
                message: "busy".into(),
            },
            PamCode::AuthInfoUnavail,
            vec![Event::Error(MSG_UNAVAILABLE.into())],
        ),
    ];
    for (answer, want, messages) in cases {
        let label = format!("{answer:?}");
        let d = FakeDaemon::start(vec![Reply::Body(answer)]);
        let mut pam = Script::new("alice", messages);
        assert_eq!(run(&mut pam, &d.args(&[]), 0), want, "{label}");
        assert_eq!(
            d.requests().iter().map(op).collect::<Vec<_>>(),
            ["preflight"],
            "{label}"
        );
    }
}

#[test]
fn outcome_table() {
    // Everything but an explicit acceptance or "not applicable" keeps the user out.
    for outcome in [
        Outcome::Rejected,
        Outcome::Throttled {
            retry_after_secs: 0,
        },
        Outcome::Locked,
        Outcome::EnrollmentRequired(None),
        Outcome::EnrollmentRequired(Some("why".into())),
        Outcome::EnrollmentNotConfirmed,
        Outcome::Unavailable,
        Outcome::ConversationFailed,
        Outcome::Misconfigured,
    ] {
        let (code, _) = outcome.result();
        assert!(
            code != PamCode::Success && code != PamCode::Ignore,
            "{outcome:?}"
        );
    }
    let minutes = |secs| match (Outcome::Throttled {
        retry_after_secs: secs,
    })
    .result()
    {
        (PamCode::MaxTries, Some(Message::Error(m))) => m,
        other => panic!("{other:?}"),
    };
    assert!(minutes(0).contains(" 1 min."));
    assert!(minutes(60).contains(" 1 min."));
    assert!(minutes(900).contains(" 15 min."));
    assert!(minutes(901).contains(" 16 min."));
    assert!(minutes(u64::MAX).contains(&format!(" {} min.", u64::MAX.div_ceil(60))));
}

#[test]
fn malformed_or_foreign_replies_fail_closed() {
    for raw in [
        "not json",
        r#"{"v":1,"body":{"result":"accepted"}}"#,
        r#"{"v":1,"body":{"result":"accepted","method":"totp","extra":true}}"#,
        r#"{"v":2,"body":{"result":"accepted","method":"totp"}}"#,
        r#"{"body":{"result":"accepted","method":"totp"}}"#,
    ] {
        let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::Prompt), Reply::Raw(raw)]);
        let mut pam = Script::new(
            "alice",
            vec![prompt(CODE), Event::Error(MSG_UNAVAILABLE.into())],
        );
        assert_eq!(
            run(&mut pam, &d.args(&[]), 0),
            PamCode::AuthInfoUnavail,
            "{raw}"
        );
        assert!(!pam.logs.is_empty(), "{raw}: nothing logged");
    }
}

#[test]
fn unreachable_daemon_is_unavailable_and_logged_without_prompting() {
    let dir = tempfile::tempdir().unwrap();
    let args = [CString::new(format!("socket={}/none", dir.path().display())).unwrap()];
    let mut pam = Script::new("alice", vec![Event::Error(MSG_UNAVAILABLE.into())]);
    assert_eq!(run(&mut pam, &args, 0), PamCode::AuthInfoUnavail);
    assert!(pam.logged("cannot reach twofoldd"), "{:?}", pam.logs);
    assert!(pam.logs.iter().all(|(l, _)| *l == LogLevel::Error));
}

#[test]
fn silent_daemon_times_out() {
    let d = FakeDaemon::start(vec![Reply::Silent]);
    let mut pam = Script::new("alice", vec![Event::Error(MSG_UNAVAILABLE.into())]);
    let args = d.args(&["timeout=1"]);
    let started = Instant::now();
    assert_eq!(run(&mut pam, &args, 0), PamCode::AuthInfoUnavail);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(pam.logged("did not answer in time"), "{:?}", pam.logs);
}

#[test]
fn conversation_failures() {
    for answer in [Answer::Nothing, Answer::Fail] {
        let label = format!("{answer:?}");
        let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::Prompt)]);
        let mut pam = Script::new(
            "alice",
            vec![Event::Prompt {
                text: "Verification code: ".into(),
                echo: false,
                answer,
            }],
        );
        assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::ConvErr, "{label}");
        // Nothing is verified.
        assert_eq!(d.requests().len(), 1, "{label}");
    }
    let mut pam = Script::new("alice", vec![]);
    pam.user = Err(UserError::Conversation);
    assert_eq!(run(&mut pam, &[], 0), PamCode::ConvErr);
    let mut pam = Script::new("alice", vec![]);
    pam.user = Err(UserError::Other);
    assert_eq!(run(&mut pam, &[], 0), PamCode::ServiceErr);
}

#[test]
fn silent_flag_suppresses_information_but_not_the_reason_for_a_refusal() {
    let d = FakeDaemon::start(vec![
        Reply::Body(ResponseBody::Prompt),
        Reply::Body(ResponseBody::Rejected),
    ]);
    // The prompt is still shown, and so is why the login was refused.
    let mut pam = Script::new(
        "alice",
        vec![prompt(CODE), Event::Error(MSG_INVALID.into())],
    );
    assert_eq!(run(&mut pam, &d.args(&[]), PAM_SILENT), PamCode::AuthErr);
    let d = FakeDaemon::start(vec![
        Reply::Body(ResponseBody::Prompt),
        Reply::Body(ResponseBody::Accepted {
            method: Method::BackupCode,
            backup_codes_left: Some(3),
        }),
    ]);
    let mut pam = Script::new("alice", vec![prompt("abcd-efgh-ijkl-mnop")]);
    assert_eq!(run(&mut pam, &d.args(&[]), PAM_SILENT), PamCode::Success);
}

#[test]
fn bad_arguments_refuse_before_anything_else() {
    for bad in ["nosuch", "timeout=0", "timeout=31", "[prompt=unclosed"] {
        let d = FakeDaemon::start(vec![]);
        let mut pam = Script::new("alice", vec![]);
        let args = d.args(&[bad]);
        assert_eq!(run(&mut pam, &args, 0), PamCode::ServiceErr, "{bad}");
        assert!(pam.logged("refusing to run"), "{bad}: {:?}", pam.logs);
        assert!(d.requests().is_empty(), "{bad}");
    }
    let d = FakeDaemon::start(vec![]);
    let mut pam = Script::new("alice", vec![]);
    run(&mut pam, &d.args(&["bogus\x1b]0;pwned\x07"]), 0);
    assert!(pam
        .logs
        .iter()
        .all(|(_, l)| !l.chars().any(char::is_control)));
}

#[test]
fn prompt_text_and_echo_come_from_arguments() {
    let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::Prompt), accepted_totp()]);
    let mut pam = Script::new(
        "alice",
        vec![Event::Prompt {
            text: "Your code: ".into(),
            echo: true,
            answer: Answer::Code(CODE.into()),
        }],
    );
    let args = d.args(&["[prompt=Your", "code:", "]", "echo"]);
    assert_eq!(run(&mut pam, &args, 0), PamCode::Success);
}

#[test]
fn names_no_account_can_have_look_like_wrong_codes() {
    let long = "a".repeat(twofold_shared::wire::MAX_NAME + 1);
    for name in [
        b"".to_vec(),
        b"al\xffice".to_vec(),
        long.into_bytes(),
        b"a b".to_vec(),
        b"../etc".to_vec(),
        b"a\nb".to_vec(),
    ] {
        let d = FakeDaemon::start(vec![]);
        let mut pam = Script::new("", vec![prompt(CODE), Event::Error(MSG_INVALID.into())]);
        pam.user = Ok(name.clone());
        assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::AuthErr, "{name:?}");
        assert!(d.requests().is_empty(), "{name:?}");
    }
}

#[test]
fn hostile_items_and_answers_are_bounded() {
    let d = FakeDaemon::start(vec![
        Reply::Body(ResponseBody::Prompt),
        Reply::Body(ResponseBody::Rejected),
    ]);
    let pasted = format!("{CODE}{}", " é".repeat(100_000));
    let mut pam = Script::new(
        "alice",
        vec![prompt(&pasted), Event::Error(MSG_INVALID.into())],
    );
    pam.rhost = Some(vec![b'h'; 10_000]);
    pam.service = Some(b"ss\xffhd".to_vec());
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::AuthErr);
    let requests = d.requests();
    let RequestBody::Verify { code, pam, .. } = &requests[1].body else {
        panic!("{:?}", requests[1]);
    };
    // Just over the limit, so the daemon still sees a wrong code rather than "492039".
    assert!(code.expose().len() > MAX_CODE && code.expose().len() <= MAX_CODE + 4);
    assert_eq!(pam.rhost.as_deref().map(str::len), Some(MAX_ITEM));
    assert_eq!(pam.service.as_deref(), Some("ss\u{fffd}hd"));
}

#[test]
fn daemon_text_is_logged_without_control_characters() {
    let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::Error {
        kind: ErrorKind::Internal,
        message: "oops\x1b[2J\nforged log line".into(),
    })]);
    let mut pam = Script::new("alice", vec![Event::Error(MSG_UNAVAILABLE.into())]);
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::AuthInfoUnavail);
    assert!(pam.logged("oops[2Jforged log line"), "{:?}", pam.logs);
}

#[test]
fn debug_logs_the_outcome_never_the_code() {
    let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::Prompt), accepted_totp()]);
    let mut pam = Script::new("alice", vec![prompt(CODE)]);
    assert_eq!(run(&mut pam, &d.args(&["debug"]), 0), PamCode::Success);
    assert!(
        pam.logs
            .contains(&(LogLevel::Debug, "user=alice outcome=accepted".into())),
        "{:?}",
        pam.logs
    );
    // Script's drop checks that CODE is in no log line.
}

// ---------------------------------------------------------------------------------------------
// Email codes

fn email_sent(masked: &str) -> Reply {
    Reply::Body(ResponseBody::EmailSent {
        masked: masked.into(),
    })
}

fn mailed_prompt_event(masked: &str, answer: &str) -> Event {
    Event::Prompt {
        text: format!("Code sent to {masked}: "),
        echo: false,
        answer: Answer::Code(answer.into()),
    }
}

#[test]
fn typing_email_mails_a_code_and_verifies_the_answer_on_fresh_connections() {
    let d = FakeDaemon::start(vec![
        Reply::Body(ResponseBody::Prompt),
        email_sent("a***@example.org\u{1b}[2J"),
        Reply::Body(ResponseBody::Accepted {
            method: Method::Email,
            backup_codes_left: None,
        }),
    ]);
    let mut pam = Script::new(
        "alice",
        vec![
            prompt("  EMail "),
            mailed_prompt_event("a***@example.org[2J", "123-456"),
        ],
    );
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::Success);
    let requests = d.requests();
    let ops: Vec<_> = requests.iter().map(op).collect();
    assert_eq!(ops, ["preflight", "send_email_code", "verify"]);
    match &requests[1].body {
        RequestBody::SendEmailCode { user, pam } => {
            assert_eq!(user, "alice");
            assert_eq!(pam.service.as_deref(), Some("sshd"));
        }
        other => panic!("{other:?}"),
    }
    match &requests[2].body {
        RequestBody::Verify { code, .. } => assert_eq!(code.expose(), "123-456"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn relay_down_fails_closed_with_its_own_message() {
    let d = FakeDaemon::start(vec![
        Reply::Body(ResponseBody::Prompt),
        Reply::Body(ResponseBody::Error {
            kind: ErrorKind::MailFailed,
            message: "the relay did not answer".into(),
        }),
    ]);
    let mut pam = Script::new(
        "alice",
        vec![prompt("email"), Event::Error(MSG_MAIL_FAILED.into())],
    );
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::AuthInfoUnavail);
    assert!(pam.logged("could not mail"));
    assert_eq!(d.requests().len(), 2);
}

#[test]
fn email_answers_map_to_pam_results() {
    let cases: Vec<(ResponseBody, PamCode, &str)> = vec![
        // Email codes off, or no verified address: like a wrong code.
        (ResponseBody::Rejected, PamCode::AuthErr, MSG_INVALID),
        (ResponseBody::Locked, PamCode::MaxTries, MSG_LOCKED),
        (
            ResponseBody::Error {
                kind: ErrorKind::RateLimited,
                message: "wait".into(),
            },
            PamCode::AuthErr,
            MSG_MAIL_TOO_SOON,
        ),
        (
            ResponseBody::Error {
                kind: ErrorKind::Storage,
                message: "disk full".into(),
            },
            PamCode::AuthInfoUnavail,
            MSG_UNAVAILABLE,
        ),
        // The prompt was shown: "not enrolled" or "switched off" now is a refusal.
        (
            ResponseBody::NotEnrolled {
                required: false,
                reason: None,
            },
            PamCode::AuthErr,
            MSG_INVALID,
        ),
        (ResponseBody::Disabled, PamCode::AuthErr, MSG_INVALID),
        // An acceptance where a mail was asked for is nonsense, even "remembered": fail closed.
        (
            ResponseBody::Accepted {
                method: Method::Remembered,
                backup_codes_left: None,
            },
            PamCode::AuthInfoUnavail,
            MSG_UNAVAILABLE,
        ),
        (
            ResponseBody::Accepted {
                method: Method::Email,
                backup_codes_left: None,
            },
            PamCode::AuthInfoUnavail,
            MSG_UNAVAILABLE,
        ),
    ];
    for (answer, want, message) in cases {
        let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::Prompt), Reply::Body(answer)]);
        let mut pam = Script::new("alice", vec![prompt("email"), Event::Error(message.into())]);
        assert_eq!(run(&mut pam, &d.args(&[]), 0), want, "{message}");
        assert_eq!(
            d.requests().len(),
            2,
            "no verification after a refused mail"
        );
    }
}

#[test]
fn email_auto_preflight_prompts_for_the_mailed_code() {
    let d = FakeDaemon::start(vec![
        email_sent("b***@example.org"),
        Reply::Body(ResponseBody::Rejected),
    ]);
    let mut pam = Script::new(
        "bob",
        vec![
            mailed_prompt_event("b***@example.org", "email"),
            Event::Error(MSG_INVALID.into()),
        ],
    );
    // At the mailed-code prompt, "email" is just a wrong answer: no second mail.
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::AuthErr);
    let ops: Vec<_> = d.requests().iter().map(op).collect();
    assert_eq!(ops, ["preflight", "verify"]);
}

#[test]
fn a_mailed_code_prompt_followed_by_not_enrolled_is_a_refusal() {
    // Finding 1 of the 2026-11 review: a daemon that answers "not enrolled" after it had a
    // code mailed (any answer that was not six digits) must not turn into PAM_IGNORE.
    for late in [
        ResponseBody::NotEnrolled {
            required: false,
            reason: None,
        },
        ResponseBody::Disabled,
    ] {
        let d = FakeDaemon::start(vec![email_sent("b***@example.org"), Reply::Body(late)]);
        let mut pam = Script::new(
            "bob",
            vec![
                mailed_prompt_event("b***@example.org", "x"),
                Event::Error(MSG_INVALID.into()),
            ],
        );
        assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::AuthErr);
    }
}

mod combined;
mod enroll;
