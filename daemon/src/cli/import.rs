//! `twofold import google-authenticator | otpauth | seeds`: reading the file safely, sending
//! it over; no secret is printed.

use super::*;

/// Reads a google-authenticator file the way its owner's login would: not through a symlink
/// (a user must not make root read another file, cf. CVE-2024-47191), only a regular file
/// owned by the user or root, at most 64 KiB.
pub(super) fn read_google_authenticator(
    user: &str,
    file: Option<PathBuf>,
) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let account = nix::unistd::User::from_name(user).ok().flatten();
    let path = match (file, &account) {
        (Some(f), _) => f,
        (None, Some(a)) => a.dir.join(".google_authenticator"),
        (None, None) => {
            return Err(format!(
                "{user} has no account here; name the file to import"
            ))
        }
    };
    let shown = path.display().to_string();
    let (mut f, meta) = open_regular(&path)?;
    // A second name for the file (where fs.protected_hardlinks is off, any user can link
    // root's files) would make root read what the user points at.
    if meta.nlink() != 1 {
        return Err(format!(
            "{shown} has {} names (hard links); refusing it",
            meta.nlink()
        ));
    }
    let owner_ok = meta.uid() == 0
        || account
            .as_ref()
            .is_some_and(|a| a.uid.as_raw() == meta.uid());
    if !owner_ok {
        return Err(format!(
            "{shown} belongs to uid {}, neither {user} nor root; refusing it",
            meta.uid()
        ));
    }
    if meta.len() > 64 * 1024 {
        return Err(format!(
            "{shown} is larger than 64 KiB: not a google-authenticator file"
        ));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    f.read_to_end(&mut bytes)
        .map_err(|e| format!("reading {shown}: {e}"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{shown} is not a text file"))
}

pub(super) fn import_google_authenticator(
    ctx: &Ctx,
    user: &str,
    file: Option<PathBuf>,
    force: bool,
    authenticator: Option<String>,
) -> u8 {
    let fail = |msg: String| ctx.fail(&msg);
    let text = match read_google_authenticator(user, file) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) => return fail(e),
    };
    let parsed = match crate::import::parse_google_authenticator(&text) {
        Ok(p) => p,
        Err(e) => return fail(format!("not imported: {e}")),
    };
    for note in &parsed.notes {
        if !ctx.json {
            eprintln!("note: {note}");
        }
    }
    let weak = !parsed.scratch.is_empty();
    let request = RequestBody::Import {
        user: user.to_string(),
        secret: SecretText::new(parsed.secret.to_base32()),
        params: parsed.params,
        window: parsed.window,
        backup_codes: parsed
            .scratch
            .iter()
            .map(|c| SecretText::new(c.as_str()))
            .collect(),
        last_used_step: parsed.last_used_step,
        force,
        authenticator,
        counter: parsed.counter,
    };
    match ctx.call(request) {
        Ok(reply @ ResponseBody::Done { .. }) => {
            let status = ctx.report(reply);
            if weak && !ctx.json {
                println!("The scratch codes (8 digits) work once each as backup codes; they are weaker than");
                println!(
                    "twofold's own. Give the user new ones: twofold backup-codes --user {user}"
                );
            }
            status
        }
        Ok(other) => ctx.report(other),
        Err(e) => e,
    }
}

/// Opens `path` for reading, never through a symbolic link (nor blocking on a FIFO), and only
/// if it is a regular file; errors name the path.
fn open_regular(path: &std::path::Path) -> Result<(std::fs::File, std::fs::Metadata), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("{shown} is a symbolic link; refusing to follow it"),
            _ => format!("cannot open {shown}: {e}"),
        })?;
    let meta = f.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    Ok((f, meta))
}

/// Root's own input (a URI, a vendor's seed file), from a file or standard input (`-`): at most
/// `limit` bytes, not through a symbolic link, zeroed when dropped.
fn read_input(
    file: Option<&std::path::Path>,
    limit: u64,
) -> Result<zeroize::Zeroizing<String>, String> {
    use std::io::Read;
    // At its final size from the start: a buffer grown by reallocation would leave copies of
    // the keys behind, unzeroed.
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(
        usize::try_from(limit + 1).unwrap_or(usize::MAX),
    ));
    let shown = file.map_or("standard input".to_string(), |f| f.display().to_string());
    match file.filter(|f| f.as_os_str() != "-") {
        None => std::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map(|_| ())
            .map_err(|e| format!("reading standard input: {e}"))?,
        Some(path) => {
            let (mut f, _) = open_regular(path)?;
            Read::by_ref(&mut f)
                .take(limit + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("reading {shown}: {e}"))?;
        }
    }
    if bytes.len() as u64 > limit {
        return Err(format!("{shown} is larger than {limit} bytes"));
    }
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(zeroize::Zeroizing::new(text)),
        Err(e) => {
            drop(zeroize::Zeroizing::new(e.into_bytes()));
            Err(format!("{shown} is not text"))
        }
    }
}

pub(super) fn import_otpauth(
    ctx: &Ctx,
    user: &str,
    file: Option<PathBuf>,
    force: bool,
    authenticator: Option<String>,
) -> u8 {
    let text = match read_input(file.as_deref(), 8 * 1024) {
        Ok(t) => t,
        Err(e) => return ctx.fail(&e),
    };
    let uri = match twofold_shared::uri::OtpAuthUri::parse(text.trim()) {
        Ok(u) => u,
        Err(e) => return ctx.fail(&format!("not imported: {e}")),
    };
    ctx.ask(RequestBody::Import {
        user: user.to_string(),
        secret: SecretText::new(uri.secret.to_base32()),
        params: uri.params,
        window: None,
        backup_codes: Vec::new(),
        last_used_step: None,
        force,
        authenticator,
        counter: uri.counter,
    })
}

/// One import per line of the seed file; a report line for each; status 2 when any line was
/// refused (the others are imported all the same).
pub(super) fn import_seeds(ctx: &Ctx, file: &std::path::Path, force: bool) -> u8 {
    let text = match read_input(Some(file), 16 * 1024 * 1024) {
        Ok(t) => t,
        Err(e) => return ctx.fail(&e),
    };
    let lines = match crate::seeds::parse(&text) {
        Ok(l) => l,
        Err(e) => return ctx.fail(&format!("not imported: {e}")),
    };
    let mut report = Vec::new();
    for line in lines {
        let (n, user, outcome) = match line {
            Err((n, why)) => (n, None, Err(why)),
            Ok(seed) => {
                let request = RequestBody::Import {
                    user: seed.user.clone(),
                    secret: SecretText::new(seed.secret.to_base32()),
                    params: seed.params,
                    window: None,
                    backup_codes: Vec::new(),
                    last_used_step: None,
                    force,
                    authenticator: seed.name.clone(),
                    counter: seed.counter,
                };
                let outcome = match ctx.call(request) {
                    Ok(ResponseBody::Done { message }) => Ok(message),
                    Ok(ResponseBody::Error { message, .. }) => Err(message),
                    Ok(other) => Err(format!("unexpected answer: {other:?}")),
                    // The report still says which lines were imported before.
                    Err(_) => Err(
                        "twofoldd could not be asked; this line and the rest were not imported"
                            .into(),
                    ),
                };
                let unreachable = outcome
                    .as_ref()
                    .is_err_and(|w| w.starts_with("twofoldd could not"));
                if unreachable {
                    report.push((seed.line, Some(seed.user), outcome));
                    break;
                }
                (seed.line, Some(seed.user), outcome)
            }
        };
        report.push((n, user, outcome));
    }
    let refused = report.iter().filter(|(_, _, o)| o.is_err()).count();
    if ctx.json {
        let lines: Vec<_> = report
            .iter()
            .map(|(n, user, o)| match o {
                Ok(m) => json!({ "line": n, "user": user, "imported": true, "message": m }),
                Err(why) => json!({ "line": n, "user": user, "imported": false, "reason": why }),
            })
            .collect();
        println!(
            "{}",
            json!({ "lines": lines, "imported": report.len() - refused, "refused": refused })
        );
    } else {
        for (n, user, o) in &report {
            let who = user.as_deref().unwrap_or("-");
            match o {
                Ok(m) => println!("line {n}: {who}: {m}"),
                Err(why) => eprintln!("line {n}: {who}: refused: {why}"),
            }
        }
        println!("{} imported, {refused} refused", report.len() - refused);
    }
    if refused > 0 {
        exit::ERROR
    } else {
        exit::OK
    }
}
