//! Several servers of one board (a cluster on one NATS stream): `--server a,b,c`.
//!
//! Each operation goes to one server, from its start to its end (sessions live on the
//! server that opened them); when that server does not answer (silence, a refusal, a name
//! that does not resolve, or `4:storage unavailable`), the operation starts over on the
//! next. A publish keeps its `5:` token across the restart, so the stream stores it once
//! whichever server took it first.

use mboard_protocol::{Entry, ErrorCode, MessageId, PublishToken};

use crate::{Client, ClientConfig, ClientError};

/// Sets up each new [`Client`] (a progress bar, say).
pub(crate) type Setup = Box<dyn FnMut(&mut Client)>;

/// A client of a list of servers serving one board.
pub struct Servers {
    list: Vec<String>,
    config: ClientConfig,
    /// The server the next operation tries first.
    next: usize,
    setup: Option<Setup>,
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servers")
            .field("list", &self.list)
            .field("next", &self.next)
            .finish()
    }
}

/// Whether another server may succeed where this one failed.
fn worth_another(e: &ClientError) -> bool {
    match e {
        ClientError::Timeout { .. } | ClientError::Refused { .. } | ClientError::Resolve(_) => true,
        ClientError::Server { code, reason } => {
            *code == ErrorCode::ErrTransm && &reason[..] == b"storage unavailable"
        }
        _ => false,
    }
}

impl Servers {
    /// The servers in `list` (comma-separated `host:port` or `host`), tried in that order:
    /// the first that answers takes the operation.
    pub fn parse(list: &str, config: ClientConfig) -> Result<Self, ClientError> {
        let list: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
        if list.iter().any(String::is_empty) {
            return Err(ClientError::Resolve(
                "an empty server in the list (write host:port,host:port)".into(),
            ));
        }
        Ok(Servers {
            list,
            config,
            next: 0,
            setup: None,
        })
    }

    /// The servers, in the order given.
    pub fn list(&self) -> &[String] {
        &self.list
    }

    /// Starts the next operation on server `i` of the list.
    pub fn start_at(&mut self, i: usize) {
        self.next = i % self.list.len();
    }

    /// Passes over the server that took the last operation: the next one starts on the
    /// server after it (a follower whose server stopped answering).
    pub fn pass_over_current(&mut self) {
        self.next = (self.next + 1) % self.list.len();
    }

    /// Runs `setup` on every client made from now on.
    pub fn on_client(&mut self, setup: Setup) {
        self.setup = Some(setup);
    }

    /// Runs `op` on each server in turn, from the one due next, until one does it or fails
    /// in a way another server would too. The server that did it goes first next time.
    pub fn run<T>(
        &mut self,
        mut op: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.first_answering(|mut c| op(&mut c))
    }

    /// [`Servers::run`] with the client handed over to `op`.
    fn first_answering<T>(
        &mut self,
        mut op: impl FnMut(Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut last = None;
        for k in 0..self.list.len() {
            let i = (self.next + k) % self.list.len();
            let result = Client::connect(&self.list[i], self.config.clone()).and_then(|mut c| {
                if let Some(setup) = &mut self.setup {
                    setup(&mut c);
                }
                op(c)
            });
            match result {
                Ok(value) => {
                    self.next = i;
                    return Ok(value);
                }
                Err(e) if worth_another(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Resolve("no server".into())))
    }

    /// Publishes `text` exactly once, whichever servers fail on the way: to one server as
    /// [`Client::publish`] does, to a list with `5:` under one token for all the servers
    /// it is tried on (so a server that stored it and then died is not asked to store it
    /// again under another). Classic mode has no tokens: one `1:` datagram.
    pub fn publish(&mut self, text: &[u8]) -> Result<MessageId, ClientError> {
        if self.list.len() == 1 || self.config.classic {
            return self.run(|c| c.publish(text));
        }
        let token = PublishToken(uuid::Uuid::new_v4());
        self.run(|c| c.publish_once_as(token, text))
    }

    /// A client of the first server, from the one due next, that answers (a `4:1`), for
    /// the commands that stream what they read (`last`, `since`, `follow`) and so cannot
    /// start over elsewhere once they have printed something. One server is not asked
    /// first: its command says whether it answers.
    pub fn client(&mut self) -> Result<Client, ClientError> {
        if self.list.len() == 1 {
            return self.first_answering(Ok);
        }
        self.first_answering(|mut c| c.ids(1).map(|_| c))
    }

    /// One message.
    pub fn get(&mut self, id: MessageId) -> Result<Entry, ClientError> {
        self.run(|c| c.get(id))
    }

    /// The ids of the newest `n` messages (0: all).
    pub fn ids(&mut self, n: u64) -> Result<Vec<MessageId>, ClientError> {
        self.run(|c| c.ids(n))
    }

    /// One raw datagram's reply (see [`Client::raw`]).
    pub fn raw(&mut self, pdu: &[u8]) -> Result<bytes::Bytes, ClientError> {
        self.run(|c| c.raw(pdu))
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::*;

    #[test]
    fn lists_are_comma_separated_and_never_empty() {
        let s = Servers::parse("a:1, b:2,c", ClientConfig::default()).expect("list");
        assert_eq!(s.list(), ["a:1", "b:2", "c"]);
        assert_eq!(s.next, 0, "the first listed goes first");
        assert!(Servers::parse("a:1,,b", ClientConfig::default()).is_err());
        assert!(Servers::parse("", ClientConfig::default()).is_err());
    }

    #[test]
    fn only_silence_and_unavailability_move_on() {
        let server = |code, reason: &'static str| ClientError::Server {
            code,
            reason: bytes::Bytes::from_static(reason.as_bytes()),
        };
        assert!(worth_another(&server(
            ErrorCode::ErrTransm,
            "storage unavailable"
        )));
        assert!(!worth_another(&server(ErrorCode::ErrTransm, "busy")));
        assert!(!worth_another(&server(
            ErrorCode::MsgNotFound,
            "no message 3"
        )));
        assert!(worth_another(&ClientError::Refused { server: "s".into() }));
    }

    #[test]
    fn a_silent_server_is_passed_over() {
        // One that never answers, and one that answers every `3:` with a message.
        let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let live = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let live_addr = live.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = live.recv_from(&mut buf) {
                let _ = live.send_to(b"0:1.000000:127.0.0.1:9:hello", from);
            }
        });
        let config = ClientConfig {
            timeout: Duration::from_millis(300),
            ..ClientConfig::default()
        };
        let list = format!("{},{live_addr}", silent.local_addr().expect("addr"));
        let mut servers = Servers::parse(&list, config).expect("list");
        servers.start_at(0);
        let entry = servers.get(MessageId(1)).expect("the live one answers");
        assert_eq!(&entry.text[..], b"hello");
        assert_eq!(servers.next, 1, "the live one goes first next time");
    }
}
