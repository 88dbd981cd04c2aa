//! Where the secrets live must be twofoldd's alone. Checked at start-up, before the database is
//! opened: a database anyone else can read is a copy of every user's second factor, and one
//! anyone else can replace (a symbolic link, a directory others may write to) is a way to make
//! twofoldd accept a code of the attacker's choosing.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The files SQLite keeps beside a database.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Refuses a database path that is not private to `owner` (twofoldd's effective uid), with the
/// reason and the fix. A database that does not exist yet is fine if its directory is.
pub fn check_database(path: &Path, owner: u32) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != owner && meta.uid() != 0 {
        return Err(format!(
            "the database directory {} belongs to uid {}, not to root or twofoldd (uid {owner})",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "the database directory {} is writable by others (mode {mode:04o}): they could \
             replace the database; chmod go-w it or choose a private directory",
            dir.display()
        ));
    }
    if mode & 0o004 != 0 {
        return Err(format!(
            "the database directory {} is readable by others (mode {mode:04o}); chmod o-rwx it \
             (the package uses /var/lib/twofold, mode 0700)",
            dir.display()
        ));
    }
    check_ancestors(&dir, owner)?;
    let mut files = vec![path.to_path_buf()];
    for suffix in COMPANIONS {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        files.push(PathBuf::from(p));
    }
    for file in files {
        check_file(&file, owner)?;
    }
    Ok(())
}

/// Every directory above `dir` must belong to root (or twofoldd) and be writable by nobody
/// else, unless it is sticky (like /tmp, where others cannot rename what is not theirs):
/// otherwise someone could move `dir` away and put their own in its place.
pub fn check_ancestors(dir: &Path, owner: u32) -> Result<(), String> {
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for ancestor in dir.ancestors().skip(1) {
        let meta =
            std::fs::metadata(ancestor).map_err(|e| format!("{}: {e}", ancestor.display()))?;
        if meta.uid() != 0 && meta.uid() != owner {
            return Err(format!(
                "{} belongs to uid {}: that user could replace everything below it",
                ancestor.display(),
                meta.uid()
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "{} is writable by others (mode {mode:04o}) and not sticky: they could replace \
                 what is below it",
                ancestor.display()
            ));
        }
    }
    Ok(())
}

/// The directory holding a key or database file: root's (or twofoldd's), writable by nobody
/// else, and so is every directory above it.
pub fn check_private_dir(dir: &Path, owner: u32) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.uid() != 0 && meta.uid() != owner {
        return Err(format!(
            "{} belongs to uid {}, not to root or twofoldd",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} is writable by others (mode {mode:04o}); chmod go-w it",
            dir.display()
        ));
    }
    check_ancestors(dir, owner)
}

fn check_file(path: &Path, owner: u32) -> Result<(), String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(format!(
            "{} is a symbolic link; twofoldd opens its database only at a real path (point \
             `database` at the file itself)",
            path.display()
        ));
    }
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() || kind.is_fifo() {
            "a socket or pipe"
        } else {
            "not a regular file"
        };
        return Err(format!("{} is {what}", path.display()));
    }
    if meta.uid() != owner {
        return Err(format!(
            "{} belongs to uid {}, not to twofoldd (uid {owner}); chown it",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is open to group or others (mode {mode:04o}): it holds every user's secret; \
             chmod 600 it",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_paths_pass_and_others_are_refused_with_the_reason() {
        let me = nix::unistd::geteuid().as_raw();
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o700);
        let db = dir.join("t.db");
        assert_eq!(
            check_database(&db, me),
            Ok(()),
            "missing database, private dir"
        );
        std::fs::write(&db, b"").unwrap();
        chmod(&db, 0o600);
        assert_eq!(check_database(&db, me), Ok(()));

        chmod(&db, 0o644);
        let err = check_database(&db, me).unwrap_err();
        assert!(
            err.contains("open to group or others") && err.contains("0644"),
            "{err}"
        );
        chmod(&db, 0o600);

        let wal = dir.join("t.db-wal");
        std::os::unix::fs::symlink("/etc/passwd", &wal).unwrap();
        let err = check_database(&db, me).unwrap_err();
        assert!(err.contains("t.db-wal is a symbolic link"), "{err}");
        std::fs::remove_file(&wal).unwrap();

        let link = dir.join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let err = check_database(&link, me).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");

        chmod(&dir, 0o755);
        let err = check_database(&db, me).unwrap_err();
        assert!(err.contains("readable by others"), "{err}");
        chmod(&dir, 0o770);
        let err = check_database(&db, me).unwrap_err();
        assert!(err.contains("writable by others"), "{err}");
        chmod(&dir, 0o711);
        assert_eq!(check_database(&db, me), Ok(()), "others may pass through");
        chmod(&dir, 0o700);

        // A parent others may write to (not sticky) could swap the whole directory.
        chmod(top.path(), 0o777);
        let err = check_database(&db, me).unwrap_err();
        assert!(
            err.contains("writable by others") && err.contains("not sticky"),
            "{err}"
        );
        chmod(top.path(), 0o1777);
        assert_eq!(check_database(&db, me), Ok(()), "sticky, like /tmp");
        chmod(top.path(), 0o755);

        let err = check_database(&db, me.wrapping_add(4242)).unwrap_err();
        assert!(err.contains("belongs to uid"), "{err}");

        std::fs::remove_file(&db).unwrap();
        std::fs::create_dir(&db).unwrap();
        let err = check_database(&db, me).unwrap_err();
        assert!(err.contains("is a directory"), "{err}");
    }
}
