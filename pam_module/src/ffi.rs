//! The C edge: the hooks libpam calls and [`Pam`] over the real handle. The only `unsafe` code
//! of the module lives here; no panic crosses into the host (sshd, sudo, login).
#![allow(unsafe_code)]

use crate::auth::{self, ConvError, ItemKind, LogLevel, Pam, PamCode, UserError};
use pam::constants::{
    PamMessageStyle, PamResultCode, PAM_ERROR_MSG, PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON,
    PAM_TEXT_INFO,
};
use pam::conv::Conv;
use pam::items::{AuthTok, RHost, RUser, Service, Tty, User};
use pam::module::PamHandle;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use twofold_shared::wire::SecretText;

extern "C" {
    /// libpam's logger: LOG_AUTHPRIV, prefixed with the module and service names.
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
    /// libpam's setter; for PAM_AUTHTOK it keeps its own copy of the string.
    fn pam_set_item(pamh: *mut PamHandle, item_type: c_int, item: *const c_void) -> c_int;
}

/// PAM_AUTHTOK in `<security/_pam_types.h>`.
const PAM_AUTHTOK: c_int = 6;

#[no_mangle]
pub unsafe extern "C" fn pam_sm_authenticate(
    pamh: *mut PamHandle,
    flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    // SAFETY: libpam calls this hook with its live handle and the stack line's `argc` arguments.
    unsafe {
        guarded(pamh, argc, argv, |h, args| {
            auth::authenticate(&mut Handle(h), args, flags as u32)
        })
    }
}

/// The module establishes no credentials; `pam_sm_authenticate` alone decides. PAM_SUCCESS,
/// as auth-only modules answer, so that `pam_setcred` over the stack does not fail.
#[no_mangle]
pub extern "C" fn pam_sm_setcred(
    _pamh: *mut PamHandle,
    _flags: c_int,
    _argc: c_int,
    _argv: *const *const c_char,
) -> c_int {
    PamResultCode::PAM_SUCCESS as c_int
}

fn raw(code: PamCode) -> c_int {
    let code = match code {
        PamCode::Success => PamResultCode::PAM_SUCCESS,
        PamCode::Ignore => PamResultCode::PAM_IGNORE,
        PamCode::AuthErr => PamResultCode::PAM_AUTH_ERR,
        PamCode::MaxTries => PamResultCode::PAM_MAXTRIES,
        PamCode::AuthInfoUnavail => PamResultCode::PAM_AUTHINFO_UNAVAIL,
        PamCode::ConvErr => PamResultCode::PAM_CONV_ERR,
        PamCode::ServiceErr => PamResultCode::PAM_SERVICE_ERR,
    };
    code as c_int
}

/// Runs a hook body; a null handle, a malformed argv or a panic become PAM_SERVICE_ERR, which
/// keeps the user out.
///
/// # Safety
/// `pamh` is null or a live PAM handle used by no one else during the call; `argv` holds
/// `argc` pointers, each null or a NUL-terminated string outliving the call.
unsafe fn guarded(
    pamh: *mut PamHandle,
    argc: c_int,
    argv: *const *const c_char,
    body: impl FnOnce(&mut PamHandle, &[&CStr]) -> PamCode,
) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per this function's contract, the handle is live and ours for the call.
        let handle = unsafe { pamh.as_mut() }?;
        // SAFETY: per this function's contract, argv holds argc valid entries.
        let args = unsafe { arguments(argc, argv) }?;
        Some(body(handle, &args))
    }));
    match result {
        Ok(Some(code)) => raw(code),
        Ok(None) => PamResultCode::PAM_SERVICE_ERR as c_int,
        Err(payload) => {
            // Dropping a panic payload can itself panic; leak it instead.
            std::mem::forget(payload);
            PamResultCode::PAM_SERVICE_ERR as c_int
        }
    }
}

/// # Safety
/// `argv` holds `argc` pointers, each null or a NUL-terminated string outliving `'a`.
unsafe fn arguments<'a>(argc: c_int, argv: *const *const c_char) -> Option<Vec<&'a CStr>> {
    let n = usize::try_from(argc).ok()?;
    if n == 0 {
        return Some(Vec::new());
    }
    if argv.is_null() {
        return None;
    }
    // SAFETY: argv is non-null and holds n pointers (contract).
    let pointers = unsafe { std::slice::from_raw_parts(argv, n) };
    pointers
        .iter()
        .map(|&p| {
            // SAFETY: a non-null entry is a NUL-terminated string outliving 'a (contract).
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) })
        })
        .collect()
}

/// [`Pam`] over libpam.
struct Handle<'a>(&'a mut PamHandle);

impl Handle<'_> {
    fn send(&self, style: PamMessageStyle, text: &str) -> Result<Option<SecretText>, ConvError> {
        let conv = match self.0.get_item::<Conv>() {
            Ok(Some(conv)) => conv,
            _ => return Err(ConvError),
        };
        let answer = conv.send(style, text).map_err(|_| ConvError)?;
        // SecretBytes and SecretText both zero their memory when dropped.
        Ok(answer.map(|bytes| SecretText::new(String::from_utf8_lossy(bytes.as_bytes()))))
    }

    fn raw_user(&self) -> Option<Vec<u8>> {
        match self.0.get_item::<User>() {
            Ok(Some(user)) => Some(user.0.to_bytes().to_vec()),
            _ => None,
        }
    }
}

impl Pam for Handle<'_> {
    fn user(&mut self) -> Result<Vec<u8>, UserError> {
        match self.0.get_user(None) {
            Ok(name) => Ok(name.into_bytes()),
            Err(code) => match self.raw_user() {
                // pam-bindings refuses names that are not UTF-8; the item still holds them.
                Some(bytes) => Ok(bytes),
                None if code == PamResultCode::PAM_CONV_ERR
                    || code == PamResultCode::PAM_CONV_AGAIN =>
                {
                    Err(UserError::Conversation)
                }
                None => Err(UserError::Other),
            },
        }
    }

    fn item(&mut self, kind: ItemKind) -> Option<Vec<u8>> {
        let bytes = match kind {
            ItemKind::Service => self.0.get_item::<Service>().ok()?.map(|s| s.0.to_bytes()),
            ItemKind::RHost => self.0.get_item::<RHost>().ok()?.map(|s| s.0.to_bytes()),
            ItemKind::Tty => self.0.get_item::<Tty>().ok()?.map(|s| s.0.to_bytes()),
            ItemKind::RUser => self.0.get_item::<RUser>().ok()?.map(|s| s.0.to_bytes()),
        };
        bytes.map(<[u8]>::to_vec)
    }

    fn authtok(&mut self) -> Option<SecretText> {
        match self.0.get_item::<AuthTok>() {
            Ok(Some(tok)) => Some(SecretText::new(String::from_utf8_lossy(tok.as_bytes()))),
            _ => None,
        }
    }

    fn set_authtok(&mut self, password: &SecretText) -> bool {
        if password.expose().contains('\0') {
            return false;
        }
        // Zeroed when dropped, like every other copy of the password here; made at its final
        // size, so that no grown-out-of buffer is left behind.
        let mut text = String::with_capacity(password.expose().len() + 1);
        text.push_str(password.expose());
        text.push('\0');
        let terminated = SecretText::new(text);
        // SAFETY: the handle is live for the call; the item is a NUL-terminated string that
        // outlives the call, and libpam copies it.
        let rc = unsafe {
            pam_set_item(
                &mut *self.0,
                PAM_AUTHTOK,
                terminated.expose().as_ptr().cast::<c_void>(),
            )
        };
        rc == PamResultCode::PAM_SUCCESS as c_int
    }

    fn prompt(&mut self, text: &str, echo: bool) -> Result<Option<SecretText>, ConvError> {
        let style = if echo {
            PAM_PROMPT_ECHO_ON
        } else {
            PAM_PROMPT_ECHO_OFF
        };
        self.send(style, text)
    }

    fn info(&mut self, text: &str) {
        let _ = self.send(PAM_TEXT_INFO, text);
    }

    fn error(&mut self, text: &str) {
        let _ = self.send(PAM_ERROR_MSG, text);
    }

    fn log(&mut self, level: LogLevel, text: &str) {
        let priority = match level {
            LogLevel::Error => libc::LOG_ERR,
            LogLevel::Debug => libc::LOG_DEBUG,
        };
        let Ok(line) = CString::new(text.replace('\0', "")) else {
            return;
        };
        // SAFETY: the handle is live for the call; "%s" consumes exactly the one argument
        // given, a NUL-terminated string that outlives the call.
        unsafe { pam_syslog(&*self.0, priority, c"%s".as_ptr(), line.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr::{null, null_mut, NonNull};

    const SERVICE_ERR: c_int = 3;

    #[test]
    fn codes_are_linux_pams() {
        let table = [
            (PamCode::Success, 0),
            (PamCode::ServiceErr, 3),
            (PamCode::AuthErr, 7),
            (PamCode::AuthInfoUnavail, 9),
            (PamCode::MaxTries, 11),
            (PamCode::ConvErr, 19),
            (PamCode::Ignore, 25),
        ];
        for (code, value) in table {
            assert_eq!(raw(code), value, "{code:?}");
        }
    }

    #[test]
    fn panics_and_malformed_calls_keep_the_user_out() {
        // PamHandle is zero-sized: any aligned non-null pointer is a valid `&mut` to it, and
        // these bodies make no libpam call.
        let handle = NonNull::<PamHandle>::dangling().as_ptr();
        let ok = |_: &mut PamHandle, _: &[&CStr]| PamCode::Success;
        // SAFETY: the handle is valid for a zero-sized type; argc is 0.
        let panicked = unsafe { guarded(handle, 0, null(), |_, _| panic!("boom")) };
        assert_eq!(panicked, SERVICE_ERR);
        // SAFETY: a null handle is allowed by the contract; argc is 0.
        assert_eq!(unsafe { guarded(null_mut(), 0, null(), ok) }, SERVICE_ERR);
        // SAFETY: argc is negative, so argv is never read.
        assert_eq!(unsafe { guarded(handle, -1, null(), ok) }, SERVICE_ERR);
        // SAFETY: argc 1 with a null argv is refused before argv is read.
        assert_eq!(unsafe { guarded(handle, 1, null(), ok) }, SERVICE_ERR);
        let one_null: [*const c_char; 1] = [null()];
        // SAFETY: argv holds argc (1) entries.
        let with_null = unsafe { guarded(handle, 1, one_null.as_ptr(), ok) };
        assert_eq!(with_null, SERVICE_ERR);
        let argv = [c"echo".as_ptr(), c"debug".as_ptr()];
        // SAFETY: argv holds argc (2) NUL-terminated strings that outlive the call.
        let passed = unsafe {
            guarded(handle, 2, argv.as_ptr(), |_, args| {
                assert_eq!(args, [c"echo", c"debug"]);
                PamCode::Ignore
            })
        };
        assert_eq!(passed, 25);
    }
}
