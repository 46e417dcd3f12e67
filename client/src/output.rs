//! How the CLI shows messages: one line each for people, JSON for scripts.

use std::fmt::Write;
use std::net::SocketAddr;

use mboard_protocol::{Entry, MessageId};

/// Escapes `text` so that it prints as one line and shows every byte that is not printable.
///
/// Valid UTF-8 passes through; `\n` `\r` `\t` and `\\` become two-character escapes, other
/// control characters `\u{..}`, and bytes that are not UTF-8 `\xHH`.
pub fn one_line(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A JSON string literal of `s`.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The publishing time as RFC 3339 in UTC, to the microsecond.
pub fn rfc3339(entry: &Entry) -> String {
    humantime::format_rfc3339_micros(entry.time.to_system_time()).to_string()
}

fn ip(addr: SocketAddr) -> String {
    addr.ip().to_string()
}

/// `#<id>  <time>  <ip>:<port>  <text>`: one line per message, whatever the text holds.
pub fn line(id: MessageId, entry: &Entry) -> String {
    format!(
        "#{id}  {}  {}  {}",
        rfc3339(entry),
        entry.from,
        one_line(&entry.text)
    )
}

/// `{"id", "time", "ip", "port", "text"}` with the text decoded as UTF-8, lossily.
pub fn json(id: MessageId, entry: &Entry) -> String {
    format!(
        "{{\"id\":{id},\"time\":{},\"ip\":{},\"port\":{},\"text\":{}}}",
        json_string(&rfc3339(entry)),
        json_string(&ip(entry.from)),
        entry.from.port(),
        json_string(&String::from_utf8_lossy(&entry.text)),
    )
}

/// A progress bar for standard error: `\r[#####-----]  52%  8.3/16.0 MiB`.
pub fn progress_bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let total = total.max(1);
    let filled = (done.min(total) * WIDTH / total) as usize;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    format!(
        "\r[{}{}] {:3}%  {:.1}/{:.1} MiB",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        done.min(total) * 100 / total,
        mib(done),
        mib(total)
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use mboard_protocol::Timestamp;

    use super::*;

    fn entry(text: &'static [u8]) -> Entry {
        Entry {
            time: Timestamp(1_763_743_500_123_456),
            from: "127.0.0.1:40154".parse().expect("addr"),
            text: Bytes::from_static(text),
        }
    }

    #[test]
    fn one_line_escapes_what_would_break_the_line() {
        assert_eq!(one_line(b"plain: text"), "plain: text");
        assert_eq!(
            one_line(b"two\nlines\r\tand \\ back"),
            "two\\nlines\\r\\tand \\\\ back"
        );
        assert_eq!(one_line(b"bell\x07nul\x00"), "bell\\u{7}nul\\u{0}");
        assert_eq!(one_line(b"caf\xc3\xa9 \xff\xfe"), "caf\u{e9} \\xff\\xfe");
        assert_eq!(one_line("\u{85}".as_bytes()), "\\u{85}", "C1 controls too");
    }

    #[test]
    fn lines_and_json_show_every_field() {
        let e = entry(b"a:b\nc");
        assert_eq!(
            line(MessageId(7), &e),
            "#7  2025-11-21T16:45:00.123456Z  127.0.0.1:40154  a:b\\nc"
        );
        assert_eq!(
            json(MessageId(7), &e),
            r#"{"id":7,"time":"2025-11-21T16:45:00.123456Z","ip":"127.0.0.1","port":40154,"text":"a:b\nc"}"#
        );
        let v6 = Entry {
            from: "[::1]:9".parse().expect("addr"),
            ..entry(b"\"q\" \x01 \xff")
        };
        assert_eq!(
            line(MessageId(1), &v6),
            "#1  2025-11-21T16:45:00.123456Z  [::1]:9  \"q\" \\u{1} \\xff"
        );
        assert_eq!(
            json(MessageId(1), &v6),
            "{\"id\":1,\"time\":\"2025-11-21T16:45:00.123456Z\",\"ip\":\"::1\",\"port\":9,\"text\":\"\\\"q\\\" \\u0001 \u{fffd}\"}"
        );
    }

    #[test]
    fn progress_bar_fills_up() {
        assert_eq!(
            progress_bar(0, 4 << 20),
            format!("\r[{}]   0%  0.0/4.0 MiB", "-".repeat(30))
        );
        assert_eq!(
            progress_bar(2 << 20, 4 << 20),
            format!("\r[{}{}]  50%  2.0/4.0 MiB", "#".repeat(15), "-".repeat(15))
        );
        assert_eq!(
            progress_bar(4 << 20, 4 << 20),
            format!("\r[{}] 100%  4.0/4.0 MiB", "#".repeat(30))
        );
    }
}
