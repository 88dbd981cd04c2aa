//! Secrets sealed at rest (optional): with `seal_key_file` set, every TOTP secret in the database
//! is encrypted with XChaCha20-Poly1305 under a 256-bit key kept outside it, bound to its row (the
//! table and the user's name are authenticated data: a sealed secret moved to another user does
//! not open). A copied database or backup then reveals nothing without the key file.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
/// Marks a sealed value and its format.
const MAGIC: &[u8; 4] = b"TFS1";
/// What the key check in the database's `meta` table seals.
const CHECK: &[u8] = b"twofold seal check";

/// A loaded key.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

fn aad(table: &str, name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(table.len() + name.len() + 16);
    a.extend_from_slice(b"twofold\0");
    a.extend_from_slice(table.as_bytes());
    a.push(0);
    a.extend_from_slice(name.as_bytes());
    a
}

impl Sealer {
    pub fn from_key(key: &[u8; KEY_BYTES]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// A fresh random key.
    pub fn generate_key() -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        getrandom::getrandom(key.as_mut()).map_err(|e| format!("no randomness: {e}"))?;
        Ok(key)
    }

    /// `plain` sealed for row `name` of `table`.
    pub fn seal(&self, table: &str, name: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: &aad(table, name),
                },
            )
            .map_err(|_| "sealing failed".to_string())?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_BYTES + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`Sealer::seal`] made for the same row; an error for anything else.
    pub fn open(&self, table: &str, name: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let body = sealed
            .strip_prefix(MAGIC.as_slice())
            .filter(|b| b.len() > NONCE_BYTES)
            .ok_or_else(|| format!("the secret of {name:?} is not sealed"))?;
        let (nonce, data) = body.split_at(NONCE_BYTES);
        let nonce =
            XNonce::try_from(nonce).map_err(|_| format!("the secret of {name:?} is not sealed"))?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: data,
                    aad: &aad(table, name),
                },
            )
            .map_err(|_| format!("the secret of {name:?} does not open with the seal key"))
    }

    /// The value kept in the database to recognise the right key.
    pub fn check_value(&self) -> Result<Vec<u8>, String> {
        self.seal("meta", "check", CHECK)
    }

    /// Whether this key made `check`.
    pub fn matches(&self, check: &[u8]) -> bool {
        self.open("meta", "check", check)
            .is_ok_and(|plain| plain == CHECK)
    }
}

/// Where a new key waits while `twofold seal rekey` re-encrypts: `FILE.new`.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

/// Reads a key file, refusing one that others could read or replace.
pub fn read_key(path: &Path, owner: u32) -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::check_private_dir(dir, owner).map_err(|why| format!("seal key: {why}"))?;
    }
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| format!("seal key {}: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "seal key {} is not a regular file (a symbolic link?)",
            path.display()
        ));
    }
    if meta.uid() != owner && meta.uid() != 0 {
        return Err(format!(
            "seal key {} belongs to uid {}, not to root",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "seal key {} is open to group or others (mode {:04o}); chmod 400 it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("seal key {}: {e}", path.display()))?,
    );
    let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "seal key {} holds {} bytes, not {KEY_BYTES}",
            path.display(),
            bytes.len()
        )
    })?;
    Ok(Zeroizing::new(key))
}

/// Writes a new key file (mode 0400, never over an existing file or through a link), durably.
pub fn write_key(path: &Path, key: &[u8; KEY_BYTES]) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(key)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Replaces `path` with the pending key written beside it (after the database switched).
pub fn promote_pending(path: &Path) -> Result<(), String> {
    std::fs::rename(pending_path(path), path)
        .map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by libsodium (PyNaCl's crypto_aead_xchacha20poly1305_ietf_encrypt, key 00..1f,
    /// nonce 64..7b, our associated data for users/alice): what twofold sealed with any
    /// version of its AEAD crate must open with every later one.
    #[test]
    fn opens_what_libsodium_sealed() {
        let key: [u8; KEY_BYTES] = std::array::from_fn(|i| i as u8);
        let sealed = hex(
            "544653316465666768696a6b6c6d6e6f707172737475767778797a7b3631aae7\
                          a61dcdd2c278cd74953fe5990c74dd2fba232de9a80cfd84d03fb9b7",
        );
        let s = Sealer::from_key(&key);
        assert_eq!(
            s.open("users", "alice", &sealed).unwrap(),
            b"JBSWY3DPEHPK3PXP"
        );
        assert!(s.open("users", "bob", &sealed).is_err());
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sealed_secrets_open_only_for_their_row_and_key() {
        let key = Sealer::generate_key().unwrap();
        let s = Sealer::from_key(&key);
        let sealed = s.seal("users", "alice", b"0123456789abcdefghij").unwrap();
        assert!(!sealed.windows(20).any(|w| w == b"0123456789abcdefghij"));
        assert_eq!(
            s.open("users", "alice", &sealed).unwrap(),
            b"0123456789abcdefghij"
        );
        assert!(s.open("users", "bob", &sealed).is_err(), "moved to bob");
        assert!(s.open("pending", "alice", &sealed).is_err(), "moved table");
        let other = Sealer::from_key(&Sealer::generate_key().unwrap());
        assert!(other.open("users", "alice", &sealed).is_err(), "wrong key");
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(s.open("users", "alice", &flipped).is_err(), "tampered");
        assert!(s.open("users", "alice", b"0123456789abcdefghij").is_err());
        assert!(s.matches(&s.check_value().unwrap()));
        assert!(!other.matches(&s.check_value().unwrap()));
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let path = dir.path().join("seal.key");
        let key = Sealer::generate_key().unwrap();
        write_key(&path, &key).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(*read_key(&path, me).unwrap(), *key);
        assert!(write_key(&path, &key).is_err(), "overwrote a key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_key(&path, me).unwrap_err().contains("chmod 400"));
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"abc").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_key(&short, me).unwrap_err().contains("holds 3 bytes"));
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_key(&link, me)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(read_key(&dir.path().join("missing"), me).is_err());
    }
}
