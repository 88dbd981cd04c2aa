//! Enrollment at the login prompt, invitations and helpdesk codes, end to end: the real
//! twofoldd and CLI, pam_twofold.so under pamtester (pam_wrapper), and a real sshd with a real
//! `ssh` client on a terminal (tmux, 80 columns) whose QR code is read off the screen by zbar's
//! `zbarimg`. Codes come from oathtool.
//!
//! Needs root (throwaway accounts, sshd, /etc/pam.d); otherwise each test says SKIP and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;
use twofold_tests::*;

const WRONG_FIRST: &str = "That code is not right.";
const NOT_CONFIRMED: &str = "Two-factor enrollment not confirmed; log in again to try again.";
const FIRST_PROMPT: &str = "6-digit code from the app";

fn skip(test: &str) -> bool {
    skip_unless_root(
        test,
        "create accounts, start sshd and write /etc/pam.d/tf-sshd-*",
    )
}

/// The key the login showed (`Key:      ABCD EFGH ...`), without its spaces.
fn shown_key(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("Key:"))
        .unwrap_or_else(|| panic!("no key shown:\n{text}"))
        .split_whitespace()
        .collect()
}

/// Backup codes shown, `abcd-efgh-ijkl-mnop`.
fn shown_backup_codes(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|w| {
            w.len() == 19
                && w.split('-').count() == 4
                && w.split('-').all(|g| {
                    g.len() == 4
                        && g.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
        })
        .map(str::to_string)
        .collect()
}

fn status(d: &Daemon, user: &str) -> serde_json::Value {
    let run = d.cli(&["status", "--user", user, "--json"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    run.json()
}

fn audit_events(d: &Daemon, user: &str) -> Vec<String> {
    let run = d.cli(&["audit", "--user", user, "--json"]);
    run.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn an_invited_account_enrolls_at_the_prompt_then_logs_in_with_its_codes() {
    if skip("an_invited_account_enrolls_at_the_prompt_then_logs_in_with_its_codes") {
        return;
    }
    let d = Daemon::start("deny", "");
    let user = TestUser::create(&unique("tf-inv"));
    let svc = PamService::required(&d.socket, "");
    let invited = d.cli(&["invite", &user.name, "--for", "2h"]);
    assert_eq!(invited.code(), 0, "{}", invited.stderr());
    assert!(status(&d, &user.name)["invited_until"].is_u64());
    // The first login is interrupted (no answer): the enrollment waits, the invitation too.
    let first = svc.authenticate(&user.name, None);
    assert!(!first.success, "{}", first.text());
    let key = shown_key(&first.text());
    let blocks = qr_blocks(&first.stdout);
    let uri = zbar_decode(&blocks[0], true).expect("the QR code does not decode");
    assert_eq!(uri_secret(&uri), key, "{uri}");
    assert!(uri.contains(&user.name), "{uri}");
    let s = status(&d, &user.name);
    assert!(s["pending"] == true && s["enrolled"] == false, "{s}");
    // The next login shows a new key, read off the terminal; a wrong first code, then the
    // right one.
    let term = Terminal::start(&svc.command_line(&user.name));
    let screen = term.wait_for(FIRST_PROMPT, Duration::from_secs(20));
    let uri = zbar_decode(&qr_blocks(&screen)[0], true).expect("the QR code does not decode");
    let key2 = uri_secret(&uri);
    assert_ne!(key2, key, "a key shown once is not shown again");
    assert_eq!(shown_key(&screen), key2);
    term.type_line(&wrong_code(&key2));
    term.wait_for(WRONG_FIRST, Duration::from_secs(20));
    ensure_step_time(10);
    let code = oathtool(&key2, 0);
    term.type_line(&code);
    let screen = term.wait_for("Press Enter once", Duration::from_secs(20));
    assert!(screen.contains("Backup codes:"), "{screen}");
    let codes = shown_backup_codes(&screen);
    assert_eq!(codes.len(), 12, "{screen}");
    term.type_line("");
    let screen = term.wait_for("tf-terminal-exited-", Duration::from_secs(20));
    assert!(
        screen.contains("successfully authenticated"),
        "{screen}\n{}",
        d.log()
    );
    let key = key2;
    let s = status(&d, &user.name);
    assert!(
        s["enrolled"] == true && s.get("invited_until").is_none(),
        "{s}"
    );
    // From now on a login asks for a code like any other; the first code is spent.
    let replay = svc.authenticate(&user.name, Some(&format!("{code}\n")));
    assert!(!replay.success, "{}", replay.text());
    std::thread::sleep(Duration::from_secs(30 - unix_now() % 30) + Duration::from_millis(300));
    let next = svc.authenticate(&user.name, Some(&format!("{}\n", oathtool(&key, 0))));
    assert!(next.success, "{}\n{}", next.text(), d.log());
    let backup = svc.authenticate(&user.name, Some(&format!("{}\n", codes[0])));
    assert!(backup.success, "{}", backup.text());
    let trail = audit_events(&d, &user.name);
    for want in [
        "invite issued",
        "enroll pending",
        "confirm enrolled",
        "invite used",
    ] {
        assert!(trail.iter().any(|t| t == want), "{want}: {trail:?}");
    }
    // The key never reached the daemon's log.
    assert!(!d.log().contains(&key), "{}", d.log());
}

#[test]
fn three_wrong_first_codes_refuse_and_leave_the_enrollment_pending() {
    if skip("three_wrong_first_codes_refuse_and_leave_the_enrollment_pending") {
        return;
    }
    let d = Daemon::start("deny", "");
    let user = TestUser::create(&unique("tf-inw"));
    let svc = PamService::required(&d.socket, "");
    d.cli(&["invite", &user.name]);
    // Three answers that are no TOTP code of any key.
    let wrong = "12345";
    let run = svc.authenticate(&user.name, Some(&format!("{wrong}\n{wrong}\n{wrong}\n")));
    assert!(!run.success, "{}", run.text());
    assert_eq!(run.text().matches(WRONG_FIRST).count(), 2, "{}", run.text());
    assert!(run.text().contains(NOT_CONFIRMED), "{}", run.text());
    let s = status(&d, &user.name);
    assert!(
        s["pending"] == true && s["enrolled"] == false && s["invited_until"].is_u64(),
        "{s}"
    );
    // An answer the conversation cannot give (a client that cannot show the QR code).
    let silent = PamService::required(&d.socket, "noenroll");
    let run = silent.authenticate(&user.name, Some("\n"));
    assert!(!run.success);
    assert!(
        run.text().contains("this login cannot show the QR code"),
        "{}",
        run.text()
    );
}

#[test]
fn refusals_name_the_reason_and_the_administrator_s_next_step() {
    if skip("refusals_name_the_reason_and_the_administrator_s_next_step") {
        return;
    }
    let d = Daemon::start("deny", "");
    let user = TestUser::create(&unique("tf-inr"));
    let enrolled = TestUser::create(&unique("tf-inb"));
    let svc = PamService::required(&d.socket, "");
    let run = svc.authenticate(&user.name, Some("\n"));
    assert!(!run.success);
    let next_step = format!(
        "run 'twofold enroll', or ask an administrator to run 'twofold invite {}'",
        user.name
    );
    assert!(run.text().contains(&next_step), "{}", run.text());
    // An invitation and a helpdesk code, both expiring in 10 s.
    assert_eq!(d.cli(&["invite", &user.name, "--for", "10s"]).code(), 0);
    d.enroll(&enrolled.name);
    let issued = d.cli(&["bypass", &enrolled.name, "--for", "10s", "--json"]);
    assert_eq!(issued.code(), 0, "{}", issued.stderr());
    let bypass = issued.json()["code"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(11));
    let run = svc.authenticate(&user.name, Some("\n"));
    assert!(!run.success);
    assert!(
        run.text().contains("the invitation to enroll expired"),
        "{}",
        run.text()
    );
    let run = svc.authenticate(&enrolled.name, Some(&format!("{bypass}\n")));
    assert!(!run.success, "an expired helpdesk code: {}", run.text());
    let list = d.cli(&["invite", "--list", "--json"]).json();
    assert_eq!(list["invitations"][0]["expired"], true, "{list}");
}

#[test]
fn a_helpdesk_code_logs_in_once_and_leaves_the_enrollment_alone() {
    if skip("a_helpdesk_code_logs_in_once_and_leaves_the_enrollment_alone") {
        return;
    }
    let d = Daemon::start("deny", "");
    let user = TestUser::create(&unique("tf-byp"));
    let svc = PamService::required(&d.socket, "");
    d.enroll(&user.name);
    let issued = d.cli(&["bypass", &user.name]);
    assert_eq!(issued.code(), 0, "{}", issued.stderr());
    // Shown once, in five groups of four digits.
    let code = issued
        .stdout()
        .split_whitespace()
        .find(|w| w.len() == 24 && w.split('-').count() == 5)
        .unwrap_or_else(|| panic!("no code in {}", issued.stdout()))
        .to_string();
    assert!(status(&d, &user.name)["bypass_until"].is_u64());
    let once = svc.authenticate(&user.name, Some(&format!("{code}\n")));
    assert!(once.success, "{}\n{}", once.text(), d.log());
    let twice = svc.authenticate(&user.name, Some(&format!("{code}\n")));
    assert!(!twice.success, "{}", twice.text());
    let s = status(&d, &user.name);
    assert!(s["enrolled"] == true && s["backup_codes_left"] == 12, "{s}");
    let trail = audit_events(&d, &user.name);
    for want in ["bypass issued", "bypass used"] {
        assert!(trail.iter().any(|t| t == want), "{want}: {trail:?}");
    }
    assert!(!d.log().contains(&code) && !d.log().contains(&code.replace('-', "")));
    // Revoked before use.
    let issued = d.cli(&["bypass", &user.name, "--uses", "2", "--json"]);
    let code = issued.json()["code"].as_str().unwrap().to_string();
    assert_eq!(d.cli(&["bypass", "--revoke", &user.name]).code(), 0);
    assert!(
        !svc.authenticate(&user.name, Some(&format!("{code}\n")))
            .success
    );
}

/// ssh on a terminal: the QR code as the client shows it, decoded by zbarimg in both
/// polarities, the first code from oathtool, the backup codes, a shell.
#[test]
fn over_ssh_the_qr_code_scans_from_the_client_s_screen_and_a_shell_is_reached() {
    if skip("over_ssh_the_qr_code_scans_from_the_client_s_screen_and_a_shell_is_reached") {
        return;
    }
    let d = Daemon::start("deny", "");
    let user = TestUser::create(&unique("tf-inssh"));
    let keys = open_tempdir();
    let key = keys.path().join("id_ed25519");
    keygen(&key, "tf-enroll-at-login");
    user.authorize_ssh_key(&key.with_extension("pub"));
    let sshd = Sshd::start(&d.socket, &user.name, "publickey,keyboard-interactive");
    // Not invited: refused, with the reason on the client's screen.
    let refused = sshd.ssh(&user, Some(&key), "000000", "true");
    assert!(!refused.run.success(), "{}", refused.text());
    assert!(
        refused.run.stderr.contains("twofold invite"),
        "{}\n{}",
        refused.text(),
        sshd.log()
    );
    assert_eq!(d.cli(&["invite", &user.name]).code(), 0);
    let term = Terminal::start(&ssh_command(&sshd, &user.name, &key));
    let screen = term.wait_for(FIRST_PROMPT, Duration::from_secs(30));
    let blocks = qr_blocks(&screen);
    let widest = blocks[0].iter().map(|l| l.trim_end().chars().count()).max();
    assert!(
        widest <= Some(COLUMNS as usize),
        "{widest:?} columns:\n{screen}"
    );
    assert_eq!(blocks.len(), 1, "{screen}");
    let uri = zbar_decode(&blocks[0], true)
        .unwrap_or_else(|| panic!("zbarimg cannot read the code on a dark terminal:\n{screen}"));
    assert!(
        uri.starts_with("otpauth://totp/") && uri.contains(&user.name),
        "{uri}"
    );
    let secret = uri_secret(&uri);
    assert_eq!(shown_key(&screen), secret);
    // For a light terminal: "invert" draws it the other way round.
    term.type_line("invert");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let screen = loop {
        let screen = term.screen();
        if qr_blocks(&screen).len() >= 2 {
            break screen;
        }
        assert!(std::time::Instant::now() < deadline, "{screen}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let inverted = zbar_decode(&qr_blocks(&screen)[1], false)
        .unwrap_or_else(|| panic!("zbarimg cannot read the code on a light terminal:\n{screen}"));
    assert_eq!(inverted, uri);
    ensure_step_time(10);
    let code = oathtool(&secret, 0);
    term.type_line(&code);
    let screen = term.wait_for(
        "Press Enter once the backup codes are stored",
        Duration::from_secs(30),
    );
    assert_eq!(shown_backup_codes(&screen).len(), 12, "{screen}");
    term.type_line("");
    term.type_line("echo tf-shell-$((6*7))");
    term.wait_for("tf-shell-42", Duration::from_secs(30));
    term.type_line("exit");
    term.wait_for("tf-terminal-exited-0", Duration::from_secs(30));
    // The second login: the app's next code at the ordinary prompt.
    std::thread::sleep(Duration::from_secs(30 - unix_now() % 30) + Duration::from_millis(300));
    let again = sshd.ssh(&user, Some(&key), &oathtool(&secret, 0), "echo tf-again");
    assert!(again.run.success(), "{}\n{}", again.text(), d.log());
    assert_eq!(again.run.stdout.trim(), "tf-again");
    assert!(!d.log().contains(&secret));
}

/// ssh as a person types it: keyboard-interactive on the terminal, one try per method.
fn ssh_command(sshd: &Sshd, user: &str, key: &Path) -> String {
    format!(
        "ssh -F /dev/null -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o GlobalKnownHostsFile=/dev/null -o NumberOfPasswordPrompts=1 -o IdentitiesOnly=yes \
         -o IdentityAgent=none \
         -o PreferredAuthentications=publickey,keyboard-interactive -i {} {user}@127.0.0.1",
        sshd.port,
        key.display()
    )
}

/// Over ssh: three wrong first codes end the login and leave the enrollment pending; once the
/// invitation expires, the login is refused with that reason.
#[test]
fn over_ssh_wrong_first_codes_then_an_expired_invitation_are_refused() {
    if skip("over_ssh_wrong_first_codes_then_an_expired_invitation_are_refused") {
        return;
    }
    let d = Daemon::start("deny", "");
    let user = TestUser::create(&unique("tf-insw"));
    let keys = open_tempdir();
    let key = keys.path().join("id_ed25519");
    keygen(&key, "tf-enroll-at-login");
    user.authorize_ssh_key(&key.with_extension("pub"));
    let sshd = Sshd::start(&d.socket, &user.name, "publickey,keyboard-interactive");
    let invited_at = unix_now();
    assert_eq!(d.cli(&["invite", &user.name, "--for", "20s"]).code(), 0);
    let term = Terminal::start(&ssh_command(&sshd, &user.name, &key));
    let screen = term.wait_for(FIRST_PROMPT, Duration::from_secs(30));
    let secret = uri_secret(&zbar_decode(&qr_blocks(&screen)[0], true).expect("QR code"));
    let wrong = wrong_code(&secret);
    for _ in 0..2 {
        let before = term.screen().matches(FIRST_PROMPT).count();
        term.type_line(&wrong);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while term.screen().matches(FIRST_PROMPT).count() == before {
            assert!(std::time::Instant::now() < deadline, "{}", term.screen());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    term.type_line(&wrong);
    let screen = term.wait_for("tf-terminal-exited-", Duration::from_secs(30));
    assert!(screen.contains(NOT_CONFIRMED), "{screen}");
    assert!(screen.contains("Permission denied"), "{screen}");
    assert_eq!(screen.matches(WRONG_FIRST).count(), 2, "{screen}");
    let s = status(&d, &user.name);
    assert!(s["pending"] == true && s["enrolled"] == false, "{s}");
    // The invitation runs out.
    let left = (invited_at + 21).saturating_sub(unix_now());
    std::thread::sleep(Duration::from_secs(left));
    let refused = sshd.ssh(&user, Some(&key), "000000", "true");
    assert!(!refused.run.success(), "{}", refused.text());
    assert!(
        refused
            .run
            .stderr
            .contains("the invitation to enroll expired"),
        "{}",
        refused.text()
    );
}
