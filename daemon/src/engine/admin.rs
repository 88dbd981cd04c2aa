//! Root's reports and maintenance: the audit trail, the policy report, re-keying the seal.

use super::*;

impl Engine {
    /// The newest entries of the trail (all users, or one), oldest first.
    pub(super) fn audit_trail(
        &self,
        user: Option<String>,
        since_secs: Option<u64>,
        now: u64,
    ) -> ResponseBody {
        const LIMIT: u32 = 10_000;
        let since = since_secs.map_or(0, |s| now.saturating_sub(s));
        match self
            .store
            .read(|tx| tx.audit_entries(user.as_deref(), since, LIMIT))
        {
            Ok((entries, omitted)) => ResponseBody::Audit { entries, omitted },
            Err(e) => self.store_failed("audit", user.as_deref().unwrap_or("-"), &e),
        }
    }

    /// `twofold seal rekey`: a new key file, every secret re-encrypted under it in one
    /// transaction, then the file put in place. A crash between the commit and the rename
    /// leaves the new key at `FILE.new`, which twofoldd finds and promotes at its next start.
    pub(super) fn seal_rekey(&self, uid: u32, now: u64) -> ResponseBody {
        let Some(path) = self.config().seal_key_file.clone() else {
            return error(
                ErrorKind::BadRequest,
                "secrets are not sealed: set seal_key_file and restart twofoldd first",
            );
        };
        let _one_at_a_time = self.rekeying.lock().unwrap_or_else(|p| p.into_inner());
        let pending = seal::pending_path(&path);
        if pending.exists() {
            // Left by an earlier rekey: if the database already uses it (its rename failed),
            // it is the only copy of the key and goes in place first; otherwise it never
            // committed and opens nothing.
            let owner = nix::unistd::geteuid().as_raw();
            let opens = seal::read_key(&pending, owner)
                .map(|k| self.store.opens_with(&seal::Sealer::from_key(&k)));
            match opens {
                Ok(Ok(true)) => {
                    if let Err(why) = seal::promote_pending(&path) {
                        self.log.error(&format!("seal rekey: {why}"));
                        return error(ErrorKind::Internal, why);
                    }
                    self.log.warn(
                        "seal rekey: the key of an earlier rekey was not in place; it is now",
                    );
                }
                Ok(Err(e)) => return self.store_failed("seal rekey", "-", &e),
                Ok(Ok(false)) | Err(_) => {
                    let _ = std::fs::remove_file(&pending);
                }
            }
        }
        let key = match seal::Sealer::generate_key()
            .and_then(|k| seal::write_key(&pending, &k).map(|_| k))
        {
            Ok(k) => k,
            Err(why) => {
                self.log.error(&format!("seal rekey: {why}"));
                return error(ErrorKind::Internal, why);
            }
        };
        let count = match self.store.rekey(seal::Sealer::from_key(&key)) {
            Ok(n) => n,
            Err(StoreError::Unavailable) => {
                // Whether it committed is unknown: FILE.new stays, and the next start (or rekey)
                // puts it in place if the database uses it.
                self.log.error(&format!(
                    "seal rekey: the database writer did not answer; {} is kept",
                    pending.display()
                ));
                return storage_error();
            }
            Err(e) => {
                let _ = std::fs::remove_file(&pending);
                self.log
                    .error(&format!("seal rekey failed, the old key stays: {e}"));
                return storage_error();
            }
        };
        if let Err(why) = seal::promote_pending(&path) {
            self.log.error(&format!(
                "seal rekey: the database uses the new key, but {why}; it is in {} and \
                 twofoldd will put it in place at its next start",
                pending.display()
            ));
            return error(ErrorKind::Internal, why);
        }
        let mut entry = admin_entry(now, "seal-rekey", "-", "rekeyed", uid);
        entry.user = None;
        entry.detail = Some(format!("{count} secrets"));
        if let Err(e) = self.store.write(move |tx| tx.audit(&entry)) {
            self.log.error(&format!("audit write failed: {e}"));
        }
        self.log
            .info(&format!("seal rekey caller_uid={uid} secrets={count}"));
        ResponseBody::Done {
            message: format!(
                "{count} secrets re-encrypted under a new key in {}",
                path.display()
            ),
        }
    }

    pub(super) fn policy_report(&self) -> ResponseBody {
        let cfg = self.config();
        let enrolled: std::collections::BTreeSet<String> =
            match self.store.read(|tx| tx.user_names()) {
                Ok(names) => names.into_iter().collect(),
                Err(e) => return self.store_failed("policy", "-", &e),
            };
        let accounts =
            users::local_accounts(&std::fs::read_to_string("/etc/passwd").unwrap_or_default());
        let mut report = PolicyReport {
            enabled: cfg.enabled,
            unenrolled: cfg.unenrolled.name().into(),
            self_enroll: cfg.self_enroll,
            enroll_at_login: cfg.enroll_at_login.name().into(),
            window: cfg.window,
            accounts: accounts.len() as u32,
            ..Default::default()
        };
        for name in &accounts {
            if !cfg.enabled {
                report.pass_without_code.push(name.clone());
            } else if enrolled.contains(name) {
                report.asked_for_code.push(name.clone());
            } else if matches!(
                self.not_enrolled(name),
                ResponseBody::NotEnrolled { required: true, .. }
            ) {
                report.refused_until_enrolled.push(name.clone());
            } else {
                report.pass_without_code.push(name.clone());
            }
        }
        report.other_enrolled = enrolled.iter().filter(|n| !accounts.contains(n)).count() as u32;
        for group in &cfg.require_groups {
            let members: Vec<&String> = accounts
                .iter()
                .filter(|a| users::in_any_group(a, std::slice::from_ref(group)).unwrap_or(false))
                .collect();
            report.require_groups.push(GroupReport {
                group: group.clone(),
                exists: nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .is_some(),
                members: members.len() as u32,
                not_enrolled: members.iter().filter(|m| !enrolled.contains(**m)).count() as u32,
            });
        }
        ResponseBody::Policy(report)
    }
}
