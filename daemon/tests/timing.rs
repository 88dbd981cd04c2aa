//! Response time tells nothing (issue 7): a wrong code for an enrolled user, any code for a
//! name with no account, and any code for an account without enrollment under
//! `unenrolled = "deny"` take the same time to refuse. Measured against a real twofoldd over its
//! socket, the three kinds interleaved so that the machine's noise falls on all of them alike;
//! the statistic (medians, and the Kolmogorov–Smirnov distance between the distributions) is
//! printed. The bound is generous because these machines are shared: it catches a difference
//! of the size a name-service miss or a database write makes (0.1–0.4 ms), not a microsecond.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};
use twofold_shared::client::Client;
use twofold_shared::wire::{RequestBody, ResponseBody, SecretText};
use twofold_tests::*;

const ROUNDS: usize = 150;

fn verify(client: &Client, user: &str, code: &str) -> (Duration, ResponseBody) {
    let t = Instant::now();
    let reply = client
        .call(RequestBody::Verify {
            user: user.into(),
            code: SecretText::new(code.to_string()),
            pam: Default::default(),
            grace_secs: 0,
        })
        .expect("twofoldd answers");
    (t.elapsed(), reply)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The largest distance between the two empirical distribution functions.
fn ks_distance(a: &[f64], b: &[f64]) -> f64 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(|x, y| x.total_cmp(y));
    b.sort_by(|x, y| x.total_cmp(y));
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            i += 1;
        } else {
            j += 1;
        }
        let fa = i as f64 / a.len() as f64;
        let fb = j as f64 / b.len() as f64;
        d = d.max((fa - fb).abs());
    }
    d
}

#[test]
fn refusals_take_the_same_time_whoever_they_are_for() {
    let d = Daemon::start_with(
        "unenrolled = \"deny\"\n[throttle]\nfree_failures = 1000000\nlockout_after = 0",
    );
    d.enroll_now("tilda");
    let client = Client::new(&d.socket, Duration::from_secs(10), vec![0]);
    // "root" has an account and no enrollment; the third name has neither.
    let kinds = [
        ("enrolled, wrong code", "tilda"),
        ("account without enrollment (deny)", "root"),
        ("no such account", "nobody-here-twofold"),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    // Warm up every path once.
    for (_, user) in kinds {
        verify(&client, user, "000000");
    }
    for round in 0..ROUNDS {
        for k in 0..kinds.len() {
            // Rotate the order each round: no kind always goes first.
            let k = (k + round) % kinds.len();
            let (label, user) = kinds[k];
            let (took, reply) = verify(&client, user, "000000");
            match (k, &reply) {
                (0 | 2, ResponseBody::Rejected) => {}
                (1, ResponseBody::NotEnrolled { required: true, .. }) => {}
                _ => panic!("{label}: unexpected answer {reply:?}"),
            }
            times[k].push(took.as_secs_f64() * 1000.0);
        }
    }
    let medians: Vec<f64> = times.iter().map(|t| median(&mut t.clone())).collect();
    for (i, (label, _)) in kinds.iter().enumerate() {
        eprintln!("timing: {label:<36} median {:.3} ms", medians[i]);
    }
    for i in 0..kinds.len() {
        for j in i + 1..kinds.len() {
            let ks = ks_distance(&times[i], &times[j]);
            let diff = (medians[i] - medians[j]).abs();
            eprintln!(
                "timing: {} vs {}: median difference {diff:.3} ms, KS distance {ks:.3} ({ROUNDS} each)",
                kinds[i].0, kinds[j].0
            );
            let scale = medians[i].max(medians[j]);
            assert!(
                diff < 0.15 * scale,
                "{} and {} can be told apart: medians {:.3} and {:.3} ms",
                kinds[i].0,
                kinds[j].0,
                medians[i],
                medians[j]
            );
            assert!(
                ks < 0.5,
                "{} and {} can be told apart: KS distance {ks:.3}",
                kinds[i].0,
                kinds[j].0
            );
        }
    }
}
