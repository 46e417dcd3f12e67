//! Property tests: every PDU type survives encode → parse, and parse never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use mboard_protocol::*;
use proptest::prelude::*;
use uuid::Uuid;

fn sid() -> impl Strategy<Value = SessionId> {
    any::<u128>().prop_map(|v| SessionId(Uuid::from_u128(v)))
}

fn bytes(min: usize, max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), min..max).prop_map(Bytes::from)
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (any::<u64>(), addr(), bytes(0, 64)).prop_map(|(t, from, text)| Entry {
        // Seconds times a million must fit in a u64, which every real clock does.
        time: Timestamp(t / 2),
        from,
        text,
    })
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), entry()).prop_map(|(id, entry)| Message {
        id: MessageId(id),
        entry,
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        bytes(1, 200).prop_map(|t| Request::Board(BoardRequest::Publish(t))),
        any::<u64>().prop_map(|n| Request::Board(BoardRequest::Ids(n))),
        any::<u64>().prop_map(|n| Request::Board(BoardRequest::Get(MessageId(n)))),
        any::<u64>().prop_map(|n| Request::Board(BoardRequest::Last(n))),
        (any::<u128>(), bytes(1, 200)).prop_map(|(t, text)| Request::Board(
            BoardRequest::PublishOnce {
                token: PublishToken(Uuid::from_u128(t)),
                text
            }
        )),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, max, wait_ms)| Request::Board(
            BoardRequest::After {
                after: MessageId(a),
                max,
                wait_ms
            }
        )),
        (1..=u64::MAX, 1..=u64::MAX).prop_map(|(size, block_size)| Request::Session(
            SessionRequest::Open { size, block_size }
        )),
        (sid(), any::<u64>(), bytes(0, 200)).prop_map(|(sid, index, data)| Request::Session(
            SessionRequest::Block { sid, index, data }
        )),
        sid().prop_map(|s| Request::Session(SessionRequest::Commit(s))),
        (sid(), any::<u64>())
            .prop_map(|(sid, index)| Request::Session(SessionRequest::Fetch { sid, index })),
        sid().prop_map(|s| Request::Session(SessionRequest::Close(s))),
    ]
}

fn response() -> impl Strategy<Value = (Response, Expect)> {
    let code = prop_oneof![
        Just(ErrorCode::BadFormat),
        Just(ErrorCode::MsgNotFound),
        Just(ErrorCode::UnknownControl),
        Just(ErrorCode::ErrTransm),
    ];
    let any_expect = prop_oneof![
        Just(Expect::Published),
        Just(Expect::Ids),
        Just(Expect::Entry),
        Just(Expect::Messages),
        Just(Expect::Opened),
        Just(Expect::Acked),
        Just(Expect::Data),
        Just(Expect::Closed),
    ];
    prop_oneof![
        any::<u64>().prop_map(|id| (Response::Published(MessageId(id)), Expect::Published)),
        proptest::collection::vec(any::<u64>(), 0..20).prop_map(|ids| (
            Response::Ids(ids.into_iter().map(MessageId).collect()),
            Expect::Ids
        )),
        entry().prop_map(|e| (Response::Entry(e), Expect::Entry)),
        proptest::collection::vec(message(), 0..8)
            .prop_map(|m| (Response::Messages(m), Expect::Messages)),
        (sid(), any::<u64>())
            .prop_map(|(sid, block_size)| (Response::Opened { sid, block_size }, Expect::Opened)),
        (sid(), any::<u64>(), any::<u64>()).prop_map(|(sid, index, received)| (
            Response::Acked {
                sid,
                index,
                received
            },
            Expect::Acked
        )),
        (sid(), any::<u64>(), bytes(0, 200))
            .prop_map(|(sid, index, data)| (Response::Data { sid, index, data }, Expect::Data)),
        Just((Response::Closed, Expect::Closed)),
        (sid(), 1..=u64::MAX, 1..=u64::MAX, any_expect.clone()).prop_map(
            |(sid, size, block_size, e)| {
                (
                    Response::Offer(Offer {
                        sid,
                        size,
                        block_size,
                    }),
                    e,
                )
            }
        ),
        (code, bytes(0, 40), any_expect)
            .prop_map(|(code, reason, e)| (Response::Error { code, reason }, e)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn requests_round_trip(req in request()) {
        let wire = req.to_bytes();
        prop_assert_eq!(Request::parse(wire), Ok(req));
    }

    #[test]
    fn responses_round_trip((resp, expect) in response()) {
        let wire = resp.to_bytes();
        prop_assert_eq!(Response::parse(wire, expect), Ok(resp));
    }

    #[test]
    fn record_lengths_are_exact(m in message()) {
        let mut out = Vec::new();
        m.encode_record(&mut out);
        prop_assert_eq!(out.len(), m.record_len());
        let mut entry = Vec::new();
        m.entry.encode(&mut entry);
        prop_assert_eq!(entry.len(), m.entry.encoded_len());
    }

    #[test]
    fn request_parse_never_panics(data in bytes(0, 300)) {
        let _ = Request::parse(data);
    }

    #[test]
    fn request_parse_never_panics_on_plausible_prefixes(
        code in prop_oneof![Just(b'1'), Just(b'2'), Just(b'3'), Just(b'4'), Just(b'5'), Just(b'6'), Just(b'a'), Just(b'b'), Just(b'c'), Just(b'g'), Just(b'x')],
        rest in "[0-9a-f:\\-]{0,80}",
    ) {
        let mut wire = vec![code, b':'];
        wire.extend_from_slice(rest.as_bytes());
        let _ = Request::parse(Bytes::from(wire));
    }

    #[test]
    fn response_parse_never_panics(data in bytes(0, 300), e in 0usize..8) {
        let expect = [Expect::Published, Expect::Ids, Expect::Entry, Expect::Messages,
            Expect::Opened, Expect::Acked, Expect::Data, Expect::Closed][e];
        let _ = Response::parse(data, expect);
    }
}
