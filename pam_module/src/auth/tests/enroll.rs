//! Enrollment in the login's conversation, against a scripted conversation and a fake daemon.

use super::*;
use crate::enroll::{ACK_PROMPT, MSG_NOT_CONFIRMED, MSG_WRONG_FIRST_CODE};
use twofold_shared::display;
use twofold_shared::otp::Algorithm;
use twofold_shared::wire::{EnrollmentInfo, LoginEnrollment};

const KEY: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

fn offer() -> Reply {
    Reply::Body(ResponseBody::EnrollAtLogin(LoginEnrollment {
        info: EnrollmentInfo {
            user: "alice".into(),
            issuer: "host".into(),
            label: "host:alice".into(),
            secret: SecretText::new(KEY),
            otpauth_uri: SecretText::new(format!("otpauth://totp/host:alice?secret={KEY}")),
            algorithm: Algorithm::Sha1,
            digits: 6,
            period: 30,
        },
        // Control characters from the daemon are dropped like any other text of its.
        qr: SecretText::new("█▀ ▄\n▄\u{1b}[31m ▀█"),
        qr_inverted: SecretText::new(" ▄█▀\n▀█▄ "),
    }))
}

fn info(text: &str) -> Event {
    Event::Info(text.into())
}

/// What the user sees before the first prompt.
fn shown() -> Vec<Event> {
    let mut events = vec![
        info("Two-factor authentication must be set up for this account now."),
        info(display::SCAN),
        info("█▀ ▄"),
        info("▄[31m ▀█"),
    ];
    events.extend(
        display::key_lines("host:alice", KEY, Algorithm::Sha1, 6, 30)
            .iter()
            .map(|l| info(l)),
    );
    events
}

fn first_code(answer: &str) -> Event {
    Event::Prompt {
        text: "6-digit code from the app (or 'invert' if the QR code won't scan): ".into(),
        echo: false,
        answer: Answer::Code(answer.into()),
    }
}

fn codes() -> Vec<SecretText> {
    [
        "aaaa-bbbb-cccc-dddd",
        "eeee-ffff-gggg-hhhh",
        "2222-3333-4444-5555",
    ]
    .into_iter()
    .map(SecretText::new)
    .collect()
}

#[test]
fn enrolls_in_the_conversation_and_shows_the_backup_codes() {
    let d = FakeDaemon::start(vec![
        offer(),
        Reply::Body(ResponseBody::Rejected),
        Reply::Body(ResponseBody::EnrolledAtLogin { codes: codes() }),
    ]);
    let mut events = shown();
    // "invert" redraws the code for a light terminal and is not a try.
    events.extend([first_code("invert"), info(" ▄█▀"), info("▀█▄ ")]);
    events.extend([
        first_code("111111"),
        Event::Error(MSG_WRONG_FIRST_CODE.into()),
        first_code(CODE),
        info("Two-factor authentication is now active."),
        info(""),
    ]);
    events.extend(display::BACKUP_ADVICE.iter().map(|l| info(l)));
    events.extend(display::backup_code_lines(&codes()).iter().map(|l| info(l)));
    events.push(Event::Prompt {
        text: ACK_PROMPT.into(),
        echo: true,
        answer: Answer::Code(String::new()),
    });
    let mut pam = Script::new("alice", events);
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::Success);
    assert!(!pam.logged(KEY), "the key reached the log");
    let requests = d.requests();
    assert_eq!(
        requests.iter().map(op).collect::<Vec<_>>(),
        ["preflight", "confirm_login", "confirm_login"]
    );
    assert!(matches!(
        &requests[0].body,
        RequestBody::Preflight {
            can_enroll: true,
            ..
        }
    ));
    match &requests[2].body {
        RequestBody::ConfirmLogin { user, code, pam } => {
            assert_eq!((user.as_str(), code.expose()), ("alice", CODE));
            assert_eq!(pam.service.as_deref(), Some("sshd"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn three_wrong_first_codes_refuse_the_login() {
    let d = FakeDaemon::start(vec![
        offer(),
        Reply::Body(ResponseBody::Rejected),
        Reply::Body(ResponseBody::Rejected),
        Reply::Body(ResponseBody::Rejected),
    ]);
    let mut events = shown();
    for _ in 0..2 {
        events.push(first_code("111111"));
        events.push(Event::Error(MSG_WRONG_FIRST_CODE.into()));
    }
    events.push(first_code("111111"));
    events.push(Event::Error(MSG_NOT_CONFIRMED.into()));
    let mut pam = Script::new("alice", events);
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::AuthErr);
    assert_eq!(d.requests().len(), 4);
}

#[test]
fn an_interrupted_enrollment_asks_nothing_more() {
    for answer in [Answer::Nothing, Answer::Fail] {
        let d = FakeDaemon::start(vec![offer()]);
        let mut events = shown();
        events.push(Event::Prompt {
            text: "6-digit code from the app (or 'invert' if the QR code won't scan): ".into(),
            echo: false,
            answer,
        });
        let mut pam = Script::new("alice", events);
        assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::ConvErr);
        assert_eq!(d.requests().len(), 1, "no confirmation was sent");
    }
}

/// After the enrollment was shown, only an explicit acceptance lets the login through.
#[test]
fn anything_but_acceptance_after_the_offer_keeps_the_user_out() {
    let throttled = "Too many failed attempts; try again in 1 min.";
    for (answer, want, message) in [
        (
            ResponseBody::NotEnrolled {
                required: false,
                reason: None,
            },
            PamCode::AuthErr,
            MSG_INVALID,
        ),
        (ResponseBody::Disabled, PamCode::AuthErr, MSG_INVALID),
        (
            ResponseBody::Prompt,
            PamCode::AuthInfoUnavail,
            MSG_UNAVAILABLE,
        ),
        (
            ResponseBody::Throttled {
                retry_after_secs: 60,
            },
            PamCode::MaxTries,
            throttled,
        ),
        (
            ResponseBody::Accepted {
                method: Method::Remembered,
                backup_codes_left: None,
            },
            PamCode::AuthInfoUnavail,
            MSG_UNAVAILABLE,
        ),
    ] {
        let label = format!("{answer:?}");
        let d = FakeDaemon::start(vec![offer(), Reply::Body(answer)]);
        let mut events = shown();
        events.push(first_code(CODE));
        events.push(Event::Error(message.into()));
        let mut pam = Script::new("alice", events);
        assert_eq!(run(&mut pam, &d.args(&[]), 0), want, "{label}");
    }
}

/// The old factor of a --replace invitation answers the first-code prompt too.
#[test]
fn the_old_factor_is_accepted_at_a_replacement() {
    let d = FakeDaemon::start(vec![offer(), accepted_totp()]);
    let mut events = shown();
    events.push(first_code(CODE));
    let mut pam = Script::new("alice", events);
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::Success);
}

#[test]
fn silent_or_noenroll_logins_do_not_offer_to_enroll() {
    let reason = "Two-factor enrollment required, but this login cannot show the QR code.";
    for (flags, extra) in [(PAM_SILENT, vec![]), (0, vec!["noenroll"])] {
        let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::NotEnrolled {
            required: true,
            reason: Some(format!("{reason}\u{1b}[2J")),
        })]);
        let mut pam = Script::new("alice", vec![Event::Error(format!("{reason}[2J"))]);
        assert_eq!(run(&mut pam, &d.args(&extra), flags), PamCode::AuthErr);
        let requests = d.requests();
        assert!(matches!(
            &requests[0].body,
            RequestBody::Preflight {
                can_enroll: false,
                ..
            }
        ));
    }
}

/// A twofoldd older than the module (a package upgrade between unpack and restart) does not
/// know `can_enroll`: the preflight is asked again without it, and the login goes on.
#[test]
fn an_older_daemon_is_asked_again_without_can_enroll() {
    let d = FakeDaemon::start(vec![
        Reply::Body(ResponseBody::Error {
            kind: wire::ErrorKind::BadRequest,
            message: "unknown field `can_enroll`, expected one of `user`, `pam`, `grace_secs` at line 1 column 80".into(),
        }),
        Reply::Body(ResponseBody::Prompt),
        accepted_totp(),
    ]);
    let mut pam = Script::new("alice", vec![prompt(CODE)]);
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::Success);
    let requests = d.requests();
    assert!(matches!(
        &requests[1].body,
        RequestBody::Preflight {
            can_enroll: false,
            ..
        }
    ));
    // Any other refusal of the preflight is no reason to ask again.
    let d = FakeDaemon::start(vec![Reply::Body(ResponseBody::Error {
        kind: wire::ErrorKind::BadRequest,
        message: "a PAM item is longer than 256 bytes".into(),
    })]);
    let mut pam = Script::new("alice", vec![Event::Error(MSG_UNAVAILABLE.into())]);
    assert_eq!(run(&mut pam, &d.args(&[]), 0), PamCode::AuthInfoUnavail);
    assert_eq!(d.requests().len(), 1);
}
