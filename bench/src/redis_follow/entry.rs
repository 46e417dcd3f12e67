//! Stream entry ids (`<ms>-<seq>`) as the follower bookkeeping's `u64` keys, and the id
//! an `XADD` reply names.
//!
//! The follower scenario's bookkeeping ([`crate::follow::Shared`], the report) keys
//! messages by a `u64` in id order. A Redis id is two numbers; packed as
//! `ms << SEQ_BITS | seq` they keep their order, and the packing is exact for any id this
//! century's clocks produce at any rate one machine can reach (refused otherwise).

use std::fmt;

use redis::Value;

/// Bits of a key that hold the sequence number within a millisecond: 4 million entries in
/// one millisecond before an id cannot be packed.
const SEQ_BITS: u32 = 22;

/// Bits left for the milliseconds: up to the year 2109.
const MS_BITS: u32 = 64 - SEQ_BITS;

/// One in this many ids is timed from publish to followers, as in the mboard scenario.
const SAMPLE_EVERY: u64 = 16;

/// A stream entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EntryId {
    /// Milliseconds of the Redis server's clock when the entry was added.
    pub(crate) ms: u64,
    /// Entries added before it in the same millisecond.
    pub(crate) seq: u64,
}

impl EntryId {
    /// `<ms>-<seq>`, as Redis writes it.
    pub(crate) fn parse(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The id as a key in the same order as ids; `None` if it does not fit.
    pub(crate) fn key(self) -> Option<u64> {
        (self.ms < 1 << MS_BITS && self.seq < 1 << SEQ_BITS)
            .then_some(self.ms << SEQ_BITS | self.seq)
    }

    /// The id a [`EntryId::key`] stands for.
    pub(crate) fn of_key(key: u64) -> Self {
        EntryId {
            ms: key >> SEQ_BITS,
            seq: key & ((1 << SEQ_BITS) - 1),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Whether the entry of `key` is timed. Redis ids do not count up by one (the sequence
/// restarts every millisecond), so "every 16th id" would time mostly each millisecond's
/// first entries; a hash of the key picks one in 16 wherever an entry falls.
pub(crate) fn sampled(key: u64) -> bool {
    // splitmix64's finaliser: every bit of the key moves the low bits.
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).is_multiple_of(SAMPLE_EVERY)
}

/// The key of the id an `XADD` answered with.
pub(crate) fn added(reply: &Value) -> Result<u64, String> {
    match reply {
        Value::BulkString(id) => packed(id),
        Value::SimpleString(id) => packed(id.as_bytes()),
        other => Err(format!("XADD answered {other:?}")),
    }
}

fn packed(id: &[u8]) -> Result<u64, String> {
    EntryId::parse(id)
        .and_then(EntryId::key)
        .ok_or_else(|| format!("entry id {:?}", String::from_utf8_lossy(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn key(id: &str) -> u64 {
        EntryId::parse(id.as_bytes())
            .and_then(EntryId::key)
            .expect("packable")
    }

    #[test]
    fn ids_parse_and_pack_in_their_order() {
        let ids = [
            "0-0",
            "0-1",
            "1-0",
            "1795285846905-0",
            "1795285846905-9",
            "1795285846905-4194303",
            "1795285846906-0",
        ];
        let packed: Vec<u64> = ids.iter().map(|id| key(id)).collect();
        assert!(packed.windows(2).all(|w| w[0] < w[1]), "{packed:?}");
        for id in ids {
            let back = EntryId::of_key(key(id));
            assert_eq!(back.to_string(), id);
        }
        // One more in the millisecond, or a clock past 2109, does not fit.
        assert_eq!(
            EntryId::parse(b"1795285846905-4194304").and_then(EntryId::key),
            None
        );
        assert_eq!(
            EntryId::parse(b"4398046511104-0").and_then(EntryId::key),
            None
        );
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "1-2-3",
            "a-1",
            "1-+2",
            " 1-2",
            "1-18446744073709551616",
        ] {
            assert_eq!(EntryId::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn about_one_in_sixteen_is_sampled_wherever_it_falls_in_its_millisecond() {
        let ms = 1_795_285_846_905_u64;
        let of = |seqs: std::ops::Range<u64>| {
            (0..10_000)
                .flat_map(|m| seqs.clone().map(move |s| (ms + m) << SEQ_BITS | s))
                .filter(|k| sampled(*k))
                .count()
        };
        // First entries of each millisecond and later ones: both near 1 in 16.
        for (seqs, total) in [(0..1, 10_000.0), (0..4, 40_000.0), (40..60, 200_000.0)] {
            let share = of(seqs.clone()) as f64 / total;
            assert!((share - 1.0 / 16.0).abs() < 0.01, "{seqs:?}: {share}");
        }
    }

    #[test]
    fn xadd_replies_give_their_key() {
        assert_eq!(added(&bulk("5-3")), Ok(key("5-3")));
        assert_eq!(added(&Value::SimpleString("5-3".into())), Ok(key("5-3")));
        assert!(added(&Value::Nil).is_err());
        assert!(added(&bulk("five")).is_err());
    }
}
