//! The request parser: any payload decodes to a request or an error; a request that decodes
//! encodes and decodes again to the same operation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twofold_shared::wire::{self, Request};

fuzz_target!(|data: &[u8]| {
    let _ = wire::peek_version(data);
    if let Ok(request) = wire::decode::<Request>(data) {
        let op = request.body.op_name();
        let mut framed = Vec::new();
        wire::write_frame(&mut framed, &request).expect("a decoded request encodes");
        let again: Request = wire::decode(&framed[4..]).expect("an encoded request decodes");
        assert_eq!(again.body.op_name(), op);
    }
});
