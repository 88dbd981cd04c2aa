//! The floor under one login (issue 19): what no implementation of twofold's design can avoid
//! on this machine, measured in the same run as the logins. A durable acceptance costs one
//! synchronous write; a login asks twofoldd twice (preflight, verify); libpam loads and
//! unloads the module. Each is reported as the p50 of `n` tries.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use twofold_shared::client::Client;
use twofold_shared::wire::{RequestBody, ResponseBody};

fn p50(mut times: Vec<f64>) -> f64 {
    times.sort_by(|a, b| a.total_cmp(b));
    times.get(times.len() / 2).copied().unwrap_or(0.0)
}

/// One 4 KiB write and `fdatasync` on the file system of `dir`: the least a commit costs
/// there (the pages rewritten in place, as a write-ahead log reused after a checkpoint is:
/// no change of size to record).
pub fn fsync(dir: &Path, n: usize) -> Result<serde_json::Value, String> {
    let path = dir.join("floor-fsync.tmp");
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::create(&path).map_err(fail)?;
    const PAGES: u64 = 256;
    file.write_all(&vec![0u8; 4096 * PAGES as usize])
        .map_err(fail)?;
    file.sync_all().map_err(fail)?;
    let page = [0x5au8; 4096];
    let mut times = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        file.write_all_at(&page, (i % PAGES) * 4096).map_err(fail)?;
        file.sync_data().map_err(fail)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    std::fs::remove_file(&path).map_err(fail)?;
    Ok(serde_json::json!({ "tries": n, "p50_ms": p50(times) }))
}

/// A raw round trip to twofoldd: connect, one small request (ping), the reply.
pub fn round_trip(socket: &Path, n: usize) -> Result<serde_json::Value, String> {
    let client = Client::new(socket, Duration::from_secs(5), vec![0]);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        match client.call(RequestBody::Ping {}) {
            Ok(ResponseBody::Pong { .. }) => {}
            other => return Err(format!("ping: {other:?}")),
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(serde_json::json!({ "tries": n, "p50_ms": p50(times) }))
}
