//! The PAM module's hand codec (twofold_shared::login) against serde's, for any input.
//!
//! An answer: whatever the hand decoder reads, serde reads too, and alike; neither panics.
//! A request: built from the input's text, the hand encoder writes serde's bytes exactly, and
//! the daemon's decoder reads them back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twofold_shared::login::{self, DecodeError};
use twofold_shared::wire::{self, PamItems, Request, RequestBody, Response, SecretText};

fn same(a: &wire::ResponseBody, b: &wire::ResponseBody) -> bool {
    let json = |body: &wire::ResponseBody| {
        serde_json::to_value(Response {
            v: wire::PROTOCOL_VERSION,
            body: body.clone(),
        })
        .ok()
    };
    json(a) == json(b)
}

fn answer(data: &[u8]) {
    let theirs = wire::decode::<Response>(data);
    match login::decode_response(data) {
        Ok(ours) => {
            let theirs = theirs.expect("the hand decoder read what serde refuses");
            assert!(
                same(&ours, &theirs.body),
                "the codecs read different answers"
            );
        }
        Err(DecodeError::Version(v)) => assert_eq!(wire::peek_version(data), Some(v)),
        Err(DecodeError::Frame(_)) => {}
    }
}

fn request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}').map(str::to_string);
    let mut next = || parts.next();
    let flags = data.first().copied().unwrap_or(0);
    let user = next().unwrap_or_default();
    let code = SecretText::new(next().unwrap_or_default());
    let pam = PamItems {
        service: next(),
        rhost: next(),
        tty: next(),
        ruser: next(),
        session: (flags & 1 != 0).then(|| u32::from_le_bytes([flags, flags, 0, 7])),
    };
    let grace_secs = u64::from(flags) << (flags % 57);
    let body = match flags % 4 {
        0 => RequestBody::Preflight {
            user,
            pam,
            grace_secs,
            can_enroll: flags & 2 != 0,
            combined: flags & 4 != 0,
        },
        1 => RequestBody::Verify {
            user,
            code,
            pam,
            grace_secs,
        },
        2 => RequestBody::SendEmailCode { user, pam },
        _ => RequestBody::ConfirmLogin { user, code, pam },
    };
    let ours = login::encode_frame(&body).expect("a login's request");
    let theirs = wire::encode_frame(&body.clone().into_request(), usize::MAX).expect("serde");
    assert_eq!(*ours, *theirs, "the codecs wrote different requests");
    let back: Request = wire::decode(&ours[4..]).expect("the daemon reads it");
    assert_eq!(back.body.op_name(), body.op_name());
}

fuzz_target!(|data: &[u8]| {
    answer(data);
    request(data);
});
