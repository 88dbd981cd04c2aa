//! The in-process libpam loop: pam_start / pam_authenticate / pam_end with a conversation that
//! answers the next prepared code. The only unsafe code of the bench lives here.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr;

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

#[repr(C)]
struct PamConv {
    conv: extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int,
    appdata_ptr: *mut c_void,
}

#[link(name = "pam")]
extern "C" {
    fn pam_start(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        pamh: *mut *mut c_void,
    ) -> c_int;
    fn pam_authenticate(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_end(pamh: *mut c_void, status: c_int) -> c_int;
}

const PAM_SUCCESS: c_int = 0;
const PAM_CONV_ERR: c_int = 19;
const PAM_BUF_ERR: c_int = 5;
const PAM_PROMPT_ECHO_OFF: c_int = 1;
const PAM_PROMPT_ECHO_ON: c_int = 2;
const PAM_SILENT: c_int = 0x8000;

/// Answers every prompt with the code in `appdata_ptr` (a NUL-terminated string); messages get
/// an empty answer.
extern "C" fn answer(
    n: c_int,
    msgs: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    data: *mut c_void,
) -> c_int {
    let Ok(count) = usize::try_from(n) else {
        return PAM_CONV_ERR;
    };
    if count == 0 || msgs.is_null() || resp.is_null() || data.is_null() {
        return PAM_CONV_ERR;
    }
    // SAFETY: libpam frees the array and each `resp` with free(3): allocate with calloc.
    let replies =
        unsafe { libc_calloc(count, std::mem::size_of::<PamResponse>()) } as *mut PamResponse;
    if replies.is_null() {
        return PAM_BUF_ERR;
    }
    for i in 0..count {
        // SAFETY: Linux-PAM passes `msgs` as a pointer to an array of `count` message pointers.
        let msg = unsafe { *msgs.add(i) };
        let style = if msg.is_null() {
            0
        } else {
            // SAFETY: a non-null message pointer is valid for the call.
            unsafe { (*msg).msg_style }
        };
        if style == PAM_PROMPT_ECHO_OFF || style == PAM_PROMPT_ECHO_ON {
            // SAFETY: `data` is the NUL-terminated code the caller keeps alive for the call.
            let copy = unsafe { libc_strdup(data as *const c_char) };
            // SAFETY: `replies` has `count` zeroed entries.
            unsafe { (*replies.add(i)).resp = copy };
        }
    }
    // SAFETY: `resp` is libpam's out-pointer.
    unsafe { *resp = replies };
    PAM_SUCCESS
}

extern "C" {
    #[link_name = "calloc"]
    fn libc_calloc(n: usize, size: usize) -> *mut c_void;
    #[link_name = "strdup"]
    fn libc_strdup(s: *const c_char) -> *mut c_char;
}

/// One whole login: start, authenticate with `code` answering every prompt, end. Returns the
/// result of pam_authenticate.
pub fn login(service: &str, user: &str, code: &str) -> Result<c_int, String> {
    let service = CString::new(service).map_err(|_| "service holds NUL")?;
    let user = CString::new(user).map_err(|_| "user holds NUL")?;
    let code = CString::new(code).map_err(|_| "code holds NUL")?;
    let conv = PamConv {
        conv: answer,
        appdata_ptr: code.as_ptr() as *mut c_void,
    };
    let mut handle: *mut c_void = ptr::null_mut();
    // SAFETY: all strings are NUL-terminated and outlive the handle; `conv` outlives it too.
    let started = unsafe { pam_start(service.as_ptr(), user.as_ptr(), &conv, &mut handle) };
    if started != PAM_SUCCESS || handle.is_null() {
        return Err(format!("pam_start failed ({started})"));
    }
    // SAFETY: `handle` came from pam_start and is ended exactly once below.
    let result = unsafe { pam_authenticate(handle, PAM_SILENT) };
    // SAFETY: as above.
    unsafe { pam_end(handle, result) };
    Ok(result)
}
