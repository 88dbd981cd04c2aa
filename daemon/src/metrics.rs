//! What twofoldd has decided since it started, for Prometheus: counters kept in memory,
//! counted where each request is answered, and the state of the store read when the text is
//! made. `twofold metrics` prints it; with `metrics_textfile`, twofoldd writes it every 15 s
//! for node_exporter's textfile collector. No user name, code or secret is ever a label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use twofold_shared::wire::{ErrorKind, Method, ResponseBody};

/// How often the textfile is rewritten.
pub const TEXTFILE_INTERVAL: Duration = Duration::from_secs(15);

/// Upper bounds of the request-duration histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    below: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The store's state when the text is made.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub enrolled: u64,
    pub pending: u64,
    pub locked: u64,
    pub throttled: u64,
    pub invitations: u64,
    pub bypass_codes: u64,
    pub database_bytes: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    started: u64,
    /// (outcome, method) → logins.
    logins: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// how → enrollments completed.
    enrollments: Mutex<BTreeMap<&'static str, u64>>,
    lockouts: AtomicU64,
    mails_sent: AtomicU64,
    mails_failed: AtomicU64,
    store_errors: AtomicU64,
    /// operation → durations.
    requests: Mutex<BTreeMap<&'static str, Histogram>>,
}

/// A poisoned lock only means another thread panicked while counting: the counts stand.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Totp => "totp",
        Method::BackupCode => "backup_code",
        Method::Remembered => "remembered",
        Method::Email => "email",
        Method::Bypass => "bypass",
    }
}

/// What a reply to a login step decided, if it decided the login: `(outcome, method)`.
fn login_outcome(reply: &ResponseBody) -> Option<(&'static str, &'static str)> {
    Some(match reply {
        ResponseBody::Accepted { method, .. } => ("accepted", method_name(*method)),
        ResponseBody::EnrolledAtLogin { .. } => ("accepted", "enrolled_at_login"),
        ResponseBody::Rejected => ("rejected", "none"),
        ResponseBody::Throttled { .. } => ("throttled", "none"),
        ResponseBody::Locked => ("locked", "none"),
        ResponseBody::NotEnrolled { required: true, .. } => ("refused_not_enrolled", "none"),
        ResponseBody::NotEnrolled {
            required: false, ..
        } => ("ignored_not_enrolled", "none"),
        ResponseBody::Disabled => ("disabled", "none"),
        ResponseBody::Error { .. } => ("error", "none"),
        // A prompt, a mailed code, an enrollment shown: the login goes on.
        _ => return None,
    })
}

impl Metrics {
    pub fn new(started: u64) -> Metrics {
        // The usual series exist from the start at 0, so that rate() sees their first rise.
        let logins = [
            ("accepted", "totp"),
            ("accepted", "backup_code"),
            ("rejected", "none"),
            ("throttled", "none"),
            ("locked", "none"),
        ]
        .into_iter()
        .map(|k| (k, 0))
        .collect();
        Metrics {
            started,
            logins: Mutex::new(logins),
            ..Metrics::default()
        }
    }

    /// One answered request: `op` as the wire names it, its reply, how long it took.
    pub fn answered(&self, op: &'static str, login: bool, reply: &ResponseBody, took: Duration) {
        if login {
            if let Some(key) = login_outcome(reply) {
                *lock(&self.logins).entry(key).or_default() += 1;
            }
        }
        let enrolled = match (op, reply) {
            ("confirm", ResponseBody::BackupCodes { .. }) => Some("confirmed"),
            ("confirm_login", ResponseBody::EnrolledAtLogin { .. }) => Some("at_login"),
            ("import", ResponseBody::Done { .. }) => Some("imported"),
            _ => None,
        };
        if let Some(how) = enrolled {
            *lock(&self.enrollments).entry(how).or_default() += 1;
        }
        if let ResponseBody::Error {
            kind: ErrorKind::Storage,
            ..
        } = reply
        {
            self.store_errors.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        let mut requests = lock(&self.requests);
        let h = requests.entry(op).or_default();
        for (b, bound) in h.below.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *b += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// A failure that reached the lockout limit.
    pub fn lockout(&self) {
        self.lockouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A mail handed to the relay (`true`) or refused by it.
    pub fn mail(&self, sent: bool) {
        let c = if sent {
            &self.mails_sent
        } else {
            &self.mails_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4). `gauges`: `None` when the store could
    /// not be read (then `twofold_store_up` is 0).
    /// `offline`: outage mode's state, when it is on.
    pub fn render(
        &self,
        version: &str,
        gauges: Option<&Gauges>,
        offline: Option<&crate::offline::Status>,
        now: u64,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v.to_string())];
        family(
            "twofold_build_info",
            "gauge",
            "twofoldd's version (always 1).",
            &[(format!("{{version=\"{version}\"}}"), "1".into())],
        );
        family(
            "twofold_start_time_seconds",
            "gauge",
            "When twofoldd started (Unix time).",
            &one(self.started),
        );
        family(
            "twofold_metrics_written_timestamp_seconds",
            "gauge",
            "When this text was made (Unix time): a textfile that stops changing means twofoldd is down.",
            &one(now),
        );
        let logins: Vec<_> = lock(&self.logins)
            .iter()
            .map(|((outcome, method), n)| {
                (
                    format!("{{outcome=\"{outcome}\",method=\"{method}\"}}"),
                    n.to_string(),
                )
            })
            .collect();
        family(
            "twofold_logins_total",
            "counter",
            "Login decisions by outcome and method (method \"none\" for refusals).",
            &logins,
        );
        let enrollments: Vec<_> = lock(&self.enrollments)
            .iter()
            .map(|(how, n)| (format!("{{how=\"{how}\"}}"), n.to_string()))
            .collect();
        family(
            "twofold_enrollments_total",
            "counter",
            "Enrollments completed: confirmed with a first code, at the login prompt, imported.",
            &enrollments,
        );
        let counter = |c: &AtomicU64| one(c.load(Ordering::Relaxed));
        family(
            "twofold_lockouts_total",
            "counter",
            "Accounts locked by consecutive failures.",
            &counter(&self.lockouts),
        );
        family(
            "twofold_mails_total",
            "counter",
            "Mails with a code: handed to the relay, or refused by it.",
            &[
                (
                    "{result=\"sent\"}".into(),
                    self.mails_sent.load(Ordering::Relaxed).to_string(),
                ),
                (
                    "{result=\"failed\"}".into(),
                    self.mails_failed.load(Ordering::Relaxed).to_string(),
                ),
            ],
        );
        family(
            "twofold_store_errors_total",
            "counter",
            "Requests refused because the store failed (disk full, read-only, database down).",
            &counter(&self.store_errors),
        );
        family(
            "twofold_store_up",
            "gauge",
            "Whether the store answered when this text was made.",
            &one(u64::from(gauges.is_some())),
        );
        if let Some(g) = gauges {
            let gauge_rows: [(&str, &str, u64); 7] = [
                (
                    "twofold_users_enrolled",
                    "Accounts with an active enrollment.",
                    g.enrolled,
                ),
                (
                    "twofold_users_pending",
                    "Enrollments waiting for their first code.",
                    g.pending,
                ),
                (
                    "twofold_users_locked",
                    "Accounts locked now (twofold unlock clears).",
                    g.locked,
                ),
                (
                    "twofold_users_throttled",
                    "Accounts throttled now (a delay before the next try).",
                    g.throttled,
                ),
                (
                    "twofold_invitations_open",
                    "Invitations to enroll at the login prompt, open now.",
                    g.invitations,
                ),
                (
                    "twofold_bypass_codes_active",
                    "Helpdesk codes that work now.",
                    g.bypass_codes,
                ),
                (
                    "twofold_database_size_bytes",
                    "The database's size.",
                    g.database_bytes,
                ),
            ];
            for (name, help, v) in gauge_rows {
                family(name, "gauge", help, &one(v));
            }
        }
        if let Some(o) = offline {
            let rows: [(&str, &str, &str, Option<u64>); 5] = [
                (
                    "twofold_offline",
                    "gauge",
                    "1 while the database does not answer and this host decides logins from its copy.",
                    Some(u64::from(o.offline_since.is_some())),
                ),
                (
                    "twofold_offline_since_timestamp_seconds",
                    "gauge",
                    "Since when this host decides logins alone (Unix time; only while it does).",
                    o.offline_since,
                ),
                (
                    "twofold_offline_copy_refreshed_timestamp_seconds",
                    "gauge",
                    "When this host's copy of the fleet was last refreshed (Unix time).",
                    o.refreshed_at,
                ),
                (
                    "twofold_offline_copy_users",
                    "gauge",
                    "Enrollments in this host's copy of the fleet at its last refresh.",
                    Some(o.users),
                ),
                (
                    "twofold_offline_logins_total",
                    "counter",
                    "Logins this host decided offline since twofoldd started.",
                    Some(o.decided_offline),
                ),
            ];
            for (name, kind, help, v) in rows {
                if let Some(v) = v {
                    family(name, kind, help, &one(v));
                }
            }
            if let Some(ms) = o.refresh_ms {
                family(
                    "twofold_offline_copy_refresh_seconds",
                    "gauge",
                    "How long the last refresh of the copy took (reading the fleet, writing the copy).",
                    &[(String::new(), format!("{:.3}", ms as f64 / 1000.0))],
                );
            }
        }
        let mut rows = Vec::new();
        for (op, h) in lock(&self.requests).iter() {
            for (bound, n) in BUCKETS.iter().zip(h.below) {
                rows.push((
                    format!("_bucket{{op=\"{op}\",le=\"{bound}\"}}"),
                    n.to_string(),
                ));
            }
            rows.push((
                format!("_bucket{{op=\"{op}\",le=\"+Inf\"}}"),
                h.count.to_string(),
            ));
            rows.push((format!("_sum{{op=\"{op}\"}}"), format!("{:.6}", h.sum)));
            rows.push((format!("_count{{op=\"{op}\"}}"), h.count.to_string()));
        }
        family(
            "twofold_request_duration_seconds",
            "histogram",
            "Time twofoldd took to answer a request, by operation.",
            &rows,
        );
        out
    }
}

/// Writes `text` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file beside it, readable by all (node_exporter is not root), then renamed.
pub fn write_textfile(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("metrics_textfile has no file name"))?;
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        // The umask (0077) would leave it root's alone.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
