//! twofoldd: the only process that reads or writes twofold's secrets.
#![forbid(unsafe_code)]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use twofold_daemon::startup::{self, Overrides};

/// Serve twofold's second-factor checks on a Unix socket (runs in the foreground).
#[derive(Parser, Debug)]
#[command(name = "twofoldd", version)]
struct Args {
    /// Configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket path (overrides the configuration).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Database path (overrides the configuration).
    #[arg(long, value_name = "PATH")]
    database: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    startup::run(Overrides {
        config: args.config,
        socket: args.socket,
        database: args.database,
    })
}
