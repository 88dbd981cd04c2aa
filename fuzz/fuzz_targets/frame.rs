//! The frame decoder: any byte stream (length prefix, payload, short reads, EOF) gives a frame
//! or an error, never a panic or an allocation beyond the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;
use twofold_shared::wire::{self, Request, MAX_FRAME};

/// Hands out the input a few bytes at a time, as a slow socket would.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.len().min(buf.len()).min(self.step);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut input = Trickle { data, step };
    if let Ok(payload) = wire::read_frame(&mut input) {
        assert!(payload.len() <= MAX_FRAME);
        let _ = wire::decode::<Request>(&payload);
    }
});
