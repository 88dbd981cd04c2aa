//! The otpauth:// parser (imports, and what a user pastes): any text parses or is refused with a
//! reason; what parses prints as a URI that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twofold_shared::uri::OtpAuthUri;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(uri) = OtpAuthUri::parse(text) {
        let printed = uri.to_uri();
        let again = OtpAuthUri::parse(&printed).expect("a printed URI parses");
        assert_eq!(again.to_uri(), printed);
    }
});
