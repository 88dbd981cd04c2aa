//! Email codes end to end: a real twofoldd mailing through a real SMTP listener inside the test
//! (or a stand-in sendmail program), the real `twofold` CLI, and pam_twofold.so under pamtester
//! and pam_wrapper. Codes are read from the mail the listener received.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use twofold_tests::*;

const INVALID: &str = "Invalid verification code.";
const MAIL_FAILED: &str = "Could not send the code by email.";
const TOO_SOON: &str = "A code was sent by email moments ago";
/// pam_strerror(PAM_AUTHINFO_UNAVAIL), as pamtester prints it.
const AUTHINFO_UNAVAIL: &str = "Authentication service cannot retrieve authentication info";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn address(user: &str) -> String {
    format!("{user}@example.org")
}

fn masked(user: &str) -> String {
    format!("{}***@example.org", &user[..1])
}

/// Registers and verifies the test user's address through the CLI; returns the code mailed.
fn register(daemon: &Daemon, sink: &SmtpSink, user: &str) -> String {
    let before = sink.messages().len();
    let set = daemon.cli(&["email", "set", &address(user), "--user", user]);
    assert_eq!(set.status.code(), Some(0), "{}", text(&set));
    assert!(
        text(&set).contains(&format!("A code was sent to {}", masked(user))),
        "{}",
        text(&set)
    );
    let mail = sink.wait_for(before + 1);
    assert!(
        mail.contains(&format!("RCPT TO:<{}>", address(user))),
        "{mail}"
    );
    assert!(
        mail.contains("Subject: pam-test: confirm your email address"),
        "{mail}"
    );
    let code = mailed_code(&mail);
    // A wrong code first: refused, the address stays unverified.
    let wrong = daemon.cli(&["email", "confirm", "000-000", "--user", user]);
    if code != "000-000" {
        assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    }
    let ok = daemon.cli(&["email", "confirm", &code, "--user", user]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    code
}

fn mail_config(sink: &SmtpSink, extra: &str) -> String {
    format!("email_codes = true\n{extra}\n{}", sink.config())
}

/// The user types `email`, waits for the mail and answers with what `answer` makes of its code.
fn login_by_email(
    pam: &PamService,
    sink: &SmtpSink,
    user: &str,
    answer: impl FnOnce(&str) -> String,
) -> (PamRun, String) {
    let n = sink.messages().len() + 1;
    let mut code = String::new();
    let run = pam.authenticate_then(user, "email\n", || {
        code = mailed_code(&sink.wait_for(n));
        Some(format!("{}\n", answer(&code)))
    });
    (run, code)
}

#[test]
fn email_set_confirm_and_login_by_email_at_the_prompt() {
    let sink = SmtpSink::start();
    // Generous throttle: this test makes many wrong tries on purpose; no resend wait.
    let daemon = Daemon::start(
        "allow",
        &mail_config(
            &sink,
            "email_resend_secs = 0\n[throttle]\nfree_failures = 50",
        ),
    );
    let user = my_name();
    let e = daemon.enroll(&user);
    let verify_code = register(&daemon, &sink, &user);

    // Status shows the masked address, verified.
    let status = daemon.cli(&["status", "--user", &user, "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["email"], masked(&user));
    assert_eq!(s["email_verified"], true);
    let human = daemon.cli(&["status", "--user", &user]);
    assert!(
        text(&human).contains(&format!("Email:         {} (verified)", masked(&user))),
        "{}",
        text(&human)
    );

    let pam = PamService::required(&daemon.socket, "");
    // 1. The code as the mail shows it (123-456).
    let (run, code1) = login_by_email(&pam, &sink, &user, |c| c.to_string());
    assert!(run.success, "{}", run.text());
    assert!(
        run.text()
            .contains(&format!("Code sent to {}: ", masked(&user))),
        "{}",
        run.text()
    );
    let mail = sink.messages().last().unwrap().clone();
    assert!(
        mail.contains("Subject: pam-test: your login code"),
        "{mail}"
    );
    assert!(mail.contains(&format!("    {code1}")), "{mail}");

    // 2. Used once: the same code at the ordinary prompt is refused.
    let reuse = pam.authenticate(&user, Some(&format!("{code1}\n")));
    assert!(
        !reuse.success && reuse.text().contains(INVALID),
        "{}",
        reuse.text()
    );

    // 3. Without the dash.
    let (run, code2) = login_by_email(&pam, &sink, &user, |c| c.replace('-', ""));
    assert!(run.success, "{}", run.text());

    // 4. A wrong answer is refused; after five wrong tries the right code is dead.
    let wrong = |code: &str| {
        let mut w = wrong_code(&e.secret);
        if w == code.replace('-', "") {
            w = format!("{:06}", (w.parse::<u32>().unwrap() + 1) % 1_000_000);
        }
        w
    };
    let (run, code3) = login_by_email(&pam, &sink, &user, |c| wrong(c));
    assert!(
        !run.success && run.text().contains(INVALID),
        "{}",
        run.text()
    );
    for _ in 0..4 {
        let w = wrong(&code3);
        let run = pam.authenticate(&user, Some(&format!("{w}\n")));
        assert!(!run.success, "{}", run.text());
    }
    let dead = pam.authenticate(&user, Some(&format!("{code3}\n")));
    assert!(
        !dead.success && dead.text().contains(INVALID),
        "{}",
        dead.text()
    );

    // No code in the daemon's log or the audit trail; every mail is in the trail.
    let log = daemon.log();
    let audit = daemon.cli(&["audit", "--json"]);
    let trail = String::from_utf8_lossy(&audit.stdout).into_owned();
    for code in [&verify_code, &code1, &code2, &code3] {
        for form in [code.clone(), code.replace('-', "")] {
            assert!(!log.contains(&form), "code in the log: {log}");
            assert!(!trail.contains(&form), "code in the audit trail: {trail}");
        }
    }
    assert!(log.contains("outcome=sent"), "{log}");
    let v: serde_json::Value = serde_json::from_str(&trail).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|a| a["event"] == "email" && a["outcome"] == "sent")
            .count(),
        4
    );
    assert_eq!(
        entries
            .iter()
            .filter(|a| a["method"] == "email" && a["outcome"] == "accepted")
            .count(),
        2
    );
}

#[test]
fn email_auto_mails_users_without_an_app() {
    let sink = SmtpSink::start();
    let daemon = Daemon::start("deny", &mail_config(&sink, "email_auto = true"));
    let user = my_name();
    register(&daemon, &sink, &user);
    let pam = PamService::required(&daemon.socket, "");
    // No app: the first prompt is already the mailed code's.
    let run = pam.authenticate_then(&user, "", || {
        Some(format!("{}\n", mailed_code(&sink.wait_for(2))))
    });
    assert!(run.success, "{}", run.text());
    assert!(
        run.text()
            .contains(&format!("Code sent to {}: ", masked(&user))),
        "{}",
        run.text()
    );
    assert!(
        !run.text().contains("Verification code: "),
        "{}",
        run.text()
    );
}

/// Finding 1 of the 2026-11 review: with email as the only factor (`email_auto`) under
/// `unenrolled = "allow"`, any answer that was not six digits became "not enrolled" and
/// PAM_IGNORE, and the recommended SSH stack (`ignore=ignore`, then pam_permit) let it through.
#[test]
fn email_only_logins_are_refused_whatever_is_typed_under_allow() {
    let sink = SmtpSink::start();
    let daemon = Daemon::start(
        "allow",
        &mail_config(&sink, "email_auto = true\n[throttle]\nfree_failures = 6"),
    );
    let user = my_name();
    register(&daemon, &sink, &user);
    let pam = PamService::new(&format!(
        "auth [success=ok ignore=ignore default=die] MODULE {}\nauth required pam_permit.so\n",
        module_args(&daemon.socket)
    ));
    for answer in ["x\n", "\n", "12345\n", "abcdef\n", "000-00\n"] {
        let run = pam.authenticate(&user, Some(answer));
        assert!(
            !run.success,
            "{answer:?} let the login through: {}",
            run.text()
        );
        assert!(
            run.text()
                .contains(&format!("Code sent to {}: ", masked(&user))),
            "{}",
            run.text()
        );
        assert!(run.text().contains(INVALID), "{answer:?}: {}", run.text());
    }
    // The administrator's check of a non-code is a wrong code too (exit 1), not "not enrolled".
    let verify = daemon.cli(&["verify", &user, "x"]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    // Six failures: throttled now, whatever is typed.
    for answer in ["x\n", "\n"] {
        let run = pam.authenticate(&user, Some(answer));
        assert!(!run.success, "{}", run.text());
        assert!(
            run.text().contains("Too many failed attempts"),
            "{}",
            run.text()
        );
    }
    let audit = daemon.cli(&["audit", "--user", &user, "--json"]);
    let trail = String::from_utf8_lossy(&audit.stdout);
    assert!(!trail.contains("ignored-not-enrolled"), "{trail}");
}

#[test]
fn resend_limit_then_relay_down_fails_closed() {
    let sink = SmtpSink::start();
    let daemon = Daemon::start("allow", &mail_config(&sink, ""));
    let user = my_name();
    daemon.enroll(&user);
    register(&daemon, &sink, &user);
    let pam = PamService::required(&daemon.socket, "");
    let (run, _) = login_by_email(&pam, &sink, &user, |c| c.to_string());
    assert!(run.success, "{}", run.text());
    // A second mail within the minute: refused with the reason, and nothing is sent.
    let again = pam.authenticate(&user, Some("email\n"));
    assert!(
        !again.success && again.text().contains(TOO_SOON),
        "{}",
        again.text()
    );
    let set_again = daemon.cli(&["email", "set", &address(&user), "--user", &user]);
    assert_eq!(set_again.status.code(), Some(3), "{}", text(&set_again));
    assert!(
        text(&set_again).contains("wait a minute"),
        "{}",
        text(&set_again)
    );
    assert_eq!(sink.messages().len(), 2, "no mail beyond the limit");
    drop(daemon);

    // The relay goes down: logins that ask for a mail fail closed, and so does email set.
    let mut sink = sink;
    let daemon = Daemon::start("allow", &mail_config(&sink, "email_resend_secs = 0"));
    daemon.enroll(&user);
    register(&daemon, &sink, &user);
    sink.shut();
    let down = pam_for(&daemon).authenticate(&user, Some("email\n"));
    assert!(!down.success, "{}", down.text());
    assert!(down.text().contains(MAIL_FAILED), "{}", down.text());
    assert!(down.text().contains(AUTHINFO_UNAVAIL), "{}", down.text());
    let set = daemon.cli(&["email", "set", "other@example.org", "--user", &user]);
    assert_eq!(set.status.code(), Some(2), "{}", text(&set));
    assert!(
        text(&set).contains("could not be sent by email"),
        "{}",
        text(&set)
    );
    // The address in force is still the verified one.
    let status = daemon.cli(&["status", "--user", &user, "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["email"], masked(&user));
    assert_eq!(s["email_verified"], true);
}

fn pam_for(daemon: &Daemon) -> PamService {
    PamService::required(&daemon.socket, "")
}

#[test]
fn sendmail_transport_runs_the_configured_program() {
    let dir = open_tempdir();
    let program = dir.path().join("sendmail");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\necho \"$*\" > {0}/args\ncat > {0}/message.tmp && mv {0}/message.tmp {0}/message\n",
            spool.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(
        "allow",
        &format!(
            "email_codes = true\n[email]\nfrom = \"twofold@pam-test.example\"\ntransport = \"sendmail\"\nsendmail = {:?}\n",
            program
        ),
    );
    let user = my_name();
    let set = daemon.cli(&["email", "set", &address(&user), "--user", &user, "--json"]);
    assert_eq!(set.status.code(), Some(0), "{}", text(&set));
    let reply: serde_json::Value = serde_json::from_slice(&set.stdout).unwrap();
    assert_eq!(reply["masked"], masked(&user));
    let message = std::fs::read_to_string(spool.join("message")).unwrap();
    let args = std::fs::read_to_string(spool.join("args")).unwrap();
    assert_eq!(
        args.trim(),
        format!("-i -f twofold@pam-test.example -- {}", address(&user))
    );
    assert!(
        message.contains(&format!("To: {}", address(&user))),
        "{message}"
    );
    let code = mailed_code(&message);
    let ok = daemon.cli(&["email", "confirm", &code.replace('-', ""), "--user", &user]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let remove = daemon.cli(&["email", "remove", "--user", &user]);
    assert_eq!(remove.status.code(), Some(0), "{}", text(&remove));
    let status = daemon.cli(&["status", "--user", &user, "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(s["email"].is_null(), "{s}");
}
