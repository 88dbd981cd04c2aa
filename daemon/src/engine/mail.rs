//! Codes by email: the address and its verification, codes mailed at login, and the limits
//! on how often (reserved in the writer, failures counted).

use super::*;

impl Engine {
    pub(super) fn mailer(&self, cfg: &Config) -> Result<Arc<dyn Mailer>, String> {
        match &self.mailer.0 {
            Some(m) => Ok(m.clone()),
            None => email::from_settings(&cfg.email).map(Arc::from),
        }
    }

    /// Mails a fresh code for `purpose` to `address` and stores its hash (and, for
    /// verification, the address) once the relay has taken the message: a code that never
    /// left cannot be used. The send is reserved first, in the writer: one mail per
    /// email_resend_secs for each purpose (a verification mail does not hold up the first login
    /// code), at most MAX_PER_HOUR of all kinds, failed sends included, however many requests
    /// arrive at once. `Err` is the reply.
    pub(super) fn mail_code(
        &self,
        name: &str,
        address: &str,
        purpose: CodePurpose,
        pam: &PamItems,
        uid: u32,
        now: u64,
    ) -> Result<(), Box<ResponseBody>> {
        let cfg = self.config();
        let mut salt = vec![0u8; backup::SALT_BYTES];
        backup::random_bytes(&mut salt)
            .map_err(|e| Box::new(error(ErrorKind::Internal, e.to_string())))?;
        self.reserve_send(name, purpose, &salt, uid, now)?;
        let code = email::generate_code()
            .map_err(|e| Box::new(error(ErrorKind::Internal, e.to_string())))?;
        let hash = self
            .hash_backup(Lane::Login, &code, &salt)
            .ok_or_else(|| Box::new(error(ErrorKind::Internal, "hashing the code failed")))?;
        let (subject, body, what) = message(&cfg, name, purpose, &code);
        let masked = email::mask(address);
        let sent = self
            .mailer(&cfg)
            .and_then(|m| m.send(address, &subject, &body));
        self.count_mail(sent.is_ok());
        let mut entry = AuditEntry {
            outcome: "sent".into(),
            detail: Some(format!("{what} to {masked}")),
            ..pam_entry(now, "email", name, pam, uid)
        };
        if let Err(why) = sent {
            self.log.error(&format!(
                "email user={} to={} caller_uid={uid} outcome=failed reason={}",
                audit::field(name),
                audit::field(&masked),
                audit::field(&why)
            ));
            entry.outcome = "failed".into();
            entry.detail = Some(format!("{what} to {masked}: {why}"));
            if let Err(e) = self.store.write(move |tx| tx.audit(&entry)) {
                self.log.error(&format!("audit write failed: {e}"));
            }
            return Err(Box::new(error(
                ErrorKind::MailFailed,
                "the code could not be sent by email (the reason is in twofoldd's log)",
            )));
        }
        let record = MailedCode {
            hash: hash.as_bytes().to_vec(),
            salt,
            sent_at: now,
            expires: now.saturating_add(cfg.email_code_ttl),
            tries: 0,
        };
        let owned = name.to_string();
        let address = address.to_string();
        self.store
            .write(move |tx| {
                // Still our reservation (a later one replaced it only past the resend limit).
                let ours = tx
                    .mailed_code(&owned, purpose)?
                    .is_some_and(|c| c.salt == record.salt);
                if ours {
                    if purpose == CodePurpose::Verify {
                        tx.put_email(&owned, &address)?;
                    }
                    tx.put_mailed_code(&owned, purpose, &record)?;
                }
                tx.audit(&entry)
            })
            .map_err(|e| Box::new(self.store_failed("email", name, &e)))?;
        self.log.info(&format!(
            "email user={} to={} caller_uid={uid} outcome=sent purpose={}",
            audit::field(name),
            audit::field(&masked),
            purpose.key()
        ));
        Ok(())
    }

    /// Reserves the send inside the writer, so that however many requests arrive at once
    /// only one mail leaves: a code row that carries the send time but opens nothing (`salt`
    /// tells it from a later one).
    fn reserve_send(
        &self,
        name: &str,
        purpose: CodePurpose,
        salt: &[u8],
        uid: u32,
        now: u64,
    ) -> Result<(), Box<ResponseBody>> {
        let owned = name.to_string();
        // No hash at all (a killed code has one of zeros): how a send in flight is told.
        let reservation = MailedCode {
            hash: Vec::new(),
            salt: salt.to_vec(),
            sent_at: now,
            expires: 0,
            tries: 0,
        };
        let resend = self.config().email_resend_secs;
        let reserved = self
            .store
            .write(move |tx| {
                let previous = tx.mailed_code(&owned, purpose)?;
                // A send still in flight (its reservation opens nothing yet) holds off the next
                // even with email_resend_secs = 0: one relay connection per user and purpose.
                let in_flight = email::SEND_TIMEOUT.as_secs() + 1;
                let too_soon = previous.is_some_and(|p| {
                    let reserved = p.expires == 0 && p.hash.is_empty();
                    let wait = if reserved { resend.max(in_flight) } else { resend };
                    p.sent_at <= now && now < p.sent_at.saturating_add(wait)
                });
                if too_soon {
                    return Ok(Err(
                        "a code was mailed moments ago: use it, or wait a minute before asking again",
                    ));
                }
                if tx.mails_sent_since(&owned, now.saturating_sub(3599))? >= email::MAX_PER_HOUR {
                    return Ok(Err(
                        "ten codes were mailed in the last hour: wait before asking again",
                    ));
                }
                tx.put_mailed_code(&owned, purpose, &reservation)?;
                Ok(Ok(()))
            })
            .map_err(|e| Box::new(self.store_failed("email", name, &e)))?;
        reserved.map_err(|why| {
            self.warn_repeated(
                &format!("mail-limit:{name}"),
                now,
                &format!(
                    "email user={} caller_uid={uid} outcome=refused reason=rate-limit",
                    audit::field(name)
                ),
            );
            Box::new(error(ErrorKind::RateLimited, why))
        })
    }

    /// At login: a code to the verified address. `reuse`: a live code already mailed is
    /// announced again rather than refused by the resend limit (preflight with email_auto).
    pub(super) fn send_email_code(
        &self,
        name: &str,
        pam: &PamItems,
        reuse: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let cfg = self.config();
        if !cfg.email_codes {
            self.log.warn(&format!(
                "send_email_code user={} caller_uid={uid} outcome=rejected reason=email-codes-off",
                audit::field(name)
            ));
            return ResponseBody::Rejected;
        }
        let read = self.store.read(|tx| {
            Ok((
                tx.email(name)?,
                tx.throttle(name)?,
                tx.mailed_code(name, CodePurpose::Login)?,
            ))
        });
        let (address, state, live) = match read {
            Ok(x) => x,
            Err(e) => return self.store_failed("send_email_code", name, &e),
        };
        match throttle::gate(&cfg.throttle, state, now) {
            Gate::Open => {}
            Gate::Wait { until } => {
                return ResponseBody::Throttled {
                    retry_after_secs: until.saturating_sub(now).max(1),
                }
            }
            Gate::Locked => return ResponseBody::Locked,
        }
        let Some(address) = address.filter(|a| a.verified) else {
            self.log.warn(&format!(
                "send_email_code user={} caller_uid={uid} outcome=rejected reason=no-verified-address",
                audit::field(name)
            ));
            return ResponseBody::Rejected;
        };
        let masked = email::mask(&address.address);
        if reuse && live.is_some_and(|c| now < c.expires && now < c.sent_at.saturating_add(60)) {
            return ResponseBody::EmailSent { masked };
        }
        match self.mail_code(name, &address.address, CodePurpose::Login, pam, uid, now) {
            Ok(()) => ResponseBody::EmailSent { masked },
            Err(reply) => *reply,
        }
    }

    pub(super) fn email_set(
        &self,
        name: &str,
        address: &str,
        code: Option<SecretText>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        if !self.config().email_codes {
            return error(
                ErrorKind::BadRequest,
                "email codes are switched off on this host (email_codes in twofold.toml)",
            );
        }
        if let Err(why) = email::validate_address(address) {
            return error(ErrorKind::BadRequest, why);
        }
        if users::uid_of(name).is_none() {
            return error(
                ErrorKind::NoSuchUser,
                format!("{name} is not a local account"),
            );
        }
        let guarded = match self
            .store
            .read(|tx| Ok(tx.user(name)?.is_some() || self.email_factor(tx, name)?))
        {
            Ok(g) => g,
            Err(e) => return self.store_failed("email set", name, &e),
        };
        if needs_code && guarded {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let pam = PamItems {
            service: Some("twofold".into()),
            ..Default::default()
        };
        match self.mail_code(name, address, CodePurpose::Verify, &pam, uid, now) {
            Ok(()) => ResponseBody::EmailSent {
                masked: email::mask(address),
            },
            Err(reply) => *reply,
        }
    }

    pub(super) fn email_confirm(
        &self,
        name: &str,
        code: &SecretText,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let mailed = match self
            .store
            .read(|tx| tx.mailed_code(name, CodePurpose::Verify))
        {
            Ok(m) => m.filter(|m| now < m.expires),
            Err(e) => return self.store_failed("email confirm", name, &e),
        };
        let Some(mailed) = mailed else {
            return error(
                ErrorKind::NoPendingEnrollment,
                "no address is waiting for its code (or the code expired): run 'twofold email set ADDRESS'",
            );
        };
        let hash = email::normalize_code(code.expose())
            .and_then(|c| self.hash_backup(Lane::Login, &c, &mailed.salt));
        let owned = name.to_string();
        let salt = mailed.salt.clone();
        let mut entry = admin_entry(now, "email-confirm", name, "verified", uid);
        let result = self.store.write(move |tx| {
            let Some(m) = tx.mailed_code(&owned, CodePurpose::Verify)? else {
                return Ok(None);
            };
            if m.salt != salt || now >= m.expires {
                return Ok(None);
            }
            let ok = hash.as_ref().is_some_and(|h| {
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    h.as_bytes(),
                    m.hash.as_slice(),
                ))
            });
            if ok {
                tx.set_email_verified(&owned)?;
            } else if m.tries + 1 >= email::MAX_TRIES {
                tx.delete_mailed_code(&owned, CodePurpose::Verify)?;
                entry.outcome = "discarded".into();
            } else {
                tx.count_mailed_code_try(&owned, CodePurpose::Verify)?;
                entry.outcome = "rejected".into();
            }
            tx.audit(&entry)?;
            Ok(Some((ok, m.tries + 1 >= email::MAX_TRIES)))
        });
        match result {
            Ok(Some((true, _))) => {
                self.log.info(&format!(
                    "email-confirm user={} caller_uid={uid} outcome=verified",
                    audit::field(name)
                ));
                ResponseBody::Done {
                    message: format!("email address of {name} verified"),
                }
            }
            Ok(Some((false, dead))) => {
                self.log.warn(&format!(
                    "email-confirm user={} caller_uid={uid} outcome=rejected",
                    audit::field(name)
                ));
                if dead {
                    error(
                        ErrorKind::NoPendingEnrollment,
                        "too many wrong codes; run 'twofold email set ADDRESS' again",
                    )
                } else {
                    ResponseBody::Rejected
                }
            }
            Ok(None) => error(
                ErrorKind::NoPendingEnrollment,
                "the code changed meanwhile; use the newest mail",
            ),
            Err(e) => self.store_failed("email confirm", name, &e),
        }
    }

    pub(super) fn email_remove(
        &self,
        name: &str,
        code: Option<SecretText>,
        needs_code: bool,
        uid: u32,
        now: u64,
    ) -> ResponseBody {
        let (address, enrolled) = match self
            .store
            .read(|tx| Ok((tx.email(name)?, tx.user(name)?.is_some())))
        {
            Ok(x) => x,
            Err(e) => return self.store_failed("email remove", name, &e),
        };
        let Some(address) = address else {
            return error(
                ErrorKind::BadRequest,
                format!("{name} has no email address registered"),
            );
        };
        if needs_code && (address.verified || enrolled) {
            if let Some(refusal) = self.prove(name, code, uid, now) {
                return refusal;
            }
        }
        let owned = name.to_string();
        self.apply_admin(
            admin_entry(now, "email-remove", name, "removed", uid),
            move |tx| tx.delete_email(&owned).map(drop),
            format!("email address of {name} removed"),
        )
    }
}

/// The mail carrying `code`: its subject, its body and what the audit trail calls it.
fn message(
    cfg: &Config,
    name: &str,
    purpose: CodePurpose,
    code: &str,
) -> (String, zeroize::Zeroizing<String>, &'static str) {
    let issuer = cfg.issuer_or_hostname();
    let minutes = cfg.email_code_ttl.div_ceil(60);
    let (subject, intro, what) = match purpose {
        CodePurpose::Login => (
            format!("{issuer}: your login code"),
            format!("Your {issuer} login code for {name} is"),
            "login code",
        ),
        CodePurpose::Verify => (
            format!("{issuer}: confirm your email address"),
            format!("To confirm this address for {name} on {issuer}, enter"),
            "address verification code",
        ),
    };
    let body = zeroize::Zeroizing::new(format!(
        "{intro}\n\n    {}\n\nIt is valid for {minutes} minutes and works once.\n\
         If you did not ask for it, someone may know your password: tell your administrator.\n",
        email::display_code(code)
    ));
    (subject, body, what)
}
