//! The record check against records made and damaged by hand.

use super::*;

const SALT: Salt = Salt(0x5eed_5a17_0000_0001);
const AT: Place = Place {
    salt: SALT,
    segment: 100,
    offset: 40,
};
const TOKEN: PublishToken = PublishToken(Uuid::from_u128(0x0b7f5d2e_8c4a_4f1e_9d3b_6a2c1e0f9b8d));

fn from() -> SocketAddr {
    SocketAddr::from(([0xfe80, 0, 0, 0, 0, 0, 0, 1], 443))
}

fn message(text: &[u8], token: Option<PublishToken>) -> Vec<u8> {
    let mut out = Vec::new();
    let body = Body::Message {
        from: from(),
        token,
        text,
    };
    encode(&mut out, AT, 0, MessageId(7), Timestamp(42), body);
    out
}

fn valid(bytes: &[u8]) -> Record {
    match check(bytes, AT) {
        Ok(Check::Valid(r)) => r,
        other => panic!("not valid: {other:?}"),
    }
}

#[test]
fn a_message_checks_as_valid_and_sizes_its_entry() {
    for token in [None, Some(TOKEN)] {
        let bytes = message(b"some text", token);
        let r = valid(&bytes);
        let Kind::Message {
            token: t,
            from: f,
            text_at,
        } = r.kind
        else {
            panic!("a message")
        };
        assert_eq!(
            (r.id, r.time, t, f, r.len, r.batch),
            (MessageId(7), Timestamp(42), token, from(), bytes.len(), 0)
        );
        assert_eq!(&bytes[text_at..r.len], b"some text");
        let entry = mboard_protocol::Entry {
            time: r.time,
            from: f,
            text: Bytes::from_static(b"some text"),
        };
        assert_eq!(entry_len(&bytes, AT), Some(entry.encoded_len()));
        assert_eq!(
            r.reply_len(),
            Some(Message::record_len_of(r.id, r.time, f, 9) as u64)
        );
    }
    // The widest record's fields fit in what sizing reads.
    let r = valid(&message(b"", Some(TOKEN)));
    assert!(matches!(r.kind, Kind::Message { text_at, .. } if text_at == RECORD_HEAD));
}

#[test]
fn notes_carry_an_id_a_time_and_a_token() {
    let mut out = Vec::new();
    encode(
        &mut out,
        AT,
        0,
        MessageId(3),
        Timestamp(9),
        Body::TokenNote(TOKEN),
    );
    let at = out.len();
    encode(&mut out, AT, 0, MessageId(5), Timestamp(10), Body::KeptNote);
    let note = valid(&out);
    assert_eq!(
        (note.kind, note.id, note.time, note.reply_len()),
        (
            Kind::TokenNote { token: TOKEN },
            MessageId(3),
            Timestamp(9),
            None
        )
    );
    let kept = match check(&out[at..], AT.plus(at as u64)) {
        Ok(Check::Valid(r)) => r,
        other => panic!("not valid: {other:?}"),
    };
    assert_eq!(
        (kept.kind, kept.id, kept.batch),
        (Kind::KeptNote, MessageId(5), at as u32)
    );
    assert_eq!(entry_len(&out, AT), None, "a note has no entry");
}

#[test]
fn a_record_of_another_journal_or_from_another_place_is_not_one() {
    let bytes = message(b"text", None);
    let other = Place {
        salt: Salt(SALT.0 ^ 1),
        ..AT
    };
    assert_eq!(check(&bytes, other), Ok(Check::Damaged));
    assert_eq!(entry_len(&bytes, other), None);
    // The same bytes at another offset, or in another segment: a copy.
    assert_eq!(check(&bytes, AT.plus(1)), Ok(Check::Damaged));
    let moved = Place { segment: 0, ..AT };
    assert_eq!(check(&bytes, moved), Ok(Check::Damaged));
    // Even with the salt's bytes replaced and the header checksum made good again, the
    // salt itself must match.
    let zero = Place {
        salt: Salt(0),
        ..AT
    };
    let mut forged = bytes.clone();
    forged[8..16].copy_from_slice(&0u64.to_le_bytes());
    let crc = zero.header_crc(&forged);
    forged[16..20].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(check(&forged, AT), Ok(Check::Damaged));
    assert!(matches!(check(&forged, zero), Ok(Check::Valid(_))));
}

#[test]
fn short_input_asks_for_more_and_damage_is_damage() {
    let bytes = message(b"text", Some(TOKEN));
    assert_eq!(check(&bytes[..5], AT), Err(RECORD_HEADER));
    assert_eq!(check(&bytes[..RECORD_HEADER], AT), Err(bytes.len()));
    for i in [
        0,
        3,
        5,
        9,
        17,
        21,
        RECORD_HEADER + 1,
        RECORD_HEADER + 30,
        bytes.len() - 1,
    ] {
        let mut bad = bytes.clone();
        bad[i] ^= 0x20;
        assert_eq!(check(&bad, AT), Ok(Check::Damaged), "byte {i}");
    }
}

#[test]
fn a_checksummed_body_that_does_not_decode_is_malformed() {
    let resealed = |at: usize, value: u8| {
        let mut bytes = message(b"text", None);
        bytes[at] = value;
        let crc = crc32c::crc32c(&bytes[RECORD_HEADER..]);
        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
        check(&bytes, AT)
    };
    // An unknown kind; family byte 5.
    assert_eq!(resealed(RECORD_HEADER, 9), Ok(Check::Malformed));
    assert_eq!(
        resealed(RECORD_HEADER + BODY_FIXED, 5),
        Ok(Check::Malformed)
    );
}

#[test]
fn headers_and_stubs_round_trip_and_refuse_damage() {
    let header = segment_header(SALT, 1_234);
    assert_eq!(read_segment_header(&header), Ok((SALT, 1_234)));
    let mut bad = header;
    bad[25] ^= 1;
    assert!(read_segment_header(&bad).is_err());
    assert!(read_segment_header(b"MBOARD\0J and more bytes than a header").is_err());
    let stub = Stub {
        salt: SALT,
        newest: 99,
    };
    let bytes = stub.encode();
    assert_eq!(Stub::decode(&bytes), Some(stub));
    assert_eq!(declared_version(&bytes), Some(VERSION));
    let mut bad = bytes;
    bad[30] ^= 1;
    assert_eq!(Stub::decode(&bad), None);
    assert_eq!(declared_version(b"MBOARD\0J\x02\0\0\0\0\0\0\0"), Some(2));
    assert_eq!(declared_version(b"not a journal"), None);
}
