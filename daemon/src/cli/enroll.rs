//! `twofold enroll`: the QR code (terminal and SVG), the key, the first code, the backup codes.

use super::*;

pub fn qr_svg(data: &str) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    Some(code.render::<svg::Color>().min_dimensions(256, 256).build())
}

/// Writes a new file only its owner can read. Root writes only into a directory root owns
/// reached without a symbolic link: a user's directory (or a link planted there) would make
/// root create files wherever that user points.
pub(super) fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    if nix::unistd::geteuid().is_root() {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let absolute = std::path::absolute(parent)?;
        if std::fs::canonicalize(parent)? != absolute {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "its directory is reached through a symbolic link (or '..'); as root, name a \
                 plain path",
            ));
        }
        if std::fs::metadata(parent)?.uid() != 0 {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "its directory is not root's; as root, write into a directory root owns",
            ));
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

pub(super) fn enroll(
    ctx: &Ctx,
    user: Option<String>,
    force: bool,
    qr_svg_path: Option<PathBuf>,
    code: Option<SecretText>,
    params: Option<TotpParams>,
    authenticator: Option<String>,
) -> u8 {
    let reply = with_code_enroll(ctx, &user, force, code, params, &authenticator);
    let info = match reply {
        Ok(ResponseBody::Enrollment(info)) => info,
        Ok(other) => return ctx.report(other),
        Err(e) => return e,
    };
    if let Some(path) = &qr_svg_path {
        match qr_svg(info.otpauth_uri.expose()).map(|svg| write_private(path, &svg)) {
            Some(Ok(())) => {}
            Some(Err(e)) => return ctx.fail(&format!("cannot write {}: {e}", path.display())),
            None => return ctx.fail("the otpauth URI does not fit in a QR code"),
        }
    }
    if ctx.json {
        println!(
            "{}",
            json!({
                "user": info.user,
                "secret": info.secret.expose(),
                "otpauth_uri": info.otpauth_uri.expose(),
                "label": info.label,
                "issuer": info.issuer,
            })
        );
        return exit::OK;
    }
    show_enrollment(&info, qr_svg_path.as_ref());
    // Up to three tries at the first code.
    for attempt in 1..=3 {
        let Some(code) = prompt(&format!(
            "Enter the {}-digit code the app shows now: ",
            info.digits
        )) else {
            eprintln!(
                "\nThe enrollment is waiting. Finish it with: twofold confirm CODE{}",
                user_flag(&user)
            );
            return exit::ERROR;
        };
        match ctx.call(RequestBody::Confirm {
            user: user.clone(),
            code,
        }) {
            Ok(ResponseBody::BackupCodes { user: name, codes }) => {
                print_backup_codes(ctx, &name, &codes, true);
                return exit::OK;
            }
            Ok(ResponseBody::Rejected) if attempt < 3 => {
                eprintln!("That code is not right. Check that the phone's time is set automatically, then try the next code.");
            }
            Ok(other) => return ctx.report(other),
            Err(e) => return e,
        }
    }
    eprintln!(
        "Enrollment not confirmed. Run 'twofold enroll{}' to start again.",
        user_flag(&user)
    );
    exit::REJECTED
}

pub(super) fn parse_algorithm(text: &str) -> Result<Algorithm, String> {
    Algorithm::parse(text).ok_or_else(|| format!("{text:?} is not sha1, sha256 or sha512"))
}

pub(super) fn user_flag(user: &Option<String>) -> String {
    user.as_ref()
        .map(|u| format!(" --user {u}"))
        .unwrap_or_default()
}

pub(super) fn show_enrollment(info: &EnrollmentInfo, svg: Option<&PathBuf>) {
    let tty = std::io::stdout().is_terminal();
    println!("{}\n", display::SCAN);
    if let Some(qr) = crate::qr::text(info.otpauth_uri.expose(), crate::qr::Polarity::Dark) {
        for line in qr.lines() {
            if tty {
                // Black modules on white, whatever the terminal's colours.
                println!("  \x1b[30;107m{line}\x1b[0m");
            } else {
                println!("  {line}");
            }
        }
    }
    if let Some(path) = svg {
        println!(
            "\n(The QR code is also in {}; delete it once scanned.)",
            path.display()
        );
    }
    println!();
    for line in display::key_lines(
        &info.label,
        info.secret.expose(),
        info.algorithm,
        info.digits,
        info.period,
    ) {
        println!("{line}");
    }
    println!();
    let _ = std::io::stdout().flush();
}

pub(super) fn print_backup_codes(ctx: &Ctx, user: &str, codes: &[SecretText], first_time: bool) {
    if ctx.json {
        let codes: Vec<&str> = codes.iter().map(|c| c.expose()).collect();
        println!("{}", json!({"user": user, "backup_codes": codes}));
        return;
    }
    if first_time {
        println!("Two-factor authentication is now active for {user}.\n");
    } else {
        println!("New backup codes for {user}; the old ones no longer work.\n");
    }
    for line in display::BACKUP_ADVICE {
        println!("{line}");
    }
    println!();
    for line in display::backup_code_lines(codes) {
        println!("{line}");
    }
    println!();
}
