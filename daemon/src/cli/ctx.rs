//! Talking to twofoldd and saying what it answered: one place for replies, errors and exit
//! statuses.

use super::*;

impl Ctx {
    /// Sends `request` and reports the reply.
    pub(super) fn ask(&self, request: RequestBody) -> u8 {
        match self.call(request) {
            Ok(r) => self.report(r),
            Err(e) => e,
        }
    }

    /// Sends `request`; `print` shows the reply it expects (true) and anything else is reported.
    pub(super) fn show(
        &self,
        request: RequestBody,
        print: impl FnOnce(&Ctx, &ResponseBody) -> bool,
    ) -> u8 {
        match self.call(request) {
            Ok(r) if print(self, &r) => exit::OK,
            Ok(r) => self.report(r),
            Err(e) => e,
        }
    }

    /// A usage or local error: one JSON document with `--json`, a line on stderr otherwise.
    pub(super) fn fail(&self, message: &str) -> u8 {
        if self.json {
            println!(
                "{}",
                json!({"result": "error", "kind": "bad_request", "message": message})
            );
        } else {
            eprintln!("twofold: {message}");
        }
        exit::ERROR
    }

    /// Sends a request; a transport failure is reported and becomes exit status 6.
    pub(super) fn call(&self, body: RequestBody) -> Result<ResponseBody, u8> {
        self.client.call(body).map_err(|e| {
            let status = match e {
                ClientError::VersionMismatch { .. } => exit::ERROR,
                _ => exit::UNAVAILABLE,
            };
            if self.json {
                println!(
                    "{}",
                    json!({"result": "error", "kind": "unavailable", "message": e.to_string()})
                );
            } else {
                eprintln!("twofold: {e}");
            }
            status
        })
    }

    /// Prints a reply that needs no special layout and returns its exit status.
    pub(super) fn report(&self, body: ResponseBody) -> u8 {
        let (status, text) = match &body {
            ResponseBody::Accepted {
                method: Method::Totp,
                ..
            } => (exit::OK, "Code accepted.".to_string()),
            ResponseBody::Accepted {
                method: Method::BackupCode,
                backup_codes_left,
            } => (
                exit::OK,
                format!(
                    "Backup code accepted; {} left.",
                    backup_codes_left.unwrap_or(0)
                ),
            ),
            ResponseBody::Accepted {
                method: Method::Email,
                ..
            } => (exit::OK, "Mailed code accepted.".to_string()),
            ResponseBody::Accepted {
                method: Method::Remembered,
                ..
            } => (exit::OK, "Accepted (remembered device).".to_string()),
            ResponseBody::Accepted {
                method: Method::Bypass,
                ..
            } => (exit::OK, "Helpdesk code accepted.".to_string()),
            ResponseBody::Rejected => (exit::REJECTED, "Invalid verification code.".into()),
            ResponseBody::Throttled { retry_after_secs } => (
                exit::THROTTLED,
                format!(
                    "Too many failed attempts; try again in {} min.",
                    retry_after_secs.div_ceil(60)
                ),
            ),
            ResponseBody::Locked => (
                exit::THROTTLED,
                "Locked after too many failed attempts; ask an administrator ('twofold unlock')."
                    .into(),
            ),
            ResponseBody::NotEnrolled { .. } => (
                exit::NOT_ENROLLED,
                "Not enrolled: run 'twofold enroll'.".into(),
            ),
            ResponseBody::Disabled => (
                exit::ERROR,
                "Two-factor authentication is switched off on this host.".into(),
            ),
            ResponseBody::Done { message } => (exit::OK, format!("{message}.")),
            ResponseBody::Pong { daemon_version } => {
                (exit::OK, format!("twofoldd {daemon_version}"))
            }
            ResponseBody::Error { kind, message } => (
                match kind {
                    ErrorKind::PermissionDenied => exit::DENIED,
                    ErrorKind::Busy | ErrorKind::Storage => exit::UNAVAILABLE,
                    ErrorKind::RateLimited => exit::THROTTLED,
                    _ => exit::ERROR,
                },
                format!("twofold: {message}"),
            ),
            // Replies to other requests: not expected here.
            _ => (
                exit::ERROR,
                "twofold: unexpected answer from twofoldd".into(),
            ),
        };
        if self.json {
            println!(
                "{}",
                serde_json::to_string(&body).unwrap_or_else(|_| "{}".into())
            );
        } else if status == exit::OK {
            println!("{text}");
        } else {
            eprintln!("{text}");
        }
        status
    }
}

/// After `email set`: interactively, asks for the mailed code and confirms it; otherwise says
/// how to confirm.
pub(super) fn email_sent(ctx: &Ctx, user: Option<String>, reply: ResponseBody) -> u8 {
    let ResponseBody::EmailSent { masked } = reply else {
        return ctx.report(reply);
    };
    let masked = crate::audit::text(&masked);
    if ctx.json || !std::io::stdin().is_terminal() {
        if ctx.json {
            println!("{}", json!({"result": "email_sent", "masked": masked}));
        } else {
            println!("A code was sent to {masked}; confirm with 'twofold email confirm CODE'.");
        }
        return exit::OK;
    }
    let Some(code) = prompt(&format!("Code sent to {masked}: ")) else {
        return exit::ERROR;
    };
    match ctx.call(RequestBody::EmailConfirm { user, code }) {
        Ok(r) => ctx.report(r),
        Err(e) => e,
    }
}
