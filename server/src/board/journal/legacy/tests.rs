//! The single-file formats' record check, as the servers before format 3 applied it.

use super::*;

const TOKEN: PublishToken = PublishToken(Uuid::from_u128(0x0b7f5d2e_8c4a_4f1e_9d3b_6a2c1e0f9b8d));

fn from() -> SocketAddr {
    SocketAddr::from(([0xfe80, 0, 0, 0, 0, 0, 0, 1], 443))
}

fn record(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(
        &mut out,
        MessageId(7),
        Timestamp(42),
        from(),
        Some(TOKEN),
        text,
    );
    out
}

fn valid(bytes: &[u8]) -> Record {
    match check(bytes) {
        Ok(Check::Valid(r)) => r,
        other => panic!("not valid: {other:?}"),
    }
}

#[test]
fn an_encoded_record_checks_as_valid() {
    let bytes = record(b"some text");
    let r = valid(&bytes);
    assert_eq!(
        (r.id, r.time, r.token, r.from, r.len),
        (
            MessageId(7),
            Timestamp(42),
            Some(TOKEN),
            from(),
            bytes.len()
        )
    );
    assert_eq!(&bytes[r.text_at..r.len], b"some text");
}

#[test]
fn records_without_a_token_and_version_1_records_read_alike() {
    let v4 = SocketAddr::from(([10, 1, 2, 3], 9));
    let mut plain = Vec::new();
    encode_record(&mut plain, MessageId(1), Timestamp(5), v4, None, b"text");
    let mut old = Vec::new();
    encode_record_v1(&mut old, MessageId(1), Timestamp(5), v4, b"text");
    assert_eq!(&old[..4], b"MBR1");
    assert_eq!(&plain[..4], b"MBR2");
    assert_eq!(old.len() + 1, plain.len(), "one flags byte more");
    for bytes in [&plain, &old] {
        let r = valid(bytes);
        assert_eq!(
            (r.id, r.time, r.token, r.from),
            (MessageId(1), Timestamp(5), None, v4)
        );
        assert_eq!(&bytes[r.text_at..], b"text");
    }
}

#[test]
fn short_input_asks_for_more_and_damage_is_damage() {
    let bytes = record(b"text");
    assert_eq!(check(&bytes[..5]), Err(RECORD_HEADER));
    assert_eq!(check(&bytes[..RECORD_HEADER]), Err(bytes.len()));
    // A byte of the token is covered by the body checksum like any other.
    for i in [
        0,
        3,
        5,
        9,
        RECORD_HEADER + 1,
        RECORD_HEADER + 20,
        bytes.len() - 1,
    ] {
        let mut bad = bytes.clone();
        bad[i] ^= 0x20;
        assert_eq!(check(&bad), Ok(Check::Damaged), "byte {i}");
    }
}

#[test]
fn a_checksummed_body_that_does_not_decode_is_malformed_not_damaged() {
    let resealed = |at: usize, value: u8| {
        let mut bytes = record(b"text");
        bytes[at] = value;
        let crc = crc32c::crc32c(&bytes[RECORD_HEADER..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        check(&bytes)
    };
    // An unknown flag bit; family byte 5 (after the flags and the token).
    assert_eq!(resealed(RECORD_HEADER + 16, 3), Ok(Check::Malformed));
    assert_eq!(resealed(RECORD_HEADER + 33, 5), Ok(Check::Malformed));
    assert!(Check::Malformed.is_intact() && !Check::Damaged.is_intact());
}

#[test]
fn file_headers_name_their_version() {
    let header = file_header();
    assert_eq!(file_version(&header), Some(VERSION));
    let mut old = header;
    old[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(file_version(&old), Some(1));
    old[0] = b'X';
    assert_eq!(file_version(&old), None);
}
