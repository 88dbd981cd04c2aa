//! Metrics (issue 17): `twofold metrics` prints Prometheus text that counts what real PAM
//! logins (pamtester under pam_wrapper, codes from oathtool) came to, `promtool check metrics`
//! (Debian's prometheus package) accepts it, and `metrics_textfile` is written for
//! node_exporter: at the start, every 15 s, atomically, readable by all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};
use twofold_tests::*;

/// The value of the sample `series` (name and labels exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (bool, String) {
    let out = run_with_stdin(
        Command::new("promtool").args(["check", "metrics"]),
        Some(text),
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

fn metrics(daemon: &Daemon) -> String {
    let run = daemon.cli(&["metrics"]);
    assert_eq!(run.code(), 0, "{} {}", run.stdout(), run.stderr());
    run.stdout()
}

#[test]
fn metrics_count_what_logins_decided_and_promtool_accepts_them() {
    let daemon = Daemon::start("allow", "[throttle]\nfree_failures = 10\nlockout_after = 3");
    let user = my_name();
    let e = daemon.enroll(&user);
    let pam = PamService::required(&daemon.socket, "");
    let login = |code: &str| pam.authenticate(&user, Some(&format!("{code}\n"))).success;

    let before = metrics(&daemon);
    assert_eq!(value(&before, "twofold_users_enrolled"), 1.0);
    assert_eq!(
        value(&before, "twofold_enrollments_total{how=\"confirmed\"}"),
        1.0
    );
    let accepted = "twofold_logins_total{outcome=\"accepted\",method=\"totp\"}";
    assert_eq!(sample(&before, accepted), Some(0.0), "{before}");

    let code = oathtool(&e.secret, 1);
    assert!(login(&code), "the right code was refused");
    assert!(!login(&code), "a replayed code was accepted");
    assert!(login(&e.backup_codes[0]), "a backup code was refused");
    let wrong = wrong_code(&e.secret);
    for _ in 0..3 {
        assert!(!login(&wrong));
    }
    assert!(
        !login(&oathtool(&e.secret, 1)),
        "a locked account logged in"
    );

    let text = metrics(&daemon);
    let logins = |outcome: &str, method: &str| {
        value(
            &text,
            &format!("twofold_logins_total{{outcome=\"{outcome}\",method=\"{method}\"}}"),
        )
    };
    assert_eq!(logins("accepted", "totp"), 1.0, "{text}");
    assert_eq!(logins("accepted", "backup_code"), 1.0, "{text}");
    assert_eq!(
        logins("rejected", "none"),
        4.0,
        "replay + 3 wrong codes: {text}"
    );
    assert_eq!(logins("locked", "none"), 1.0, "{text}");
    assert_eq!(value(&text, "twofold_lockouts_total"), 1.0);
    assert_eq!(value(&text, "twofold_users_locked"), 1.0);
    assert_eq!(value(&text, "twofold_users_enrolled"), 1.0);
    assert_eq!(value(&text, "twofold_store_errors_total"), 0.0);
    assert_eq!(value(&text, "twofold_store_up"), 1.0);
    assert!(value(&text, "twofold_database_size_bytes") > 4096.0);
    // Every verify is in the histogram, and in its +Inf bucket.
    let verifies = value(
        &text,
        "twofold_request_duration_seconds_count{op=\"verify\"}",
    );
    assert!(verifies >= 6.0, "{text}");
    assert_eq!(
        value(
            &text,
            "twofold_request_duration_seconds_bucket{op=\"verify\",le=\"+Inf\"}"
        ),
        verifies
    );
    // Nothing about the user, the code or the secret.
    for secret in [
        user.as_str(),
        e.secret.as_str(),
        code.as_str(),
        e.backup_codes[0].as_str(),
    ] {
        assert!(!text.contains(secret), "the metrics name {secret:?}");
    }
    let (ok, said) = promtool(&text);
    assert!(
        ok,
        "promtool check metrics refused the text: {said}\n{text}"
    );
    assert!(!said.contains("error"), "{said}");
    // A text promtool refuses makes it fail (the check can fail).
    let (bad, _) = promtool("twofold_logins_total{outcome=\"x\" 1\n");
    assert!(!bad, "promtool accepted a malformed line");
}

#[test]
fn only_root_reads_the_metrics() {
    let daemon = Daemon::start("allow", "");
    let someone = TestUser::create_unique("tf-metrics");
    let run = daemon.cli_as(Some(&someone.name), &["metrics"], None);
    assert_ne!(run.code(), 0, "{}", run.stdout());
    assert!(run.stderr().contains("only root"), "{}", run.stderr());
}

#[test]
fn the_textfile_is_written_at_start_and_every_15_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twofold.prom");
    let daemon = Daemon::start(
        "allow",
        &format!("metrics_textfile = {:?}", path.display().to_string()),
    );
    let user = my_name();
    let e = daemon.enroll(&user);
    let wait_for = |what: &dyn Fn(&str) -> bool, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if what(&text) {
                    return text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not as expected within {secs} s",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let first = wait_for(&|t| t.contains("twofold_build_info"), 5);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter (not root) must read it");
    assert!(promtool(&first).0, "{first}");

    let pam = PamService::required(&daemon.socket, "");
    assert!(
        pam.authenticate(&user, Some(&format!("{}\n", oathtool(&e.secret, 1))))
            .success
    );
    let accepted = "twofold_logins_total{outcome=\"accepted\",method=\"totp\"}";
    let t0 = Instant::now();
    let later = wait_for(&|t| sample(t, accepted) == Some(1.0), 20);
    println!(
        "textfile rewritten with the login after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        value(&later, "twofold_metrics_written_timestamp_seconds")
            > value(&first, "twofold_metrics_written_timestamp_seconds")
    );
    // Only the file itself is left in the directory: the temporary one was renamed.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["twofold.prom"]);
}

#[test]
fn a_textfile_path_node_exporter_would_not_read_is_refused() {
    for path in ["twofold.prom", "/var/lib/node-exporter/twofold.txt"] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("twofold.toml");
        std::fs::write(
            &config,
            format!(
                "socket = {:?}\ndatabase = {:?}\nmetrics_textfile = {path:?}\n",
                dir.path().join("s").display().to_string(),
                dir.path().join("db").display().to_string()
            ),
        )
        .unwrap();
        let (code, err) = refused_start(&config);
        assert_ne!(code, Some(0), "{err}");
        assert!(err.contains("metrics_textfile"), "{err}");
    }
}

#[test]
fn the_readme_alerts_are_valid_prometheus_rules() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("### Metrics and alerts")
        .nth(1)
        .expect("README has a 'Metrics and alerts' section");
    let rules = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a yaml block in the section");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("twofold-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool is needed (Debian package prometheus)");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool check rules: {said}\n{rules}"
    );
    assert!(said.contains("3 rules found"), "{said}");
    // Every metric an alert names is one twofoldd writes (or node_exporter's own).
    let daemon = Daemon::start("allow", "");
    let text = metrics(&daemon);
    for name in [
        "twofold_store_errors_total",
        "twofold_store_up",
        "twofold_lockouts_total",
        "twofold_logins_total",
        "twofold_metrics_written_timestamp_seconds",
    ] {
        assert!(rules.contains(name), "{name}");
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is not in the metrics"
        );
    }
}
