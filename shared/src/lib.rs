//! twofold-shared: the pieces both sides of the socket need.
//!
//! - [`otp`]: HOTP/TOTP (RFC 4226, RFC 6238) for SHA-1/256/512 and 6–8 digits.
//! - [`secret`]: the shared-secret type (zeroed on drop, never printed) and base32.
//! - [`uri`]: otpauth:// URIs (Google's Key Uri Format), built and parsed.
//! - [`wire`]: request/response types and the length-prefixed JSON framing.
//! - [`login`]: a login's requests and answers coded by hand ([`json`]), for the PAM module.
//! - [`display`]: what the CLI and the login prompt show a user who enrolls.
//! - [`client`]: the blocking client used by the PAM module and the CLI.
//!
//! This crate is linked into `pam_twofold.so`: it must never panic on input, and it keeps its
//! dependencies few.
#![forbid(unsafe_code)]

pub mod client;
pub mod display;
pub mod json;
pub mod login;
pub mod otp;
pub mod secret;
pub mod uri;
pub mod wire;

/// Where twofoldd listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/twofold/twofold.sock";
