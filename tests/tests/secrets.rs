//! No secret anywhere it should not be (issue 7): a whole end-to-end run — enrollment through the
//! CLI, logins through pam_twofold.so in libpam (right, replayed, wrong, backup, a pasted secret
//! and a pasted otpauth URI as the "code"), the administrator's commands — with every log line
//! of twofoldd, every line the module sends to syslog (caught by pam_wrapper), every standard
//! error and the audit trail captured; none may hold a code, a backup code, the secret or the
//! otpauth URI that was used.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;
use twofold_tests::*;

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether `code` (digits) appears in `hay` as a number of its own, not inside a longer one
/// (a timestamp or a pid may contain any six digits).
fn has_number(hay: &str, code: &str) -> bool {
    hay.match_indices(code).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + code.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn no_code_secret_or_uri_in_any_log_or_error_output() {
    let daemon = Daemon::start("allow", "");
    let user = "sigrid";
    let mut captured = String::new(); // everything that is a log or an error stream
    let enroll = daemon.cli(&["enroll", "--user", user, "--json"]);
    assert!(enroll.status.success(), "{}", text(&enroll));
    captured += &text(&enroll);
    let started: serde_json::Value = serde_json::from_slice(&enroll.stdout).unwrap();
    let secret = started["secret"].as_str().unwrap().to_string();
    let uri = started["otpauth_uri"].as_str().unwrap().to_string();
    assert!(uri.starts_with("otpauth://"), "{uri}");
    ensure_step_time(15);
    let first = oathtool(&secret, 0);
    let wrong_confirm = if first == "000000" {
        "111111"
    } else {
        "000000"
    };
    let out = daemon.cli(&["confirm", wrong_confirm, "--user", user]);
    captured += &text(&out);
    let out = daemon.cli(&["confirm", &first, "--user", user, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    captured += &text(&out);
    let confirmed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backup: Vec<String> = confirmed["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();

    let pam = PamService::required(&daemon.socket, "debug");
    let next = oathtool(&secret, 1);
    let wrong = oathtool(&secret, 5);
    let mut login = |typed: &str, want: bool| {
        let run = pam.authenticate_logged(user, Some(&format!("{typed}\n")));
        assert_eq!(
            run.success,
            want,
            "typed a {}-character answer: {}",
            typed.len(),
            run.text()
        );
        assert!(
            run.stderr.contains("SYSLOG("),
            "pam_wrapper did not show the module's syslog lines: {}",
            run.stderr
        );
        captured += &run.text();
    };
    login(&next, true);
    login(&next, false); // replayed
    login(&wrong, false);
    login(&backup[0], true);
    login(&backup[0], false); // spent
    login(&secret, false); // the secret pasted at the prompt
    login(&uri, false); // the whole URI pasted
    login(&format!("{} {}", &backup[1][..4], &backup[1][4..]), true);

    for args in [
        &["status", "--user", user][..],
        &["list"],
        &["audit"],
        &["audit", "--json"],
        &["backup-codes", "--user", user],
    ] {
        let out = daemon.cli(args);
        captured += &text(&out);
        if args[0] == "audit" {
            // The audit trail is a log too: all of it.
            captured += &String::from_utf8_lossy(&out.stdout);
        }
    }
    let new_codes = daemon.cli(&["backup-codes", "--user", user, "--json"]);
    captured += &text(&new_codes);
    captured += &std::fs::read_to_string(daemon.dir.path().join("twofoldd.log")).unwrap();

    assert!(
        captured.contains("outcome=accepted"),
        "the daemon's log was not captured"
    );
    let mut leaks = Vec::new();
    for code in [&first, &next, &wrong] {
        if has_number(&captured, code) {
            leaks.push(format!("TOTP code {code}"));
        }
    }
    for code in &backup {
        let bare = code.replace('-', "");
        if captured.contains(code.as_str())
            || captured.contains(&code[..9])
            || captured.contains(&bare[..8])
        {
            leaks.push("a backup code".into());
        }
    }
    let lower = captured.to_lowercase();
    for (what, needle) in [
        ("the secret", secret.to_lowercase()),
        (
            "the secret's first half",
            secret[..secret.len() / 2].to_lowercase(),
        ),
        ("the otpauth URI", uri.to_lowercase()),
        ("an otpauth URI", "otpauth://".into()),
    ] {
        if lower.contains(&needle) {
            leaks.push(what.into());
        }
    }
    assert!(
        leaks.is_empty(),
        "found in logs or error output: {leaks:?}\n---\n{captured}"
    );
}
