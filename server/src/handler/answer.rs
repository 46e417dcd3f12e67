//! What the handler answers for one datagram, in typed values the driver matches.

use std::future::Future;
use std::pin::Pin;

use mboard_protocol::{RequestKind, Response};

use crate::reply::Reply;
use crate::session::SessionError;

/// What [`Handler::handle`](super::Handler::handle) made of one datagram.
#[derive(Debug)]
pub(crate) struct Handled {
    /// The request it was, or claimed to be (`None`: not a request at all).
    pub kind: Option<RequestKind>,
    /// What to send back.
    pub answer: Answer,
}

/// The reply to a download offered, or the reason it could not be.
pub(super) fn offered(offer: Result<mboard_protocol::Offer, SessionError>) -> Reply {
    match offer {
        Ok(offer) => Reply::new(&Response::Offer(offer)),
        Err(e) => e.into(),
    }
}

/// A reply that waits for the board (a publish waiting for its group commit).
pub(crate) type Pending = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// What to send back for one datagram.
pub(crate) enum Answer {
    /// Nothing (a commit that is already executing: the client's resend gets the reply).
    Silent,
    /// This reply, now.
    Reply(Reply),
    /// A reply that takes a while to build (a large download): run this away from the
    /// receive loop, such as on a blocking thread, then send what it returns.
    Build(Box<dyn FnOnce() -> Reply + Send>),
    /// A reply that waits for the board: the receive loop keeps it until it is ready.
    Wait(Pending),
}

impl Answer {
    /// The reply to send, building or awaiting it here if need be.
    pub(crate) async fn resolve(self) -> Option<Reply> {
        match self {
            Answer::Silent => None,
            Answer::Reply(reply) => Some(reply),
            Answer::Build(build) => Some(build()),
            Answer::Wait(wait) => Some(wait.await),
        }
    }

    /// The same answer, with `f` applied to its reply whenever that is ready.
    pub(super) fn then(self, f: impl FnOnce(Reply) -> Reply + Send + 'static) -> Answer {
        match self {
            Answer::Silent => Answer::Silent,
            Answer::Reply(reply) => Answer::Reply(f(reply)),
            Answer::Build(build) => Answer::Build(Box::new(move || f(build()))),
            Answer::Wait(wait) => Answer::Wait(Box::pin(async move { f(wait.await) })),
        }
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Silent => f.write_str("Silent"),
            Answer::Reply(reply) => f.debug_tuple("Reply").field(reply).finish(),
            Answer::Build(_) => f.write_str("Build(..)"),
            Answer::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}
