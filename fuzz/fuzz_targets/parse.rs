//! The protocol parsers on arbitrary bytes: no panic, and whatever parses re-encodes to
//! something that parses back to the same value.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mboard_protocol::{Expect, Request, Response};

const EXPECTS: [Expect; 8] = [
    Expect::Published,
    Expect::Ids,
    Expect::Entry,
    Expect::Messages,
    Expect::Opened,
    Expect::Acked,
    Expect::Data,
    Expect::Closed,
];

fuzz_target!(|data: &[u8]| {
    let datagram = Bytes::copy_from_slice(data);
    match Request::parse(datagram.clone()) {
        Ok(request) => assert_eq!(Request::parse(request.to_bytes()), Ok(request)),
        Err(e) => {
            // Every refusal has a code and a printable reason.
            let _ = e.code();
            assert!(e.to_string().is_ascii());
        }
    }
    for expect in EXPECTS {
        if let Ok(response) = Response::parse(datagram.clone(), expect) {
            assert_eq!(Response::parse(response.to_bytes(), expect), Ok(response));
        }
    }
});
