//! Secrets sealed at rest (issue 7): `twofold seal init`, a database sealed at the next start
//! (secrets enrolled before included), a copy of it useless without the key, a missing or wrong
//! key refused with the reason, `twofold seal rekey`, and a rekey interrupted between its commit
//! and the key file's replacement finished at the next start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use twofold_tests::*;

fn b32_decode(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut acc, mut out) = (0u32, 0u64, Vec::new());
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = alphabet.iter().position(|a| *a == c).unwrap() as u64;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Every byte twofoldd keeps on disk for the database.
fn database_bytes(db: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-journal"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", db.display())) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn write_config(d: &Daemon, extra: &str) {
    std::fs::write(
        &d.config,
        format!(
            "socket = {:?}\ndatabase = {:?}\nissuer = \"test-host\"\n{extra}\n",
            d.socket, d.database
        ),
    )
    .unwrap();
}

/// A copy of the stopped daemon's database in a directory of its own, with a config.
fn copy_database(d: &Daemon, name: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = dir.path().join(name);
    std::fs::copy(&d.database, &db).unwrap();
    // A SIGKILLed daemon leaves committed pages in the write-ahead log: copy it too.
    let wal = PathBuf::from(format!("{}-wal", d.database.display()));
    if wal.exists() {
        std::fs::copy(&wal, format!("{}-wal", db.display())).unwrap();
    }
    let config = dir.path().join("copy.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\ndatabase = {:?}\n{extra}\n",
            dir.path().join("s"),
            db
        ),
    )
    .unwrap();
    (dir, config)
}

#[test]
fn sealed_database_reveals_nothing_and_needs_its_key() {
    let mut d = Daemon::start_with("backup_codes = 2");
    let (sam, _) = d.enroll_now("sam"); // enrolled before sealing
    let pending = d.cli(&["enroll", "--user", "pat", "--json"]);
    assert_eq!(pending.code(), 0);
    let pat = pending.json()["secret"].as_str().unwrap().to_string();
    let raw_sam = b32_decode(&sam);
    assert!(
        contains(&database_bytes(&d.database), &raw_sam),
        "test premise: stored as is"
    );

    let key = d.database.parent().unwrap().join("seal.key");
    write_config(&d, &format!("backup_codes = 2\nseal_key_file = {key:?}"));
    let config = d.config.to_str().unwrap().to_string();
    let init = d.cli(&["seal", "init", "--config", &config]);
    assert_eq!(init.code(), 0, "{}", init.stderr());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o400
    );
    let again = d.cli(&["seal", "init", "--config", &config]);
    assert_eq!(again.code(), 2, "a second init must not replace the key");
    assert!(again.stderr().contains("exists"), "{}", again.stderr());

    d.restart(); // seals at start-up
    d.stop();
    let bytes = database_bytes(&d.database);
    for (who, raw) in [("sam", raw_sam.clone()), ("pat", b32_decode(&pat))] {
        assert!(
            !contains(&bytes, &raw),
            "{who}'s secret is still readable in the files"
        );
        assert!(!contains(&bytes, who_b32(&raw).as_bytes()));
    }
    d.restart();
    ensure_step_time(8);
    assert_eq!(d.cli(&["verify", "sam", &oathtool(&sam, 1)]).code(), 0);
    let c = d.cli(&["confirm", &oathtool(&pat, 0), "--user", "pat"]);
    assert_eq!(c.code(), 0, "{}", c.stderr());
    let (kim, _) = d.enroll_now("kim"); // enrolled while sealed
    d.stop();
    assert!(!contains(&database_bytes(&d.database), &b32_decode(&kim)));

    // A copy of the database: without the key it does not even start; with another key neither.
    let (_c1, no_key) = copy_database(&d, "copy.db", "");
    let (code, err) = refused_start(&no_key);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("sealed") && err.contains("seal_key_file"),
        "{err}"
    );
    let (c2, _) = copy_database(&d, "copy.db", "");
    let other_key = c2.path().join("other.key");
    let other_config = c2.path().join("other.toml");
    std::fs::write(
        &other_config,
        format!(
            "socket = {:?}\ndatabase = {:?}\nseal_key_file = {other_key:?}\n",
            c2.path().join("s"),
            c2.path().join("copy.db")
        ),
    )
    .unwrap();
    assert_eq!(
        d.cli(&["seal", "init", "--config", other_config.to_str().unwrap()])
            .code(),
        0
    );
    let (code, err) = refused_start(&other_config);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not open this database"), "{err}");

    // The key file gone: refused with the reason; back: works.
    let aside = key.with_extension("aside");
    std::fs::rename(&key, &aside).unwrap();
    let (code, err) = refused_start(&d.config);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("seal key") && err.contains("No such file"),
        "{err}"
    );
    std::fs::rename(&aside, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = refused_start(&d.config);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("chmod 400"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    d.restart();
    assert_eq!(
        d.cli(&["status", "--user", "kim", "--json"]).json()["enrolled"],
        true
    );
}

fn who_b32(raw: &[u8]) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for b in raw {
        acc = (acc << 8) | u64::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(alphabet[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

#[test]
fn rekey_replaces_the_key_and_an_interrupted_one_is_finished_at_start() {
    let dir_key = |d: &Daemon| d.database.parent().unwrap().join("seal.key");
    let mut d = Daemon::start_with("backup_codes = 2");
    let key = dir_key(&d);
    write_config(&d, &format!("backup_codes = 2\nseal_key_file = {key:?}"));
    let config = d.config.to_str().unwrap().to_string();
    assert_eq!(d.cli(&["seal", "init", "--config", &config]).code(), 0);
    d.restart();
    let (ula, _) = d.enroll_now("ula");
    let (vic, _) = d.enroll_now("vic");
    let old_key = std::fs::read(&key).unwrap();

    let r = d.cli(&["seal", "rekey"]);
    assert_eq!(r.code(), 0, "{} {}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("2 secrets"), "{}", r.stdout());
    let new_key = std::fs::read(&key).unwrap();
    assert_ne!(old_key, new_key);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o400
    );
    ensure_step_time(8);
    assert_eq!(d.cli(&["verify", "ula", &oathtool(&ula, 1)]).code(), 0);
    assert!(
        d.log().contains("seal rekey caller_uid=0 secrets=2"),
        "{}",
        d.log()
    );

    // The old key no longer opens the database (a copy of it).
    d.stop();
    let (c, copy_config) = copy_database(&d, "copy.db", "");
    let old_file = c.path().join("old.key");
    std::fs::write(&old_file, &old_key).unwrap();
    std::fs::set_permissions(&old_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    let text = std::fs::read_to_string(&copy_config).unwrap();
    std::fs::write(
        &copy_config,
        format!("{text}seal_key_file = {old_file:?}\n"),
    )
    .unwrap();
    let (code, err) = refused_start(&copy_config);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not open"), "{err}");

    // A crash after the database switched but before the key file was replaced: the new key
    // waits at FILE.new, the old one is still at FILE. The next start finishes the job.
    let pending = PathBuf::from(format!("{}.new", key.display()));
    std::fs::rename(&key, &pending).unwrap();
    std::fs::write(&key, &old_key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    d.restart();
    assert!(
        d.log().contains("finished an interrupted rekey"),
        "{}",
        d.log()
    );
    assert_eq!(std::fs::read(&key).unwrap(), new_key);
    assert!(!pending.exists());
    assert_eq!(d.cli(&["verify", "vic", &oathtool(&vic, 1)]).code(), 0);

    // The same leftover met by a running daemon's next rekey (its rename had failed): the key
    // the database uses goes in place first, so the rekey never loses it.
    let current = std::fs::read(&key).unwrap();
    std::fs::rename(&key, &pending).unwrap();
    std::fs::write(&key, &old_key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let r = d.cli(&["seal", "rekey"]);
    assert_eq!(r.code(), 0, "{} {}", r.stdout(), r.stderr());
    assert!(
        d.log().contains("was not in place; it is now"),
        "{}",
        d.log()
    );
    assert_ne!(std::fs::read(&key).unwrap(), current);
    assert!(!pending.exists());
    // A leftover that opens nothing (a rekey that never committed) is simply dropped.
    std::fs::write(&pending, [7u8; 32]).unwrap();
    std::fs::set_permissions(&pending, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(d.cli(&["seal", "rekey"]).code(), 0);
    assert!(!pending.exists());
    d.restart();
    // ula's secret opens under the key now in place: her code is accepted (0) or, if this
    // step's was used above, a replay (1); never a storage error (6). A new enrollment works.
    let c = d.cli(&["verify", "ula", &oathtool(&ula, 1)]).code();
    assert!(c == 0 || c == 1, "exit {c}: {}", d.log());
    let (wes, _) = d.enroll_now("wes");
    ensure_step_time(8);
    assert_eq!(d.cli(&["verify", "wes", &oathtool(&wes, 1)]).code(), 0);

    // Without sealing configured, rekey says so.
    write_config(&d, "");
    let plain = Daemon::start_with("");
    let r = plain.cli(&["seal", "rekey"]);
    assert_eq!(r.code(), 2, "{} {}", r.stdout(), r.stderr());
    assert!(r.stderr().contains("not sealed"), "{}", r.stderr());
}
