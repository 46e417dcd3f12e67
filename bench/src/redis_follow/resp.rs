//! The entry ids in an `XREAD` reply, read off the wire as it arrives, without building the
//! reply.
//!
//! A thousand followers read every entry the publishers add. Through the redis crate each
//! reply became a tree of values (five allocations an entry) parsed by a general parser,
//! and that, not Redis, was what limited the followers: on this machine the load
//! generator read under 350,000 entries a second between them with Redis mostly idle.
//! mboard's followers read their replies the same way for the same reason
//! (`follow/ids.rs`). Only RESP2, which a connection speaks until it says `HELLO 3`.

use super::entry::EntryId;

/// Nesting of an `XREAD` reply: streams, a stream (name, entries), entries, an entry
/// (id, fields), its fields.
const MAX_DEPTH: usize = 5;

/// Where an entry's id sits: the first element of an array at this depth.
const ENTRY_DEPTH: usize = 4;

/// Redis refuses longer strings by default (`proto-max-bulk-len`).
const MAX_BULK: u64 = 512 << 20;

/// One `XREAD` reply read so far.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    /// For each array open, elements still to come and the index of the next.
    open: Vec<(u64, u64)>,
}

impl Reply {
    /// Reads the elements that `buf` holds whole, from its start, calling `each` with the
    /// key of every entry id among them. Returns how many bytes were read (the caller drops
    /// them and calls again with more) and whether the reply is complete; `Err` if it is
    /// not an `XREAD` reply (an error reply's text, or what was wrong).
    pub(crate) fn feed(
        &mut self,
        buf: &[u8],
        mut each: impl FnMut(u64),
    ) -> Result<(usize, bool), String> {
        let mut at = 0;
        loop {
            let Some(len) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok((at, false));
            };
            let line = &buf[at..at + len];
            let after_line = at + len + 2;
            let (&kind, digits) = line.split_first().ok_or("an empty RESP line")?;
            let top = self.open.is_empty();
            match kind {
                b'*' => {
                    if top && digits == b"-1" {
                        // The block ran out with nothing new.
                        return Ok((after_line, true));
                    }
                    if top && digits == b"0" {
                        return Ok((after_line, true));
                    }
                    let n = count(digits)?;
                    if self.open.len() == MAX_DEPTH {
                        return Err("a RESP reply nested deeper than XREAD's".into());
                    }
                    at = after_line;
                    if n == 0 {
                        if self.done_one() {
                            return Ok((at, true));
                        }
                    } else {
                        self.open.push((n, 0));
                    }
                }
                b'$' => {
                    if top && digits == b"-1" {
                        return Ok((after_line, true));
                    }
                    if top {
                        return Err(format!("XREAD answered {:?}", text(line)));
                    }
                    let n = count(digits)?;
                    if n > MAX_BULK {
                        return Err(format!("a RESP string of {n} bytes"));
                    }
                    let end = after_line + n as usize;
                    if buf.len() < end + 2 {
                        return Ok((at, false));
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err("a RESP string longer than its length".into());
                    }
                    if self.at_entry_id() {
                        let id = &buf[after_line..end];
                        let key = EntryId::parse(id)
                            .and_then(EntryId::key)
                            .ok_or_else(|| format!("entry id {:?}", text(id)))?;
                        each(key);
                    }
                    at = end + 2;
                    if self.done_one() {
                        return Ok((at, true));
                    }
                }
                b'-' => return Err(text(digits)),
                b'+' | b':' if !top => {
                    at = after_line;
                    if self.done_one() {
                        return Ok((at, true));
                    }
                }
                _ => return Err(format!("XREAD answered {:?}", text(line))),
            }
        }
    }

    /// Whether the element starting now is the first of an entry.
    fn at_entry_id(&self) -> bool {
        self.open.len() == ENTRY_DEPTH && self.open.last().is_some_and(|&(_, index)| index == 0)
    }

    /// Counts one element of the innermost array done, closing the arrays it completes;
    /// whether the whole reply is.
    fn done_one(&mut self) -> bool {
        while let Some((left, index)) = self.open.last_mut() {
            *left -= 1;
            *index += 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }
}

fn count(digits: &[u8]) -> Result<u64, String> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!("a RESP length {:?}", text(digits)));
    }
    text(digits)
        .parse()
        .map_err(|_| format!("a RESP length {:?}", text(digits)))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> u64 {
        EntryId::parse(id.as_bytes())
            .and_then(EntryId::key)
            .expect("packable")
    }

    /// What Redis sends for `XREAD … STREAMS s <last>` with these new entries.
    fn reply(ids: &[&str]) -> Vec<u8> {
        let mut r = format!("*1\r\n*2\r\n$1\r\ns\r\n*{}\r\n", ids.len());
        for id in ids {
            r += &format!(
                "*2\r\n${}\r\n{id}\r\n*2\r\n$1\r\nt\r\n$16\r\naa\r\naaaa:aaaaaaa\r\n",
                id.len()
            );
        }
        r.into_bytes()
    }

    /// Feeds `wire` in pieces of `step` bytes, as reads would bring it; the keys seen, and
    /// the bytes left after the reply.
    fn walk(wire: &[u8], step: usize) -> Result<(Vec<u64>, usize), String> {
        let (mut r, mut keys, mut buf) = (Reply::default(), Vec::new(), Vec::new());
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            let (used, done) = r.feed(&buf, |k| keys.push(k))?;
            buf.drain(..used);
            if done {
                return Ok((keys, buf.len()));
            }
        }
        Err("incomplete".into())
    }

    #[test]
    fn reads_the_ids_however_the_reply_is_cut() {
        let ids = ["7-0", "7-1", "1795285846905-12"];
        let wire = reply(&ids);
        let want: Vec<u64> = ids.iter().map(|id| key(id)).collect();
        for step in [1, 2, 3, 7, 16, wire.len()] {
            assert_eq!(walk(&wire, step), Ok((want.clone(), 0)), "step {step}");
        }
        // Bytes after the reply are left for the next.
        let mut two = wire.clone();
        two.extend_from_slice(b"*-1\r\n");
        assert_eq!(walk(&two, two.len()), Ok((want, 5)));
    }

    #[test]
    fn a_block_that_ran_out_is_a_reply_without_entries() {
        for nothing in [&b"*-1\r\n"[..], b"$-1\r\n", b"*0\r\n"] {
            assert_eq!(walk(nothing, 1), Ok((vec![], 0)));
        }
        // A stream with no entries (not sent by Redis, but well formed).
        assert_eq!(walk(&reply(&[]), 1), Ok((vec![], 0)));
    }

    #[test]
    fn refuses_what_is_not_an_xread_reply() {
        assert_eq!(
            walk(b"-WRONGTYPE Operation against a key\r\n", 4),
            Err("WRONGTYPE Operation against a key".into())
        );
        for bad in [
            &b"+OK\r\n"[..],
            b":3\r\n",
            b"$3\r\nabc\r\n",
            b"\r\n",
            b"*x\r\n",
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$5\r\nseven\r\n*0\r\n",
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n7-0XX\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n",
            b"*1\r\n$999999999999\r\n",
            b"*1\r\n?\r\n",
        ] {
            assert!(walk(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
