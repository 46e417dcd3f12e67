//! The clustered store's metrics: the NATS connection, and how far the replica lags.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Default)]
pub(super) struct NatsMetrics {
    pub(super) connected: Gauge,
    pub(super) stream_last: Gauge,
    pub(super) replica_newest: Gauge,
    pub(super) lag: Gauge,
    pub(super) publish_failures: Counter,
    pub(super) consumer_restarts: Counter,
    pub(super) replica_refetched: Counter,
    pub(super) replica_holes: Counter,
    pub(super) stream_probes: Counter,
}

impl NatsMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "mboard_nats_connected",
            "1 while the server is connected to NATS, 0 while it reconnects (publishes are refused meanwhile)",
            self.connected.clone(),
        );
        registry.register(
            "mboard_nats_stream_last_id",
            "The newest id the stream is known to hold (from acknowledgements and stream info)",
            self.stream_last.clone(),
        );
        registry.register(
            "mboard_nats_replica_newest_id",
            "The newest id this server's replica holds",
            self.replica_newest.clone(),
        );
        registry.register(
            "mboard_nats_replica_lag_messages",
            "Messages the stream holds that this server's replica has not received yet",
            self.lag.clone(),
        );
        registry.register(
            "mboard_nats_publish_failures",
            "Publishes answered 4 because NATS did not acknowledge them in time or refused them",
            self.publish_failures.clone(),
        );
        registry.register(
            "mboard_nats_consumer_restarts",
            "Times the replica's ordered consumer was recreated after it stalled",
            self.consumer_restarts.clone(),
        );
        registry.register(
            "mboard_nats_replica_refetched",
            "Messages the replica's consumer skipped and the server read from the stream directly",
            self.replica_refetched.clone(),
        );
        registry.register(
            "mboard_nats_replica_holes",
            "Ids missing from the stream above its first id (deleted or lost inside NATS): each one made the replica drop the older messages it held",
            self.replica_holes.clone(),
        );
        registry.register(
            "mboard_nats_stream_probes",
            "Questions to JetStream for the stream's newest id made for reads above the replica's newest (one at a time, shared by every read waiting for it)",
            self.stream_probes.clone(),
        );
    }
}
