//! What a run measured: per-client tallies, their sum, and the report as text or JSON.

use std::fmt::Write as _;
use std::time::Instant;

use mboard_client::json_string;

use crate::follow::FollowReport;
use crate::run::Window;
use crate::scenario::{Load, Scenario};

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    /// The scenario's name.
    pub(crate) scenario: &'static str,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Measured seconds.
    pub(crate) seconds: f64,
    /// Operations completed in the measured time.
    pub(crate) operations: u64,
    /// Median latency in microseconds.
    pub(crate) p50_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Resends after a timeout.
    pub(crate) timeouts: u64,
    /// Operations that failed (error reply, or no reply within 5 s).
    pub(crate) errors: u64,
    /// Megabytes per second moved, for transfer scenarios.
    pub(crate) mb_per_s: Option<f64>,
    /// What the first failed operation reported, so a run that fails says why.
    pub(crate) first_error: Option<String>,
    /// The followers' side, for the follower scenario.
    pub(crate) follow: Option<FollowReport>,
}

impl Report {
    /// The report of `tally`, summed over every client, for `seconds` of measuring.
    pub(crate) fn new(load: &Load, scenario: &Scenario, seconds: f64, mut tally: Tally) -> Self {
        tally.latencies_ns.sort_unstable();
        let operations = tally.latencies_ns.len() as u64;
        Report {
            scenario: scenario.name(),
            clients: load.clients,
            seconds,
            operations,
            p50_us: percentile(&tally.latencies_ns, 0.50),
            p99_us: percentile(&tally.latencies_ns, 0.99),
            p999_us: percentile(&tally.latencies_ns, 0.999),
            timeouts: tally.timeouts,
            errors: tally.errors,
            mb_per_s: scenario
                .payload()
                .map(|size| operations as f64 * size as f64 / seconds / 1e6),
            first_error: tally.first_error,
            follow: None,
        }
    }

    /// This report with the followers' side added.
    pub(crate) fn with_follow(self, follow: FollowReport) -> Self {
        Report {
            follow: Some(follow),
            ..self
        }
    }

    /// Operations per second.
    pub(crate) fn rate(&self) -> f64 {
        self.operations as f64 / self.seconds
    }

    /// One JSON object.
    pub(crate) fn json(&self) -> String {
        let mut s = format!(
            "{{\"scenario\":{},\"clients\":{},\"seconds\":{:.3},\"operations\":{},\"rate\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"timeouts\":{},\"errors\":{}",
            json_string(self.scenario),
            self.clients,
            self.seconds,
            self.operations,
            self.rate(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.timeouts,
            self.errors
        );
        if let Some(mb) = self.mb_per_s {
            let _ = write!(s, ",\"mb_per_s\":{mb:.1}");
        }
        if let Some(e) = &self.first_error {
            let _ = write!(s, ",\"first_error\":{}", json_string(e));
        }
        if let Some(follow) = &self.follow {
            follow.json_fields(&mut s);
        }
        s.push('}');
        s
    }

    /// One line for people.
    pub(crate) fn line(&self) -> String {
        let mut s = format!(
            "{:<16} clients={:<3} {:>10.0} ops/s  p50 {:>8.1} us  p99 {:>8.1} us  p99.9 {:>8.1} us  timeouts {}  errors {}",
            self.scenario,
            self.clients,
            self.rate(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.timeouts,
            self.errors
        );
        if let Some(mb) = self.mb_per_s {
            let _ = write!(s, "  {mb:.1} MB/s");
        }
        if let Some(e) = &self.first_error {
            let _ = write!(s, "  (first error: {e})");
        }
        if let Some(follow) = &self.follow {
            let _ = write!(s, "\n{}", follow.line());
        }
        s
    }
}

/// A run and its echo ceiling side by side, as one JSON object.
pub(crate) fn compare_json(run: &Report, echo: &Report) -> String {
    format!(
        "{{\"run\":{},\"echo\":{},\"ratio\":{:.3},\"p99_ratio\":{:.3}}}",
        run.json(),
        echo.json(),
        run.rate() / echo.rate(),
        run.p99_us / echo.p99_us
    )
}

/// A run and its echo ceiling side by side, as three lines for people.
pub(crate) fn compare_lines(run: &Report, echo: &Report) -> String {
    format!(
        "{}\n{}\nratio {:.1}% of echo throughput; p99 {:.2}x echo's",
        run.line(),
        echo.line(),
        100.0 * run.rate() / echo.rate(),
        run.p99_us / echo.p99_us
    )
}

/// One client's counts.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    latencies_ns: Vec<u64>,
    /// Resends after a timeout, counted whether or not the window is open.
    pub(crate) timeouts: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    /// Counts one operation begun at `started`, if the measured window is open.
    pub(crate) fn record(&mut self, window: &Window, started: Instant, ok: bool) {
        if window.is_measuring() {
            if ok {
                self.latencies_ns.push(started.elapsed().as_nanos() as u64);
            } else {
                self.errors += 1;
            }
        }
    }

    /// Counts one operation and keeps the first failure's description.
    pub(crate) fn record_result<T, E: std::fmt::Display>(
        &mut self,
        window: &Window,
        started: Instant,
        result: Result<T, E>,
    ) {
        if let Err(e) = &result {
            self.fail(|| e.to_string());
        }
        self.record(window, started, result.is_ok());
    }

    /// Operations that failed.
    pub(crate) fn errors(&self) -> u64 {
        self.errors
    }

    /// What the first failure reported.
    pub(crate) fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// Keeps `why` as the failure to report, unless an earlier one is kept already.
    pub(crate) fn fail(&mut self, why: impl FnOnce() -> String) {
        self.first_error.get_or_insert_with(why);
    }

    /// Adds another client's counts to these.
    pub(crate) fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        self.timeouts += other.timeouts;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The `p` quantile of `sorted` nanoseconds, in microseconds (nearest rank).
fn percentile(sorted: &[u64], p: f64) -> f64 {
    rank(sorted.len(), p).map_or(0.0, |i| sorted[i] as f64 / 1_000.0)
}

/// [`percentile`] of signed nanoseconds.
pub(crate) fn percentile_signed(sorted: &[i64], p: f64) -> f64 {
    rank(sorted.len(), p).map_or(0.0, |i| sorted[i] as f64 / 1_000.0)
}

/// The index of the `p` quantile in a sorted slice of `len` (nearest rank).
fn rank(len: usize, p: f64) -> Option<usize> {
    (len > 0).then(|| ((len as f64 * p).ceil() as usize).clamp(1, len) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(first_error: Option<&str>) -> Report {
        Report {
            scenario: "upload",
            clients: 4,
            seconds: 2.0,
            operations: 10,
            p50_us: 1.5,
            p99_us: 3.0,
            p999_us: 4.0,
            timeouts: 1,
            errors: 2,
            mb_per_s: Some(0.5),
            first_error: first_error.map(str::to_string),
            follow: None,
        }
    }

    #[test]
    fn json_keeps_its_fields_and_their_order() {
        assert_eq!(
            report(None).json(),
            r#"{"scenario":"upload","clients":4,"seconds":2.000,"operations":10,"rate":5.0,"p50_us":1.5,"p99_us":3.0,"p999_us":4.0,"timeouts":1,"errors":2,"mb_per_s":0.5}"#
        );
    }

    #[test]
    fn any_first_error_is_a_valid_json_string() {
        let why =
            "a \"quote\", a \\ backslash,\na newline, a \u{7} bell, \u{1f} and caf\u{e9} \u{2603}";
        let json = report(Some(why)).json();
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["first_error"], why);
        assert_eq!(parsed["scenario"], "upload");
        assert_eq!(parsed["errors"], 2);
        let both: serde_json::Value =
            serde_json::from_str(&compare_json(&report(Some(why)), &report(None)))
                .expect("valid JSON");
        assert_eq!(both["run"]["first_error"], why);
        assert_eq!(both["ratio"], 1.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ns: Vec<u64> = (1..=1000).map(|i| i * 1_000).collect();
        assert_eq!(percentile(&ns, 0.50), 500.0);
        assert_eq!(percentile(&ns, 0.99), 990.0);
        assert_eq!(percentile(&ns, 0.999), 999.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7_000], 0.0), 7.0);
    }
}
