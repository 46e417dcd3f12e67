//! Every example and error row of PROTOCOL.md, over real sockets, asserting exact bytes.

use bytes::Bytes;
use mboard_protocol::{Expect, Response, Timestamp};
use mboard_server::Limits;
use mboard_tests::{Peer, TestServer, gate};

/// The `<ts>` of a `3:` reply, checked to have exactly six decimals.
fn ts_of(reply: &str) -> String {
    let ts = reply.split(':').nth(1).expect("ts field");
    assert!(
        Timestamp::parse(ts.as_bytes()).is_some(),
        "bad timestamp in {reply}"
    );
    assert_eq!(
        ts.split('.').nth(1).map(str::len),
        Some(6),
        "six decimals in {reply}"
    );
    ts.to_string()
}

#[test]
fn board_examples_byte_for_byte() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let (a, b) = (Peer::new(server.addr), Peer::new(server.addr));
    assert_eq!(a.ask_str("2:10"), "0:", "an empty board has no ids");
    assert_eq!(a.ask_str("4:10"), "0:0", "and no messages");
    assert_eq!(a.ask_str("1:Hello world!"), "0:0");
    assert_eq!(b.ask_str("1:a:b:c"), "0:1");
    assert_eq!(a.ask_str("2:10"), "0:0:1");
    assert_eq!(a.ask_str("2:1"), "0:1");
    assert_eq!(a.ask_str("2:0"), "0:0:1");
    let get1 = a.ask_str("3:1");
    let ts1 = ts_of(&get1);
    assert_eq!(get1, format!("0:{ts1}:127.0.0.1:{}:a:b:c", b.addr().port()));
    let ts0 = ts_of(&a.ask_str("3:0"));
    assert!(ts0 <= ts1, "timestamps follow publish order");
    assert_eq!(a.ask_str("3:99"), "2:no message 99");
    let want = format!(
        "0:2:0:{ts0}:127.0.0.1:{}:12:Hello world!:1:{ts1}:127.0.0.1:{}:5:a:b:c",
        a.addr().port(),
        b.addr().port()
    );
    assert_eq!(a.ask_str("4:2"), want);
    assert_eq!(a.ask_str("4:0"), want);
    assert_eq!(
        a.ask_str("4:1"),
        format!("0:1:1:{ts1}:127.0.0.1:{}:5:a:b:c", b.addr().port())
    );
    assert_eq!(a.ask_str("2:-1"), "1:bad number");
    assert_eq!(a.ask_str("9:x"), "3:unknown request 9");
    assert_eq!(a.ask_str("x"), "1:too short");
}

#[test]
fn board_error_rows() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("1:"), "1:empty text");
    assert_eq!(p.ask_str(""), "1:too short");
    assert_eq!(p.ask_str("1x"), "1:missing ':' after the code");
    assert_eq!(p.ask_str("0:"), "3:unknown request 0");
    assert_eq!(p.ask_str("d:x"), "3:unknown request d");
    assert_eq!(p.ask(b"\x00:"), b"3:unknown request 0x00");
    assert_eq!(p.ask_str("2:"), "1:bad number");
    assert_eq!(p.ask_str("2: 1"), "1:bad number");
    assert_eq!(p.ask_str("3:18446744073709551616"), "1:bad number");
    assert_eq!(
        p.ask_str("3:18446744073709551615"),
        "2:no message 18446744073709551615"
    );
    assert_eq!(p.ask_str("4:1:"), "1:bad number");
    // Nothing above was stored.
    assert_eq!(p.ask_str("2:0"), "0:");
}

#[test]
fn contract_session_example() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    for _ in 0..42 {
        p.ask("1:filler");
    }
    let (sid, bs) = p.open(7, 2).expect("open");
    assert_eq!(bs, 2);
    assert_eq!(p.ask_str(format!("b:{sid}:0:1:")), format!("0:{sid}:0:1"));
    assert_eq!(p.ask_str(format!("b:{sid}:2:ll")), format!("0:{sid}:2:2"));
    assert_eq!(
        p.ask_str(format!("c:{sid}")),
        "4:incomplete: 2 of 4 blocks missing"
    );
    assert_eq!(p.ask_str(format!("b:{sid}:1:he")), format!("0:{sid}:1:3"));
    assert_eq!(p.ask_str(format!("b:{sid}:3:o")), format!("0:{sid}:3:4"));
    assert_eq!(p.ask_str(format!("c:{sid}")), "0:42");
    assert_eq!(p.ask_str(format!("c:{sid}")), "0:42");
    assert_eq!(p.ask_str(format!("x:{sid}")), "0:");
    assert_eq!(p.ask_str("2:2"), "0:41:42", "published exactly once");
    assert!(p.ask_str("3:42").ends_with(":hello"));
}

#[test]
fn session_error_rows() {
    let _gate = gate::plain();
    let server = TestServer::builder()
        .limits(Limits {
            max_request_size: 1000,
            ..Limits::default()
        })
        .start();
    let (owner, other) = (Peer::new(server.addr), Peer::new(server.addr));
    let unknown = "3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b";
    assert_eq!(
        owner.ask_str(format!("b:{unknown}:0:x")),
        "4:unknown session"
    );
    assert_eq!(owner.ask_str(format!("c:{unknown}")), "4:unknown session");
    assert_eq!(owner.ask_str(format!("g:{unknown}:0")), "4:unknown session");
    assert_eq!(owner.ask_str(format!("x:{unknown}")), "0:");
    assert_eq!(
        owner.ask_str("c:3F2B8C1E-9A4D-4E6F-8B1A-2C3D4E5F6A7B"),
        "1:bad session id"
    );
    assert_eq!(owner.ask_str("x:nope"), "1:bad session id");
    assert_eq!(owner.ask_str("g:nope:0"), "1:bad session id");
    assert_eq!(owner.ask_str("a:0:2"), "1:size must be at least 1");
    assert_eq!(owner.ask_str("a:5:0"), "1:block size must be at least 1");
    assert_eq!(owner.ask_str("a:5"), "1:missing block size");
    assert_eq!(owner.ask_str("a:1001:100"), "4:too large: max 1000 bytes");
    let (sid, _) = owner.open(5, 2).expect("open");
    assert_eq!(
        owner.ask_str(format!("b:{sid}:0:1")),
        "1:block 0 must be 2 bytes"
    );
    assert_eq!(
        owner.ask_str(format!("b:{sid}:3:x")),
        "1:block index past the end"
    );
    let foreign = "4:session belongs to another address";
    assert_eq!(other.ask_str(format!("b:{sid}:0:1:")), foreign);
    assert_eq!(other.ask_str(format!("c:{sid}")), foreign);
    assert_eq!(other.ask_str(format!("g:{sid}:0")), foreign);
    assert_eq!(other.ask_str(format!("x:{sid}")), foreign);
    // The foreign block was not stored.
    assert_eq!(
        owner.ask_str(format!("c:{sid}")),
        "4:incomplete: 3 of 3 blocks missing"
    );
    // An assembled request that is not a board request.
    let upload = owner.upload(b"z:abc", 5).expect("upload");
    assert_eq!(upload.commit, "3:unknown request z");
    let upload = owner.upload(b"a:1:1", 5).expect("upload");
    assert_eq!(upload.commit, "3:not a board request");
}

#[test]
fn large_single_datagram_publish_comes_back_through_an_offer() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    let text: Vec<u8> = (0..60_000u32)
        .map(|i| b"abc:\n\x00\xff"[i as usize % 7])
        .collect();
    assert_eq!(p.ask_str([b"1:".as_slice(), &text].concat()), "0:0");
    let reply = Response::parse(Bytes::from(p.ask("3:0")), Expect::Entry).expect("reply");
    let Response::Offer(offer) = reply else {
        panic!("expected an offer, got {reply:?}")
    };
    assert_eq!(offer.block_size, 1_412);
    let pdu = p.fetch(&offer, 0..offer.blocks()).expect("fetch");
    let Response::Entry(entry) = Response::parse(Bytes::from(pdu), Expect::Entry).expect("entry")
    else {
        panic!("entry")
    };
    assert_eq!(entry.text, text);
    assert_eq!(p.ask_str(format!("x:{}", offer.sid)), "0:");
    assert_eq!(p.ask_str(format!("g:{}:0", offer.sid)), "4:unknown session");
}
