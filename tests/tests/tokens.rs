//! Hardware tokens and known seeds (issue 16), end to end: a vendor's seed file and otpauth
//! URIs imported with the real CLI, counter-based (HOTP) and time-based tokens logging in
//! through pam_twofold.so under pamtester, every code from oathtool (hex keys, as vendors ship
//! them), `twofold resync` for a token pressed too often.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use twofold_tests::*;

/// RFC 4226's test key, "12345678901234567890", in hex.
const FOB: &str = "3132333435363738393031323334353637383930";
/// A time-based fob's key.
const TOTP_FOB: &str = "8a1f3c5e7b9d0f2a4c6e8b0d2f4a6c8e0b2d4f6a";

fn oath(args: &[&str]) -> String {
    let out = std::process::Command::new("oathtool")
        .args(args)
        .output()
        .expect("oathtool (Debian package oathtool; scripts/deps.sh installs it)");
    assert!(out.status.success(), "oathtool {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn hotp(counter: u64) -> String {
    oath(&["--hotp", "-c", &counter.to_string(), FOB])
}

fn login(pam: &PamService, user: &str, code: &str) -> bool {
    pam.authenticate(user, Some(&format!("{code}\n"))).success
}

#[test]
fn a_vendors_seed_file_imports_and_its_tokens_log_in() {
    let d = Daemon::start(
        "deny",
        "[throttle]\nfree_failures = 1000\nlockout_after = 0",
    );
    let time = TestUser::create_unique("tf-tkt");
    let counter = TestUser::create_unique("tf-tkh");
    let seeds = d.dir.path().join("seeds.csv");
    std::fs::write(
        &seeds,
        format!(
            "# as the vendor ships it\n\
             user,secret,type,counter\n\
             {t},{TOTP_FOB},totp,\n\
             {h},{FOB},hotp,5\n\
             {t}-short,31323334353637383930,totp,\n\
             {t}-odd,{FOB},motp,\n\
             {h},{FOB},hotp,0\n",
            t = time.name,
            h = counter.name
        ),
    )
    .unwrap();
    let run = d.cli(&["import", "seeds", "--file", path_str(&seeds)]);
    assert_eq!(run.code(), 2, "some lines are refused: {}", run.stderr());
    let out = run.stdout();
    let err = run.stderr();
    assert!(out.contains("2 imported, 3 refused"), "{out}");
    assert!(err.contains("line 5:") && err.contains("80 bits"), "{err}");
    assert!(
        err.contains("line 6:") && err.contains("totp or hotp"),
        "{err}"
    );
    assert!(
        err.contains("line 7:") && err.contains("already enrolled"),
        "{err}"
    );
    for text in [&out, &err, &d.log()] {
        assert!(
            !text.contains(FOB) && !text.contains(TOTP_FOB),
            "a key was shown: {text}"
        );
    }
    let pam = PamService::required(&d.socket, "");
    ensure_step_time(8);
    assert!(login(&pam, &time.name, &oath(&["--totp", TOTP_FOB])));
    // The counter-based token: its next code (counter 5), once; pressed twice more, counter
    // 7 is within the look-ahead and spends 6.
    let h = &counter.name;
    assert!(login(&pam, h, &hotp(5)), "{}", d.log());
    assert!(!login(&pam, h, &hotp(5)), "a spent counter");
    assert!(login(&pam, h, &hotp(7)));
    assert!(!login(&pam, h, &hotp(6)));
    // Pressed far beyond the look-ahead (10): refused until root resynchronises it with two
    // consecutive codes, read from standard input.
    assert!(!login(&pam, h, &hotp(30)));
    let resync = d.cli_as(
        None,
        &["resync", h],
        Some(&format!("{}\n{}\n", hotp(30), hotp(31))),
    );
    assert_eq!(resync.code(), 0, "{}{}", resync.stdout(), resync.stderr());
    assert!(!login(&pam, h, &hotp(31)), "spent by the resync");
    assert!(login(&pam, h, &hotp(32)));
    // Two codes that do not follow each other are refused.
    let wrong = d.cli(&["resync", h, &hotp(40), &hotp(42)]);
    assert_eq!(wrong.code(), 2, "{}", wrong.stderr());
    // One code sent a hundred times at once is accepted once.
    let code = hotp(33);
    let accepted = std::thread::scope(|s| {
        let runs: Vec<_> = (0..100)
            .map(|_| s.spawn(|| d.cli(&["verify", h, &code]).code()))
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap())
            .filter(|c| *c == 0)
            .count()
    });
    assert_eq!(accepted, 1);
    let listed = d.cli(&["authenticators", "--user", h, "--json"]).json();
    assert_eq!(listed["authenticators"][0]["counter"], 34, "{listed}");
    assert!(
        d.log().contains("event=resync") || d.log().contains("resync user="),
        "{}",
        d.log()
    );
}

#[test]
fn otpauth_uris_from_standard_input_and_a_file() {
    let d = Daemon::start("deny", "");
    let user = TestUser::create_unique("tf-tku");
    let key = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBV";
    let uri = format!(
        "otpauth://totp/Acme:{}?secret={key}&algorithm=SHA256&digits=8\n",
        user.name
    );
    let run = d.cli_as(
        None,
        &["import", "otpauth", "--user", &user.name, "-"],
        Some(&uri),
    );
    assert_eq!(run.code(), 0, "{}{}", run.stdout(), run.stderr());
    // A counter-based key beside it, from a file.
    let file = d.dir.path().join("fob.uri");
    std::fs::write(
        &file,
        format!("otpauth://hotp/Acme:fob?secret={key}&counter=3\n"),
    )
    .unwrap();
    let run = d.cli(&[
        "import",
        "otpauth",
        "--user",
        &user.name,
        "--name",
        "fob",
        path_str(&file),
    ]);
    assert_eq!(run.code(), 0, "{}{}", run.stdout(), run.stderr());
    let pam = PamService::required(&d.socket, "");
    ensure_step_time(8);
    let eight = oath(&["--totp=sha256", "-d", "8", "-b", key]);
    assert!(login(&pam, &user.name, &eight), "{}", d.log());
    let six = oath(&["--hotp", "-c", "3", "-b", key]);
    assert!(login(&pam, &user.name, &six), "{}", d.log());
    assert!(!login(&pam, &user.name, &six));
    assert!(d.log().contains("authenticator=fob"), "{}", d.log());
    // Refused: an HOTP URI without its counter, an empty input, a symlink.
    let bad = d.cli_as(
        None,
        &["import", "otpauth", "--user", &user.name, "--name", "x"],
        Some(&format!("otpauth://hotp/x?secret={key}\n")),
    );
    assert_eq!(bad.code(), 2, "{}", bad.stderr());
    assert!(bad.stderr().contains("counter"), "{}", bad.stderr());
    assert!(!bad.stderr().contains(key));
    let link = d.dir.path().join("link.uri");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let linked = d.cli(&["import", "otpauth", "--user", &user.name, path_str(&link)]);
    assert_eq!(linked.code(), 2);
    assert!(
        linked.stderr().contains("symbolic link"),
        "{}",
        linked.stderr()
    );
}
