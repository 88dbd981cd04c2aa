//! pam_twofold.so: asks twofoldd for a second factor (ARCHITECTURE.md §4).
//!
//! `ffi` holds the exported hooks and the only `unsafe` code; the login itself is plain Rust
//! over the [`auth::Pam`] trait so that it is tested without libpam.
#![deny(unsafe_code)]

pub mod args;
pub mod auth;
mod combined;
mod enroll;
mod ffi;
pub mod text;
