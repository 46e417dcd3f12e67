//! The mboard wire protocol: typed PDUs for both layers, with parse and encode side by side.
//!
//! Layer 1 ([`BoardRequest`]) is the classic one-datagram board protocol; layer 2
//! ([`SessionRequest`]) carries requests and responses too large for one datagram in
//! numbered blocks. Nothing here does I/O: every function maps bytes to values or back, so
//! the server, the client and the fuzzers share one definition of the grammar.
//!
//! Payloads (published text, block data) are `Bytes` slices of the datagram they came in.
#![warn(missing_docs)]

mod code;
mod field;
mod ids;
mod message;
mod request;
mod response;

pub use code::{ErrorCode, ReplyCode, RequestKind};
pub use field::{digits, digits_in_range};
pub use ids::{MessageId, PublishToken, SessionId};
pub use message::{Entry, Message, Timestamp};
pub use request::{BoardRequest, ParseError, Rejected, Request, SessionRequest};
pub use response::{
    DATA_HEADER_MAX, Expect, Offer, Response, ResponseError, encode_entries, encode_ids,
    encode_messages, ids_reply_len, messages_reply_len,
};

/// The largest request datagram the protocol accepts (the IPv4 UDP payload maximum).
pub const MAX_DATAGRAM: usize = 65_507;

/// Upload block sizes above this are lowered by the server.
pub const MAX_BLOCK_SIZE: u64 = 65_000;
