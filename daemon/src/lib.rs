//! twofoldd and the twofold CLI, as a library: the binaries are thin.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
#[cfg(test)]
mod conformance;
pub mod doctor;
pub mod email;
pub mod engine;
pub mod files;
pub mod import;
pub mod limits;
pub mod migrate;

pub mod policy;
pub mod seal;
pub mod server;
pub mod startup;
pub mod store;
pub mod throttle;
#[cfg(test)]
mod transcript;
pub mod users;
