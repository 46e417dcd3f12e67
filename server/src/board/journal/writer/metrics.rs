//! What the writer thread reports through `--metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a write failed, as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Cause {
    /// No space left (or a quota, or a file size limit).
    Full,
    /// The filesystem is read-only.
    ReadOnly,
    /// The data directory is no longer ours.
    Lost,
    /// Any other I/O error.
    Io,
}

impl Cause {
    pub(super) fn name(self) -> &'static str {
        match self {
            Cause::Full => "full",
            Cause::ReadOnly => "read_only",
            Cause::Lost => "lost",
            Cause::Io => "io",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct CauseLabel {
    cause: &'static str,
}

#[derive(Debug, Clone)]
pub(super) struct WriterMetrics {
    /// Group commits: one write (and, under `--fsync always`, one fsync) each.
    pub(super) commits: Counter,
    /// Records appended.
    pub(super) records: Counter,
    /// Seconds each fsync took.
    pub(super) fsync_seconds: Histogram,
    /// Bytes in the segment files.
    pub(super) bytes: Gauge,
    /// Segment files.
    pub(super) segments: Gauge,
    /// Segment files deleted by retention.
    pub(super) deleted: Counter,
    /// Writes that failed, by cause.
    pub(super) failures: Family<CauseLabel, Counter>,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            commits: Counter::default(),
            records: Counter::default(),
            // 25 µs (page cache, fast NVMe) to ~0.8 s (a struggling disk), doubling.
            fsync_seconds: Histogram::new(exponential_buckets(25e-6, 2.0, 16)),
            bytes: Gauge::default(),
            segments: Gauge::default(),
            deleted: Counter::default(),
            failures: Family::default(),
        }
    }
}

fn as_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl WriterMetrics {
    pub(super) fn set_size(&self, bytes: u64, segments: usize) {
        self.bytes.set(as_gauge(bytes));
        self.segments.set(as_gauge(segments as u64));
    }

    pub(super) fn failed(&self, cause: Cause) {
        // Every cause is listed from the start, so a rate can be taken of each.
        self.failures
            .get_or_create(&CauseLabel {
                cause: cause.name(),
            })
            .inc();
    }

    /// Adds the writer's metrics to `registry`.
    pub(super) fn register(&self, registry: &mut Registry) {
        for cause in [Cause::Full, Cause::ReadOnly, Cause::Lost, Cause::Io] {
            let _ = self.failures.get_or_create(&CauseLabel {
                cause: cause.name(),
            });
        }
        registry.register(
            "mboard_journal_commits",
            "Group commits written to the journal (each one write, and one fsync under --fsync always)",
            self.commits.clone(),
        );
        registry.register(
            "mboard_journal_records",
            "Records appended to the journal since the server started",
            self.records.clone(),
        );
        registry.register(
            "mboard_journal_fsync_seconds",
            "Time each journal fsync took (its count is the number of fsyncs)",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "mboard_journal_bytes",
            "Size of the journal's segment files",
            self.bytes.clone(),
        );
        registry.register(
            "mboard_journal_segments",
            "Segment files in the journal",
            self.segments.clone(),
        );
        registry.register(
            "mboard_journal_segments_deleted",
            "Segment files deleted by retention since the server started",
            self.deleted.clone(),
        );
        registry.register(
            "mboard_journal_write_failures",
            "Journal writes that failed, by cause (full, read_only, lost, io); each refused the publishes of its group commit",
            self.failures.clone(),
        );
    }
}
