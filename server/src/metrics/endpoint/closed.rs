//! What the endpoint counts of itself: connections open, and those it closed early.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use super::Shared;
use crate::metrics::collector::{gauge, labelled};
use crate::metrics::slots::{Cap, Phase};

/// Connections closed before their client closed them, by reason.
#[derive(Debug, Default)]
pub(super) struct Closed {
    /// New connections closed at once, by [`Cap`] (host, total).
    refused: [AtomicU64; 2],
    /// Connections closed for a newcomer, by [`Cap`], then [`Phase`] (idle, reading).
    evicted: [[AtomicU64; 2]; 2],
    /// No complete request head within [`HEADER_TIMEOUT`](super::HEADER_TIMEOUT).
    pub(super) header_timeout: AtomicU64,
    /// Open for [`CONNECTION_LIFETIME`](super::CONNECTION_LIFETIME).
    pub(super) lifetime: AtomicU64,
}

const CAPS: [(Cap, &str); 2] = [(Cap::Host, "per_ip"), (Cap::Total, "full")];
/// What an evicted connection was doing, by the second index of [`Closed::evicted`].
const EVICTED_STATES: [&str; 2] = ["idle", "reading"];

fn cap_index(cap: Cap) -> usize {
    usize::from(cap == Cap::Total)
}

impl Closed {
    pub(super) fn refused(&self, cap: Cap) {
        self.refused[cap_index(cap)].fetch_add(1, Relaxed);
    }

    pub(super) fn evicted(&self, cap: Cap, phase: Phase) {
        // `Responding` connections are never evicted; counted as reading if ever.
        let phase = usize::from(phase != Phase::Idle);
        self.evicted[cap_index(cap)][phase].fetch_add(1, Relaxed);
    }
}

/// The endpoint's own series: its connections, and those it closed early.
pub(super) struct EndpointCollector(pub(super) Arc<Shared>);

impl fmt::Debug for EndpointCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointCollector").finish_non_exhaustive()
    }
}

impl Collector for EndpointCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let closed = &self.0.closed;
        let open = self.0.table().len() as u64;
        gauge(
            &mut e,
            "mboard_metrics_connections",
            "Connections to the metrics endpoint open (this scrape's included).",
            open,
        )?;
        labelled(
            &mut e,
            "mboard_metrics_connections_refused",
            "New metrics connections closed at once, by the cap they met (per_ip, full).",
            "reason",
            &CAPS.map(|(cap, reason)| (reason, closed.refused[cap_index(cap)].load(Relaxed))),
        )?;
        {
            let mut family = e.encode_descriptor(
                "mboard_metrics_connections_evicted",
                "Metrics connections closed to make room for a new one, by the cap it met and what the closed one was doing.",
                None,
                MetricType::Counter,
            )?;
            for (cap, reason) in CAPS {
                for (i, state) in EVICTED_STATES.into_iter().enumerate() {
                    let n = closed.evicted[cap_index(cap)][i].load(Relaxed);
                    let labels = [("reason", reason), ("state", state)];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        labelled(
            &mut e,
            "mboard_metrics_connections_timed_out",
            "Metrics connections closed by a timeout: header (no request within 5 s, idle keep-alive included) or lifetime (open 30 s).",
            "reason",
            &[
                ("header", closed.header_timeout.load(Relaxed)),
                ("lifetime", closed.lifetime.load(Relaxed)),
            ],
        )
    }
}
