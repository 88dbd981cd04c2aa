//! Password and code in one answer (issue 16): pam_twofold.so `forward_pass` /
//! `use_first_pass` in front of the real pam_unix.so and a real local account with a password,
//! under pamtester; codes from oathtool. The IMAP server that asks one question: imap.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use twofold_tests::*;

const PASSWORD: &str = "Tf one answer 7";

/// An enrolled account with a password, and its daemon (unenrolled accounts refused).
fn account(prefix: &str) -> (Daemon, TestUser, Enrollment) {
    let d = Daemon::start("deny", "");
    let user = TestUser::create_unique(prefix);
    user.set_password(PASSWORD);
    let enrollment = d.enroll(&user.name);
    (d, user, enrollment)
}

fn line(answer: &str) -> String {
    format!("{answer}\n")
}

#[test]
fn forward_pass_hands_the_password_to_pam_unix() {
    if skip_unless_root("forward_pass", "a local account with a password") {
        return;
    }
    let (d, user, enrollment) = account("tf-fp");
    let pam = PamService::new(&format!(
        "auth required MODULE {} forward_pass\nauth required pam_unix.so use_first_pass nodelay\n",
        module_args(&d.socket)
    ));
    let name = &user.name;
    // The enrollment spent this step's code: the next step's is the one to type.
    let code = oathtool(&enrollment.secret, 1);
    let right = pam.authenticate(name, Some(&line(&format!("{PASSWORD}{code}"))));
    assert!(right.success, "{}\n{}", right.text(), d.log());
    assert!(right.text().contains("Password: "), "{}", right.text());
    assert!(
        !right.text().contains("Verification code"),
        "one question: {}",
        right.text()
    );
    // The same answer again: the code is spent.
    let replay = pam.authenticate(name, Some(&line(&format!("{PASSWORD}{code}"))));
    assert!(!replay.success, "a replayed answer: {}", replay.text());
    // A wrong password with a right (backup) code, the right password with a wrong code, the
    // password alone: all refused, and none says which part was wrong.
    let [first, second, ..] = &enrollment.backup_codes[..] else {
        panic!("no backup codes")
    };
    let cases = [
        format!("Tf one answer 8 {second}"),
        format!("{PASSWORD}{}", wrong_code(&enrollment.secret)),
        PASSWORD.to_string(),
    ];
    for answer in &cases {
        let run = pam.authenticate(name, Some(&line(answer)));
        assert!(!run.success, "{}", run.text());
        assert!(
            !run.text().contains("Invalid verification code"),
            "{}",
            run.text()
        );
    }
    // The right password and a backup code after a space.
    let run = pam.authenticate(name, Some(&line(&format!("{PASSWORD} {first}"))));
    assert!(run.success, "{}\n{}", run.text(), d.log());
    assert!(
        !d.log().contains(PASSWORD),
        "the password reached twofoldd's log"
    );
    let status = d.cli(&["status", "--user", name, "--json"]).json();
    assert_eq!(status["backup_codes_left"], 10, "{status}");
}

#[test]
fn use_first_pass_takes_the_answer_an_earlier_module_asked_for() {
    if skip_unless_root("use_first_pass", "a local account with a password") {
        return;
    }
    let (d, user, enrollment) = account("tf-ufp");
    // pam_unix asks first (and fails on password+code, which `optional` lets pass); its
    // answer is PAM_AUTHTOK, which pam_twofold splits and pam_unix checks again.
    let pam = PamService::new(&format!(
        "auth optional pam_unix.so nodelay\nauth required MODULE {} use_first_pass\nauth required pam_unix.so use_first_pass nodelay\n",
        module_args(&d.socket)
    ));
    let code = oathtool(&enrollment.secret, 1);
    let run = pam.authenticate(&user.name, Some(&line(&format!("{PASSWORD}{code}"))));
    assert!(run.success, "{}\n{}", run.text(), d.log());
    let again = pam.authenticate(&user.name, Some(&line(&format!("{PASSWORD}{code}"))));
    assert!(!again.success, "{}", again.text());
    // Without an earlier module asking, there is no answer to take: refused.
    let alone = PamService::new(&format!(
        "auth required MODULE {} use_first_pass\nauth required pam_unix.so use_first_pass nodelay\n",
        module_args(&d.socket)
    ));
    let code = wrong_code(&enrollment.secret);
    let run = alone.authenticate(&user.name, Some(&line(&format!("{PASSWORD}{code}"))));
    assert!(!run.success, "{}", run.text());
}

#[test]
fn an_account_without_enrollment_types_its_password_alone() {
    if skip_unless_root("forward_pass", "a local account with a password") {
        return;
    }
    let d = Daemon::start("allow", "");
    let user = TestUser::create_unique("tf-fpo");
    user.set_password(PASSWORD);
    let pam = PamService::new(&format!(
        "auth required MODULE {} forward_pass\nauth required pam_unix.so use_first_pass nodelay\n",
        module_args(&d.socket)
    ));
    let run = pam.authenticate(&user.name, Some(&line(PASSWORD)));
    assert!(run.success, "{}\n{}", run.text(), d.log());
    let wrong = pam.authenticate(&user.name, Some(&line("not it")));
    assert!(!wrong.success, "{}", wrong.text());
}
