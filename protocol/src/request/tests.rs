//! Requests of every kind: what parses, what is refused and why, and what encodes back.

use super::*;

fn parse(s: &[u8]) -> Result<Request, ParseError> {
    Request::parse(Bytes::copy_from_slice(s))
}

const SID: &str = "3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b";

#[test]
fn classification_order() {
    assert_eq!(parse(b""), Err(ParseError::TooShort));
    assert_eq!(parse(b"x"), Err(ParseError::TooShort));
    // Rule 1 comes before rule 2: an unknown code without ':' is still a format error.
    assert_eq!(parse(b"9x"), Err(ParseError::MissingColon));
    assert_eq!(parse(b"9:x"), Err(ParseError::UnknownCode(b'9')));
    assert_eq!(parse(b"0:"), Err(ParseError::UnknownCode(b'0')));
    assert_eq!(parse(b"d:x"), Err(ParseError::UnknownCode(b'd')));
    assert_eq!(parse(b"2:x"), Err(ParseError::BadNumber));
}

#[test]
fn reasons_match_the_contract() {
    assert_eq!(ParseError::TooShort.to_string(), "too short");
    assert_eq!(ParseError::BadNumber.to_string(), "bad number");
    assert_eq!(
        ParseError::UnknownCode(b'9').to_string(),
        "unknown request 9"
    );
    assert_eq!(
        ParseError::UnknownCode(0xff).to_string(),
        "unknown request 0xff"
    );
    assert_eq!(
        ParseError::UnknownCode(b'9').code(),
        ErrorCode::UnknownControl
    );
    assert_eq!(ParseError::BadNumber.code(), ErrorCode::BadFormat);
}

#[test]
fn board_requests() {
    assert_eq!(
        parse(b"1:a:b:c"),
        Ok(Request::Board(BoardRequest::Publish(Bytes::from_static(
            b"a:b:c"
        ))))
    );
    assert_eq!(parse(b"1:"), Err(ParseError::EmptyText));
    assert_eq!(parse(b"2:0"), Ok(Request::Board(BoardRequest::Ids(0))));
    assert_eq!(parse(b"2:-1"), Err(ParseError::BadNumber));
    assert_eq!(parse(b"2:"), Err(ParseError::BadNumber));
    assert_eq!(
        parse(b"3:99"),
        Ok(Request::Board(BoardRequest::Get(MessageId(99))))
    );
    assert_eq!(parse(b"3:1:"), Err(ParseError::BadNumber));
    assert_eq!(parse(b"4:2"), Ok(Request::Board(BoardRequest::Last(2))));
    assert_eq!(parse(b"4:99999999999999999999"), Err(ParseError::BadNumber));
}

#[test]
fn session_requests() {
    let sid = SessionId::parse(SID.as_bytes()).expect("sid");
    assert_eq!(
        parse(b"a:7:2"),
        Ok(Request::Session(SessionRequest::Open {
            size: 7,
            block_size: 2
        }))
    );
    assert_eq!(parse(b"a:0:2"), Err(ParseError::ZeroSize));
    assert_eq!(parse(b"a:7:0"), Err(ParseError::ZeroBlockSize));
    assert_eq!(parse(b"a:7"), Err(ParseError::MissingField("block size")));
    assert_eq!(parse(b"a:7:2:1"), Err(ParseError::BadNumber));
    assert_eq!(
        parse(format!("b:{SID}:0:1:").as_bytes()),
        Ok(Request::Session(SessionRequest::Block {
            sid,
            index: 0,
            data: Bytes::from_static(b"1:")
        }))
    );
    assert_eq!(
        parse(format!("b:{SID}:0").as_bytes()),
        Err(ParseError::MissingField("block data"))
    );
    assert_eq!(
        parse(format!("c:{SID}").as_bytes()),
        Ok(Request::Session(SessionRequest::Commit(sid)))
    );
    assert_eq!(parse(b"c:not-a-uuid"), Err(ParseError::BadSessionId));
    assert_eq!(
        parse(format!("c:{}", SID.to_uppercase()).as_bytes()),
        Err(ParseError::BadSessionId)
    );
    assert_eq!(
        parse(format!("c:{SID}:").as_bytes()),
        Err(ParseError::BadSessionId)
    );
    assert_eq!(
        parse(format!("g:{SID}:3").as_bytes()),
        Ok(Request::Session(SessionRequest::Fetch { sid, index: 3 }))
    );
    assert_eq!(
        parse(format!("x:{SID}").as_bytes()),
        Ok(Request::Session(SessionRequest::Close(sid)))
    );
    assert_eq!(parse(b"x:"), Err(ParseError::BadSessionId));
    assert_eq!(parse(b"b:"), Err(ParseError::MissingField("session id")));
}

fn classify(pdu: &[u8]) -> Result<RequestKind, Rejected> {
    Request::parse_classified(Bytes::copy_from_slice(pdu)).map(|r| r.kind())
}

#[test]
fn refusals_name_the_request_their_code_byte_names() {
    assert_eq!(classify(b"2:10"), Ok(RequestKind::Ids));
    assert_eq!(
        classify(b"x:not-a-sid").unwrap_err().kind,
        Some(RequestKind::Close)
    );
    let bad_block = classify(b"b:zz:0:x").unwrap_err();
    assert_eq!(bad_block.kind, Some(RequestKind::Block));
    assert_eq!(bad_block.error, ParseError::BadSessionId);
    for pdu in [&b"x"[..], b"1-", b"9:x"] {
        assert_eq!(classify(pdu).unwrap_err().kind, None, "{pdu:?}");
    }
}

#[test]
fn session_and_board_requests_encode_as_requests_do() {
    let open = SessionRequest::Open {
        size: 7,
        block_size: 2,
    };
    assert_eq!(open.to_bytes(), Request::Session(open.clone()).to_bytes());
    assert_eq!(&open.to_bytes()[..], b"a:7:2");
    let last = BoardRequest::Last(3);
    assert_eq!(&last.to_bytes()[..], b"4:3");
}

const TOKEN: &str = "0b7f5d2e-8c4a-4f1e-9d3b-6a2c1e0f9b8d";

#[test]
fn version_2_examples_parse() {
    let Ok(Request::Board(BoardRequest::PublishOnce { token, text })) =
        parse(format!("5:{TOKEN}:hi").as_bytes())
    else {
        panic!("5: parses")
    };
    assert_eq!((token.to_string().as_str(), &text[..]), (TOKEN, &b"hi"[..]));
    // The text is the last field: colons and newlines are part of it.
    let Ok(Request::Board(BoardRequest::PublishOnce { text, .. })) =
        parse(format!("5:{TOKEN}:a:b\n").as_bytes())
    else {
        panic!("5: parses")
    };
    assert_eq!(&text[..], b"a:b\n");
    assert_eq!(
        parse(b"6:41:10:0"),
        Ok(Request::Board(BoardRequest::After {
            after: MessageId(41),
            max: 10,
            wait_ms: 0
        }))
    );
}

#[test]
fn version_2_refusals() {
    let refusal = |pdu: &[u8]| parse(pdu).unwrap_err().to_string();
    assert_eq!(refusal(b"5:not-a-uuid:hi"), "bad token");
    assert_eq!(refusal(format!("5:{TOKEN}:").as_bytes()), "empty text");
    assert_eq!(refusal(format!("5:{TOKEN}").as_bytes()), "missing text");
    let upper = format!("5:{}:hi", TOKEN.to_uppercase());
    assert_eq!(refusal(upper.as_bytes()), "bad token");
    // A field that is not the token's 36 bytes is refused whether or not the 37th byte
    // happens to be a `:`.
    let short = format!("5:{}:{}:hi", &TOKEN[..8], &TOKEN[..27]);
    assert_eq!(short.as_bytes()[2 + 36], b':');
    assert_eq!(refusal(short.as_bytes()), "bad token");
    assert_eq!(refusal(format!("5:{TOKEN}0:hi").as_bytes()), "bad token");
    assert_eq!(refusal(format!("5:{TOKEN}0").as_bytes()), "missing text");
    assert_eq!(
        refusal(format!("5:{}", &TOKEN[..20]).as_bytes()),
        "missing text"
    );
    assert_eq!(refusal(b"6:41:10"), "missing wait");
    assert_eq!(refusal(b"6:41"), "missing max");
    assert_eq!(refusal(b"6:41:10:-1"), "bad number");
    assert_eq!(refusal(b"6:x:10:0"), "bad number");
}

#[test]
fn one_trailing_newline_is_ignored_after_numbers_only() {
    assert_eq!(parse(b"2:10\n"), Ok(Request::Board(BoardRequest::Ids(10))));
    assert_eq!(
        parse(b"3:1\r\n"),
        Ok(Request::Board(BoardRequest::Get(MessageId(1))))
    );
    assert_eq!(parse(b"4:2\n"), Ok(Request::Board(BoardRequest::Last(2))));
    assert!(matches!(
        parse(b"6:1:2:3\r\n"),
        Ok(Request::Board(BoardRequest::After { wait_ms: 3, .. }))
    ));
    // One only, and never a lone `\r` or a newline inside.
    assert_eq!(parse(b"2:10\n\n"), Err(ParseError::BadNumber));
    assert_eq!(parse(b"2:10\r"), Err(ParseError::BadNumber));
    assert_eq!(parse(b"2:\n"), Err(ParseError::BadNumber));
    assert_eq!(parse(b"6:1\n:2:3"), Err(ParseError::BadNumber));
    // In a text it is part of the text; in session requests it is refused.
    assert_eq!(
        parse(b"1:hi\n"),
        Ok(Request::Board(BoardRequest::Publish(Bytes::from_static(
            b"hi\n"
        ))))
    );
    assert!(parse(b"a:7:2\n").is_err());
}
