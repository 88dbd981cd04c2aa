//! One answer for password and code (forward_pass, use_first_pass, try_first_pass), against a
//! scripted conversation and a fake daemon.

use super::*;

const PASSWORD: &str = "hunter 2";

fn ask(answer: &str) -> Event {
    Event::Prompt {
        text: "Password: ".into(),
        echo: false,
        answer: Answer::Code(answer.into()),
    }
}

fn prompt_combined(digits: u8) -> Reply {
    Reply::Body(ResponseBody::PromptCombined { digits })
}

fn both() -> String {
    format!("{PASSWORD}{CODE}")
}

#[test]
fn password_and_code_in_one_answer() {
    let d = FakeDaemon::start(vec![prompt_combined(6), accepted_totp()]);
    let mut pam = Script::new("alice", vec![ask(&both())]);
    assert_eq!(
        run(&mut pam, &d.args(&["forward_pass"]), 0),
        PamCode::Success
    );
    assert_eq!(
        pam.authtok.as_deref(),
        Some(PASSWORD),
        "the password goes on"
    );
    let requests = d.requests();
    assert_eq!(requests.len(), 2);
    match &requests[0].body {
        RequestBody::Preflight {
            combined,
            can_enroll,
            grace_secs,
            ..
        } => assert!(*combined && !*can_enroll && *grace_secs == 0),
        other => panic!("{other:?}"),
    }
    match &requests[1].body {
        RequestBody::Verify { code, .. } => assert_eq!(code.expose(), CODE),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wrong_code_looks_like_a_wrong_password() {
    let d = FakeDaemon::start(vec![
        prompt_combined(6),
        Reply::Body(ResponseBody::Rejected),
    ]);
    // No "Invalid verification code.": the script allows no message.
    let mut pam = Script::new("alice", vec![ask(&format!("{PASSWORD}000000"))]);
    assert_eq!(
        run(&mut pam, &d.args(&["forward_pass"]), 0),
        PamCode::AuthErr
    );
    assert_eq!(pam.authtok.as_deref(), Some(PASSWORD));
    // An answer without a code is checked (and counted) as a wrong code.
    let d = FakeDaemon::start(vec![
        prompt_combined(6),
        Reply::Body(ResponseBody::Rejected),
    ]);
    let mut pam = Script::new("alice", vec![ask("justapassword")]);
    assert_eq!(
        run(&mut pam, &d.args(&["forward_pass"]), 0),
        PamCode::AuthErr
    );
    match &d.requests()[1].body {
        RequestBody::Verify { code, .. } => assert_eq!(code.expose(), ""),
        other => panic!("{other:?}"),
    }
    assert_eq!(pam.authtok.as_deref(), Some("justapassword"));
}

#[test]
fn the_code_length_is_the_daemons() {
    let d = FakeDaemon::start(vec![prompt_combined(8), accepted_totp()]);
    let mut pam = Script::new("alice", vec![ask("pw12345678")]);
    assert_eq!(
        run(&mut pam, &d.args(&["forward_pass"]), 0),
        PamCode::Success
    );
    assert_eq!(pam.authtok.as_deref(), Some("pw"));
    match &d.requests()[1].body {
        RequestBody::Verify { code, .. } => assert_eq!(code.expose(), "12345678"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn use_first_pass_takes_the_earlier_answer_and_never_asks() {
    let d = FakeDaemon::start(vec![prompt_combined(6), accepted_totp()]);
    let mut pam = Script::new("alice", vec![]);
    pam.authtok = Some(both());
    assert_eq!(
        run(&mut pam, &d.args(&["use_first_pass"]), 0),
        PamCode::Success
    );
    assert_eq!(pam.authtok.as_deref(), Some(PASSWORD));
    // None set: a misconfigured stack, refused without a prompt or a verification.
    let d = FakeDaemon::start(vec![prompt_combined(6)]);
    let mut pam = Script::new("alice", vec![]);
    assert_eq!(
        run(&mut pam, &d.args(&["use_first_pass"]), 0),
        PamCode::ServiceErr
    );
    assert!(pam.logged("use_first_pass"));
    assert_eq!(d.requests().len(), 1);
}

#[test]
fn try_first_pass_asks_only_when_nothing_was_set() {
    let d = FakeDaemon::start(vec![prompt_combined(6), accepted_totp()]);
    let mut pam = Script::new("alice", vec![]);
    pam.authtok = Some(both());
    let args = d.args(&["try_first_pass"]);
    assert_eq!(run(&mut pam, &args, 0), PamCode::Success);
    let d = FakeDaemon::start(vec![prompt_combined(6), accepted_totp()]);
    let mut pam = Script::new("alice", vec![ask(&both())]);
    assert_eq!(
        run(&mut pam, &d.args(&["try_first_pass"]), 0),
        PamCode::Success
    );
    assert_eq!(pam.authtok.as_deref(), Some(PASSWORD));
}

#[test]
fn without_an_enrollment_the_whole_answer_is_the_password() {
    for reply in [
        ResponseBody::NotEnrolled {
            required: false,
            reason: None,
        },
        ResponseBody::Disabled,
    ] {
        let d = FakeDaemon::start(vec![Reply::Body(reply)]);
        let mut pam = Script::new("alice", vec![ask("pass123456")]);
        assert_eq!(
            run(&mut pam, &d.args(&["forward_pass"]), 0),
            PamCode::Ignore
        );
        assert_eq!(pam.authtok.as_deref(), Some("pass123456"));
        assert_eq!(d.requests().len(), 1, "no verification");
    }
}

#[test]
fn refusals_before_the_question_and_fail_closed_answers() {
    let cases = vec![
        (
            ResponseBody::Locked,
            PamCode::MaxTries,
            vec![Event::Error(MSG_LOCKED.into())],
        ),
        (
            ResponseBody::NotEnrolled {
                required: true,
                reason: None,
            },
            PamCode::AuthErr,
            vec![Event::Error(MSG_ENROLL.into())],
        ),
        // A plain prompt (no length of code), an acceptance before any code, an enrollment
        // offer: none belongs in a one-answer login.
        (
            ResponseBody::Prompt,
            PamCode::AuthInfoUnavail,
            vec![Event::Error(MSG_UNAVAILABLE.into())],
        ),
        (
            ResponseBody::Accepted {
                method: Method::Remembered,
                backup_codes_left: None,
            },
            PamCode::AuthInfoUnavail,
            vec![Event::Error(MSG_UNAVAILABLE.into())],
        ),
    ];
    for (reply, want, events) in cases {
        let d = FakeDaemon::start(vec![Reply::Body(reply)]);
        let mut pam = Script::new("alice", events);
        assert_eq!(run(&mut pam, &d.args(&["forward_pass"]), 0), want);
        assert_eq!(pam.authtok, None, "nothing handed on");
        assert_eq!(d.requests().len(), 1);
    }
}

#[test]
fn after_the_question_only_an_acceptance_lets_through() {
    let not_enrolled = ResponseBody::NotEnrolled {
        required: false,
        reason: None,
    };
    let cases = vec![
        (not_enrolled, PamCode::AuthErr, vec![]),
        (ResponseBody::Disabled, PamCode::AuthErr, vec![]),
        (
            ResponseBody::Prompt,
            PamCode::AuthInfoUnavail,
            vec![Event::Error(MSG_UNAVAILABLE.into())],
        ),
    ];
    for (reply, want, after) in cases {
        let d = FakeDaemon::start(vec![prompt_combined(6), Reply::Body(reply)]);
        let mut events = vec![ask(&both())];
        events.extend(after);
        let mut pam = Script::new("alice", events);
        assert_eq!(run(&mut pam, &d.args(&["forward_pass"]), 0), want);
    }
}

#[test]
fn a_mailed_code_is_asked_for_with_the_password() {
    let d = FakeDaemon::start(vec![
        Reply::Body(ResponseBody::EmailSent {
            masked: "a***@example.org".into(),
        }),
        Reply::Body(ResponseBody::Accepted {
            method: Method::Email,
            backup_codes_left: None,
        }),
    ]);
    let mut pam = Script::new(
        "alice",
        vec![Event::Prompt {
            text: "Password and the code sent to a***@example.org: ".into(),
            echo: false,
            answer: Answer::Code(both()),
        }],
    );
    assert_eq!(
        run(&mut pam, &d.args(&["forward_pass"]), 0),
        PamCode::Success
    );
    assert_eq!(pam.authtok.as_deref(), Some(PASSWORD));
}

#[test]
fn a_daemon_that_is_down_refuses_before_the_question() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<CString> = [
        format!("socket={}", dir.path().join("none").display()),
        "forward_pass".into(),
    ]
    .into_iter()
    .map(|a| CString::new(a).unwrap())
    .collect();
    let mut pam = Script::new("alice", vec![Event::Error(MSG_UNAVAILABLE.into())]);
    assert_eq!(run(&mut pam, &args, 0), PamCode::AuthInfoUnavail);
    assert_eq!(pam.authtok, None);
}

#[test]
fn a_name_no_account_can_have_is_asked_and_refused() {
    let d = FakeDaemon::start(vec![]);
    let mut pam = Script::new("bad/name", vec![ask(&both())]);
    assert_eq!(
        run(&mut pam, &d.args(&["forward_pass"]), 0),
        PamCode::AuthErr
    );
    assert_eq!(d.requests().len(), 0);
}
