//! The brute-force throttle (ARCHITECTURE.md §3), as pure functions of the stored state and `now`.

use crate::store::ThrottleRecord;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Consecutive failures that cost nothing.
    pub free_failures: u32,
    /// Wait after the last free failure, in seconds; doubled by each further failure.
    pub base_delay: u64,
    /// Longest wait, in seconds.
    pub max_delay: u64,
    /// Consecutive failures after which the user is locked until `twofold unlock` (0: never).
    pub lockout_after: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 5,
            base_delay: 30,
            max_delay: 900,
            lockout_after: 100,
        }
    }
}

/// Whether an attempt may be evaluated now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Refused unevaluated until this Unix time.
    Wait {
        until: u64,
    },
    Locked,
}

/// The wait imposed after `failures` consecutive failures (0 while they are free).
pub fn delay_after(cfg: &ThrottleConfig, failures: u32) -> u64 {
    if failures < cfg.free_failures || cfg.free_failures == u32::MAX {
        return 0;
    }
    let doublings = (failures - cfg.free_failures).min(63);
    cfg.base_delay
        .saturating_mul(1u64 << doublings)
        .min(cfg.max_delay)
}

pub fn gate(cfg: &ThrottleConfig, state: ThrottleRecord, now: u64) -> Gate {
    if cfg.lockout_after > 0 && state.failures >= cfg.lockout_after {
        return Gate::Locked;
    }
    let delay = delay_after(cfg, state.failures);
    if delay == 0 {
        return Gate::Open;
    }
    let until = state.last_failure.saturating_add(delay);
    // A clock that went backwards keeps the wait rather than ending it early.
    if now < until {
        Gate::Wait { until }
    } else {
        Gate::Open
    }
}

/// State after one more failure at `now`.
pub fn record_failure(state: ThrottleRecord, now: u64) -> ThrottleRecord {
    ThrottleRecord {
        failures: state.failures.saturating_add(1),
        last_failure: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: ThrottleConfig = ThrottleConfig {
        free_failures: 5,
        base_delay: 30,
        max_delay: 900,
        lockout_after: 100,
    };

    /// Drives a sequence of attempts at given times, all wrong; returns what each one met.
    fn attempt_all(times: &[u64]) -> (Vec<Gate>, ThrottleRecord) {
        let mut state = ThrottleRecord::default();
        let mut seen = Vec::new();
        for &t in times {
            let g = gate(&CFG, state, t);
            if g == Gate::Open {
                state = record_failure(state, t);
            }
            seen.push(g);
        }
        (seen, state)
    }

    #[test]
    fn five_free_then_the_sixth_waits_thirty_seconds() {
        let (seen, state) = attempt_all(&[100, 100, 100, 100, 100, 100]);
        assert_eq!(&seen[..5], &[Gate::Open; 5]);
        assert_eq!(seen[5], Gate::Wait { until: 130 });
        // The refused attempt was not counted and did not extend the wait.
        assert_eq!(
            state,
            ThrottleRecord {
                failures: 5,
                last_failure: 100
            }
        );
        assert_eq!(gate(&CFG, state, 129), Gate::Wait { until: 130 });
        assert_eq!(gate(&CFG, state, 130), Gate::Open);
    }

    #[test]
    fn waits_double_up_to_fifteen_minutes() {
        let expected = [30, 60, 120, 240, 480, 900, 900, 900];
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(
                delay_after(&CFG, 5 + i as u32),
                *want,
                "after {} failures",
                5 + i
            );
        }
        assert_eq!(delay_after(&CFG, 4), 0);
        assert_eq!(delay_after(&CFG, 99), 900);
        // No overflow however many failures.
        assert_eq!(delay_after(&CFG, u32::MAX - 1), 900);
    }

    #[test]
    fn schedule_with_injected_clock() {
        // An attacker who waits out every delay: attempt times and what each meets.
        let mut state = ThrottleRecord::default();
        let mut now = 1_000;
        for _ in 0..5 {
            assert_eq!(gate(&CFG, state, now), Gate::Open);
            state = record_failure(state, now);
        }
        for wait in [30, 60, 120, 240, 480, 900] {
            assert_eq!(
                gate(&CFG, state, now + wait - 1),
                Gate::Wait { until: now + wait }
            );
            now += wait;
            assert_eq!(gate(&CFG, state, now), Gate::Open);
            state = record_failure(state, now);
        }
        assert_eq!(state.failures, 11);
    }

    #[test]
    fn locked_at_the_limit_regardless_of_time() {
        let state = ThrottleRecord {
            failures: 100,
            last_failure: 0,
        };
        assert_eq!(gate(&CFG, state, u64::MAX), Gate::Locked);
        let state = ThrottleRecord {
            failures: 99,
            last_failure: 0,
        };
        assert_eq!(gate(&CFG, state, 10_000), Gate::Open);
        let never = ThrottleConfig {
            lockout_after: 0,
            ..CFG
        };
        assert_eq!(
            gate(
                &never,
                ThrottleRecord {
                    failures: 1000,
                    last_failure: 0
                },
                10_000
            ),
            Gate::Open
        );
    }

    #[test]
    fn clock_rollback_does_not_shorten_a_wait() {
        let state = ThrottleRecord {
            failures: 6,
            last_failure: 5_000,
        };
        assert_eq!(gate(&CFG, state, 10), Gate::Wait { until: 5_060 });
    }

    #[test]
    fn free_failures_are_free_even_after_a_clock_rollback() {
        let state = ThrottleRecord {
            failures: 3,
            last_failure: 5_000,
        };
        assert_eq!(gate(&CFG, state, 10), Gate::Open);
    }

    #[test]
    fn zero_delays_only_count_toward_lockout() {
        let cfg = ThrottleConfig {
            free_failures: 0,
            base_delay: 0,
            max_delay: 0,
            lockout_after: 3,
        };
        let (seen, _) = {
            let mut state = ThrottleRecord::default();
            let mut seen = Vec::new();
            for _ in 0..4 {
                let g = gate(&cfg, state, 50);
                if g == Gate::Open {
                    state = record_failure(state, 50);
                }
                seen.push(g);
            }
            (seen, state)
        };
        assert_eq!(seen, vec![Gate::Open, Gate::Open, Gate::Open, Gate::Locked]);
    }
}
