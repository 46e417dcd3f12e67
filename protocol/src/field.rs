//! Field-level grammar shared by requests and responses: numbers, splitting on `:`.

use bytes::Bytes;

/// The longest decimal number the protocol allows (`u64::MAX` has 20 digits).
pub(crate) const MAX_DIGITS: usize = 20;

/// Parses a protocol number: 1 to 20 ASCII digits whose value fits in a `u64`.
pub(crate) fn parse_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > MAX_DIGITS {
        return None;
    }
    let mut value: u64 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// The number of decimal digits `n` takes on the wire.
pub fn digits(n: u64) -> usize {
    // ilog10 is undefined for zero, which still takes one digit.
    match n.checked_ilog10() {
        Some(log) => log as usize + 1,
        None => 1,
    }
}

/// The total number of decimal digits of every number in `start..end`.
///
/// Lets a store size a `2:` reply over a range of consecutive ids without walking it.
pub fn digits_in_range(start: u64, end: u64) -> u64 {
    let mut total = 0;
    let mut low = 1u64; // smallest number with `d` digits (0 is counted with 1 digit)
    for d in 1..=MAX_DIGITS as u64 {
        let high = low.saturating_mul(10); // first number with d + 1 digits
        let from = if d == 1 { start } else { start.max(low) };
        let to = end.min(high);
        if from < to {
            total += (to - from) * d;
        }
        if high == u64::MAX {
            break;
        }
        low = high;
    }
    total
}

/// Appends the decimal form of `n`.
pub(crate) fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A cursor over the `:`-separated fields of a payload.
///
/// Payloads are carried as `Bytes` so that the last field (text or data) comes out as a
/// zero-copy slice of the datagram.
pub(crate) struct Fields {
    rest: Bytes,
}

impl Fields {
    pub(crate) fn new(payload: Bytes) -> Self {
        Fields { rest: payload }
    }

    /// The next field up to (not including) the next `:`, or `None` if there is no `:` left.
    pub(crate) fn next(&mut self) -> Option<Bytes> {
        let pos = self.rest.iter().position(|&b| b == b':')?;
        let field = self.rest.split_to(pos);
        // Drop the separator itself.
        let _ = self.rest.split_to(1);
        Some(field)
    }

    /// Takes exactly `len` bytes, which may contain `:`.
    pub(crate) fn take(&mut self, len: usize) -> Option<Bytes> {
        (self.rest.len() >= len).then(|| self.rest.split_to(len))
    }

    /// Consumes a single `:` separator.
    pub(crate) fn colon(&mut self) -> Option<()> {
        (self.rest.first() == Some(&b':')).then(|| {
            let _ = self.rest.split_to(1);
        })
    }

    /// Everything that is left: the last field, which runs to the end of the datagram.
    pub(crate) fn rest(self) -> Bytes {
        self.rest
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_grammar() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"007"), Some(7));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"000000000000000000001"), None, "21 digits");
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"+1"), None);
        assert_eq!(parse_u64(b" 1"), None);
        assert_eq!(parse_u64(b"1a"), None);
    }

    #[test]
    fn digits_and_put_agree() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            put_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            assert_eq!(digits(n), out.len());
        }
    }

    #[test]
    fn digits_in_range_matches_counting() {
        for (start, end) in [
            (0, 0),
            (0, 1),
            (0, 10),
            (5, 123),
            (9, 11),
            (99, 1001),
            (0, 100_000),
        ] {
            let counted: u64 = (start..end).map(|n| digits(n) as u64).sum();
            assert_eq!(digits_in_range(start, end), counted, "{start}..{end}");
        }
        assert_eq!(digits_in_range(u64::MAX - 1, u64::MAX), 20);
    }

    #[test]
    fn fields_split_and_keep_the_tail_whole() {
        let mut f = Fields::new(Bytes::from_static(b"a:bc::d:e"));
        assert_eq!(f.next().as_deref(), Some(&b"a"[..]));
        assert_eq!(f.next().as_deref(), Some(&b"bc"[..]));
        assert_eq!(f.next().as_deref(), Some(&b""[..]));
        assert_eq!(f.rest(), Bytes::from_static(b"d:e"));
    }
}
