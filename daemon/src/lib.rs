//! twofoldd and the twofold CLI, as a library: the binaries are thin (`startup::run`,
//! `cli::main`). Public is only what they, the benchmark (`store`) and the fuzz targets
//! (`backup`, `email`) use; the rest is the crate's own, so the compiler sees dead code.
#![forbid(unsafe_code)]

pub(crate) mod audit;
pub mod backup;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod config;
#[cfg(test)]
mod conformance;
pub(crate) mod doctor;
pub mod email;
pub(crate) mod engine;
pub(crate) mod files;
pub(crate) mod import;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod migrate;
pub mod offline;
pub(crate) mod policy;
pub(crate) mod qr;
pub(crate) mod seal;
pub(crate) mod seeds;
pub(crate) mod server;
pub mod startup;
pub mod store;
pub(crate) mod throttle;
#[cfg(test)]
mod transcript;
pub(crate) mod users;
