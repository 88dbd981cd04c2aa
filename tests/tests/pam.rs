//! pam_twofold.so in a real libpam: pamtester under pam_wrapper (private service directory,
//! absolute module path) against a real twofoldd, with codes from oathtool.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::Duration;
use twofold_shared::client::Client;
use twofold_shared::otp::{self, TotpParams};
use twofold_shared::secret::Secret;
use twofold_shared::wire::{RequestBody, ResponseBody};
use twofold_tests::*;

const PROMPT: &str = "Verification code: ";
const INVALID: &str = "Invalid verification code.";
const UNAVAILABLE: &str = "Two-factor service unavailable.";
const ENROLL: &str = "Two-factor enrollment required: run 'twofold enroll'";
/// pam_strerror(PAM_AUTHINFO_UNAVAIL), as pamtester prints it.
const AUTHINFO_UNAVAIL: &str = "Authentication service cannot retrieve authentication info";

fn assert_success(run: &PamRun) {
    assert!(run.success, "expected success: {}", run.text());
    assert!(
        run.stdout.contains("pamtester: successfully authenticated"),
        "{}",
        run.text()
    );
}

fn assert_refused(run: &PamRun, expect: &[&str]) {
    assert!(!run.success, "expected a refusal: {}", run.text());
    assert!(
        !run.text().contains("successfully authenticated"),
        "{}",
        run.text()
    );
    for text in expect {
        assert!(
            run.text().contains(text),
            "missing {text:?} in: {}",
            run.text()
        );
    }
}

/// An enrolled user (the account running the tests) with a daemon of its own.
fn enrolled() -> (Daemon, PamService, String, Enrollment) {
    let daemon = Daemon::start("allow", "");
    let user = my_name();
    let enrollment = daemon.enroll(&user);
    let pam = PamService::required(&daemon.socket, "");
    (daemon, pam, user, enrollment)
}

#[test]
fn right_code_is_accepted() {
    let (_daemon, pam, user, e) = enrolled();
    // The confirmation used this step's code; the next step's is the next valid one.
    let at = unix_now() + 30;
    let code = oathtool_at(&e.secret, at);
    // Two independent implementations agree on it.
    let secret = Secret::from_base32(&e.secret).unwrap();
    assert_eq!(otp::totp_at(&secret, &TotpParams::default(), at), code);
    let run = pam.authenticate(&user, Some(&format!("{code}\n")));
    assert_success(&run);
    assert!(run.text().contains(PROMPT), "{}", run.text());
    assert!(!run.text().contains(INVALID), "{}", run.text());
}

#[test]
fn wrong_code_is_refused() {
    let (_daemon, pam, user, e) = enrolled();
    let now = unix_now();
    let valid: Vec<String> = (-2..=3)
        .map(|k| oathtool_at(&e.secret, now.checked_add_signed(k * 30).unwrap()))
        .collect();
    let wrong = (0..1_000_000)
        .map(|n| format!("{:06}", (n * 7919 + 13) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap();
    let run = pam.authenticate(&user, Some(&format!("{wrong}\n")));
    assert_refused(&run, &[PROMPT, INVALID, "Authentication failure"]);
}

#[test]
fn replayed_code_is_refused() {
    let (_daemon, pam, user, e) = enrolled();
    let next = oathtool(&e.secret, 1);
    assert_success(&pam.authenticate(&user, Some(&format!("{next}\n"))));
    let again = pam.authenticate(&user, Some(&format!("{next}\n")));
    assert_refused(&again, &[INVALID, "Authentication failure"]);
    // The code that confirmed the enrollment was consumed too.
    let first = oathtool(&e.secret, 0);
    assert_refused(
        &pam.authenticate(&user, Some(&format!("{first}\n"))),
        &[INVALID],
    );
}

#[test]
fn backup_code_is_accepted_once() {
    let (_daemon, pam, user, e) = enrolled();
    assert_eq!(e.backup_codes.len(), 12);
    // Typed in capitals without hyphens: input ignores both.
    let typed = e.backup_codes[0].replace('-', "").to_uppercase();
    let run = pam.authenticate(&user, Some(&format!("{typed}\n")));
    assert_success(&run);
    assert!(
        run.text().contains("Backup code used; 11 left."),
        "{}",
        run.text()
    );
    let again = pam.authenticate(&user, Some(&format!("{}\n", e.backup_codes[0])));
    assert_refused(&again, &[INVALID]);
}

#[test]
fn unknown_user_is_prompted_and_refused_like_a_wrong_code() {
    let daemon = Daemon::start("deny", "");
    let pam = PamService::new(&format!(
        "auth required MODULE {} [prompt=Your code: ]\n",
        module_args(&daemon.socket)
    ));
    let name = format!("tf-pam-nosuch-{}", std::process::id());
    let run = pam.authenticate(&name, Some("123456\n"));
    assert_refused(&run, &["Your code: ", INVALID, "Authentication failure"]);
    assert!(!run.text().contains(ENROLL), "{}", run.text());
}

#[test]
fn not_enrolled_with_allow_is_ignored_without_a_prompt() {
    let daemon = Daemon::start("allow", "");
    let user = my_name();
    // The recommended way to let the rest of the stack decide for users who have not enrolled.
    let stack = PamService::new(&format!(
        "auth [success=ok ignore=ignore default=bad] MODULE {}\nauth required {PAM_PERMIT}\n",
        module_args(&daemon.socket)
    ));
    // Standard input is /dev/null: a prompt would end in a conversation error.
    let run = stack.authenticate(&user, None);
    assert_success(&run);
    assert!(!run.text().contains(PROMPT), "{}", run.text());
    // PAM_IGNORE alone lets nobody in.
    let alone = PamService::required(&daemon.socket, "");
    let run = alone.authenticate(&user, None);
    assert_refused(&run, &["Permission denied"]);
    assert!(!run.text().contains(PROMPT), "{}", run.text());
}

#[test]
fn not_enrolled_with_deny_is_refused_with_the_enrollment_message() {
    let daemon = Daemon::start("deny", "");
    let pam = PamService::required(&daemon.socket, "");
    let run = pam.authenticate(&my_name(), None);
    assert_refused(&run, &[ENROLL, "Authentication failure"]);
    assert!(!run.text().contains(PROMPT), "{}", run.text());
}

#[test]
fn stopped_daemon_is_authinfo_unavail() {
    let (mut daemon, pam, user, e) = enrolled();
    daemon.stop();
    let code = oathtool(&e.secret, 1);
    let run = pam.authenticate(&user, Some(&format!("{code}\n")));
    assert_refused(&run, &[UNAVAILABLE, AUTHINFO_UNAVAIL]);
    // It fails before prompting: nothing to type while the service is down.
    assert!(!run.text().contains(PROMPT), "{}", run.text());
    assert!(run.elapsed < Duration::from_secs(3), "{:?}", run.elapsed);
}

#[test]
fn silent_server_times_out_within_the_timeout() {
    let dir = open_tempdir();
    let socket = dir.path().join("s");
    // Connections complete in the backlog; nobody ever reads or answers them.
    let _listener = UnixListener::bind(&socket).unwrap();
    let pam = PamService::required(&socket, "");
    let run = pam.authenticate(&my_name(), Some("123456\n"));
    assert_refused(&run, &[UNAVAILABLE, AUTHINFO_UNAVAIL]);
    // timeout=3: it waited for the daemon, then gave up within the timeout plus slack.
    assert!(
        run.elapsed >= Duration::from_millis(2_500),
        "{:?}",
        run.elapsed
    );
    assert!(
        run.elapsed < Duration::from_secs(3 + 3),
        "{:?}",
        run.elapsed
    );
}

/// A rogue server that answers "accepted" to anything.
const ROGUE_SERVER: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(16)
reply = b'{"v":1,"body":{"result":"accepted","method":"remembered"}}'
def read(c, n):
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data
while True:
    c, _ = s.accept()
    try:
        read(c, struct.unpack(">I", read(c, 4))[0])
        c.sendall(struct.pack(">I", len(reply)) + reply)
    except Exception:
        pass
    c.close()
"#;

#[test]
fn socket_served_by_a_non_root_process_is_refused() {
    let dir = open_tempdir();
    let sub = dir.path().join("rogue");
    std::fs::create_dir(&sub).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = sub.join("s");
    let mut cmd;
    let rogue_uid = if is_root() {
        println!("running as root: the rogue server runs as nobody (uid 65534) via setpriv");
        cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
        ]);
        65534
    } else {
        println!("not root: the rogue server runs as this (non-root) user");
        cmd = Command::new("/usr/bin/python3");
        my_uid()
    };
    let child = cmd
        .arg("-c")
        .arg(ROGUE_SERVER)
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the rogue server");
    let mut server = KillOnDrop(child);
    wait_for_socket(&socket, &mut server.0, "rogue server", String::new);
    // It really answers "accepted" to a client that trusts it.
    let trusting = Client::new(&socket, Duration::from_secs(3), vec![rogue_uid]);
    let answer = trusting
        .call(RequestBody::Preflight {
            user: my_name(),
            pam: Default::default(),
            grace_secs: 0,
            can_enroll: false,
            combined: false,
        })
        .unwrap();
    assert!(
        matches!(answer, ResponseBody::Accepted { .. }),
        "{answer:?}"
    );
    // The module trusts only root (no daemon_uid given), so it never believes it.
    let pam = PamService::new(&format!(
        "auth required MODULE socket={} timeout=3\n",
        socket.display()
    ));
    let run = pam.authenticate(&my_name(), Some("123456\n"));
    assert_refused(&run, &[UNAVAILABLE, AUTHINFO_UNAVAIL]);
    assert!(
        run.stderr.contains(&format!("served by uid {rogue_uid}")),
        "the refusal is logged: {}",
        run.stderr
    );
}

#[test]
fn unknown_argument_is_a_service_error() {
    let daemon = Daemon::start("allow", "");
    let pam = PamService::required(&daemon.socket, "nosuchoption");
    let run = pam.authenticate(&my_name(), Some("123456\n"));
    // pam_strerror(PAM_SERVICE_ERR); the reason goes to the log (pam_wrapper shows it).
    assert_refused(
        &run,
        &["Error in service module", "unknown argument 'nosuchoption'"],
    );
    assert!(!run.text().contains(PROMPT), "{}", run.text());
}

#[test]
fn no_answer_from_the_conversation_is_a_conversation_error() {
    let (_daemon, pam, user, _) = enrolled();
    // pamtester's conversation (misc_conv) answers NULL at end of input.
    let run = pam.authenticate(&user, None);
    assert_refused(&run, &[PROMPT, "Conversation error"]);
}

/// The module speaks the login's few messages through its own codec (twofold_shared::login):
/// no serde, serde_json or wire encoder of another operation is linked into it. The symbol
/// table of the built .so says so (the workspace's build keeps it).
#[test]
fn module_links_no_serde() {
    let out = Command::new("nm")
        .args(["--demangle", "--defined-only"])
        .arg(pam_module())
        .output()
        .expect("nm (binutils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let symbols = String::from_utf8_lossy(&out.stdout);
    assert!(
        symbols.contains("pam_sm_authenticate"),
        "no symbol table read"
    );
    assert!(
        symbols.contains("twofold_shared::login::decode_response"),
        "{symbols}"
    );
    let serde: Vec<&str> = symbols.lines().filter(|l| l.contains("serde")).collect();
    assert!(serde.is_empty(), "serde in the module: {serde:#?}");
}
