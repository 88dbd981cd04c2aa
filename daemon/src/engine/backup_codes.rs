//! Backup codes: a fresh set (one Argon2id hash each), replacing the old.

use super::*;

pub(super) struct FreshCodes {
    pub(super) codes: Vec<SecretText>,
    pub(super) hashes: Vec<backup::BackupHash>,
    pub(super) salt: Vec<u8>,
}

impl Engine {
    /// New backup codes and their hashes (one Argon2id each: the slow part of enrollment).
    pub(super) fn fresh_backup_codes(&self) -> Result<FreshCodes, Box<ResponseBody>> {
        let (codes, salt) = backup::generate(self.config().backup_codes as usize)
            .map_err(|e| Box::new(error(ErrorKind::Internal, e.to_string())))?;
        let hashes = codes
            .iter()
            .map(|c| {
                backup::normalize(c.expose()).and_then(|n| self.hash_backup(Lane::Bulk, &n, &salt))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Box::new(error(ErrorKind::Internal, "hashing backup codes failed")))?;
        Ok(FreshCodes {
            codes,
            hashes,
            salt,
        })
    }

    pub(super) fn regenerate(
        &self,
        name: &str,
        code: Option<SecretText>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        match self.store.read(|tx| Ok(tx.user(name)?.is_some())) {
            Ok(true) => {}
            Ok(false) => {
                return ResponseBody::NotEnrolled {
                    required: false,
                    reason: None,
                }
            }
            Err(e) => return self.store_failed("backup-codes", name, &e),
        }
        if needs_code {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let FreshCodes {
            codes,
            hashes,
            salt,
        } = match self.fresh_backup_codes() {
            Ok(x) => x,
            Err(reply) => return *reply,
        };
        let owned = name.to_string();
        let entry = admin_entry(now, "backup-codes", name, "replaced", uid);
        let done = self.store.write(move |tx| {
            if tx.user(&owned)?.is_none() {
                return Ok(false);
            }
            tx.replace_backup_codes(&owned, &salt, &hashes)?;
            tx.audit(&entry)?;
            Ok(true)
        });
        match done {
            Ok(true) => {
                self.log.info(&format!(
                    "backup-codes user={} caller_uid={uid} outcome=replaced",
                    audit::field(name)
                ));
                ResponseBody::BackupCodes {
                    user: name.to_string(),
                    codes,
                }
            }
            Ok(false) => ResponseBody::NotEnrolled {
                required: false,
                reason: None,
            },
            Err(e) => self.store_failed("backup-codes", name, &e),
        }
    }
}
