//! Clients of the transfer scenarios: the blocking [`Client`] with its windows and
//! retransmission, one thread each, as the CLI moves large texts.

use std::io;
use std::time::{Duration, Instant};

use mboard_client::{Client, ClientConfig};
use mboard_protocol::MessageId;

use crate::report::Tally;
use crate::run::Window;
use crate::scenario::{self, Load, Scenario};

/// Client `c` of a transfer scenario, until the run stops.
pub(crate) fn client(
    c: usize,
    load: &Load,
    scenario: &Scenario,
    window: &Window,
) -> io::Result<Tally> {
    let mut tally = Tally::default();
    let config = ClientConfig {
        timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    };
    let mut client = Client::new(load.server, config).map_err(io::Error::other)?;
    let text = match scenario {
        Scenario::Upload { size } => scenario::text(c, *size),
        _ => Vec::new(),
    };
    while !window.is_stopped() {
        let started = Instant::now();
        match scenario {
            Scenario::Download { id, .. } => {
                let result = client.get(MessageId(*id));
                tally.record_result(window, started, result);
            }
            _ => {
                let result = client.publish(&text);
                tally.record_result(window, started, result);
            }
        }
    }
    Ok(tally)
}
