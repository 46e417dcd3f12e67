//! How the CLI shows messages: one line each for people, JSON for scripts.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use mboard_protocol::{Entry, MessageId};

/// Escapes `text` so that it prints as one line and shows every byte that is not printable.
///
/// Valid UTF-8 passes through; `\n` `\r` `\t` and `\\` become two-character escapes, other
/// control characters `\u{..}`, and bytes that are not UTF-8 `\xHH`. So do the bidirectional
/// controls and the line and paragraph separators, which are not control characters but
/// can make a line display as something else (a reversed tail, a line break).
pub(crate) fn one_line(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    escape_units(text, |unit| out.push_str(unit));
    out
}

/// Whether `c` must be shown escaped in a one-line view.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// Calls `f` with each unit of the escaped text: a character, or a whole escape, so that
/// a line cut to a width never ends in half an escape.
fn escape_units(text: &[u8], mut f: impl FnMut(&str)) {
    let mut buf = String::new();
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            buf.clear();
            match c {
                '\n' => buf.push_str("\\n"),
                '\r' => buf.push_str("\\r"),
                '\t' => buf.push_str("\\t"),
                '\\' => buf.push_str("\\\\"),
                c if needs_escape(c) => {
                    let _ = write!(buf, "\\u{{{:x}}}", c as u32);
                }
                c => buf.push(c),
            }
            f(&buf);
        }
        for b in chunk.invalid() {
            buf.clear();
            let _ = write!(buf, "\\x{b:02x}");
            f(&buf);
        }
    }
}

/// Columns `c` takes on a terminal: 0 for combining marks and zero-width characters, 2
/// for East Asian wide characters and emoji, 1 otherwise. The main ranges of Unicode's
/// East Asian Width without its tables: enough to cut a line without overflowing it.
pub(crate) fn char_width(c: char) -> usize {
    match c as u32 {
        0x0300..=0x036f
        | 0x1ab0..=0x1aff
        | 0x1dc0..=0x1dff
        | 0x200b..=0x200f
        | 0x20d0..=0x20ff
        | 0xfe00..=0xfe0f
        | 0xfe20..=0xfe2f => 0,
        0x1100..=0x115f
        | 0x2e80..=0x303e
        | 0x3041..=0x33ff
        | 0x3400..=0x4dbf
        | 0x4e00..=0x9fff
        | 0xa000..=0xa4cf
        | 0xac00..=0xd7a3
        | 0xf900..=0xfaff
        | 0xfe30..=0xfe4f
        | 0xff00..=0xff60
        | 0xffe0..=0xffe6
        | 0x1f300..=0x1f64f
        | 0x1f900..=0x1f9ff
        | 0x20000..=0x3fffd => 2,
        _ => 1,
    }
}

/// Columns `s` takes on a terminal.
pub(crate) fn str_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// [`line`] for a terminal `width` columns wide: a line that does not fit is cut, marked
/// with `…` and ended with the text's size, `[5000 bytes]`, so every message stays on one
/// screen line. Pipes get [`line`], whole.
pub(crate) fn line_fitted(id: MessageId, entry: &Entry, width: usize) -> String {
    // Only the text is cut: id, time and address are what tell messages apart.
    let mut line = line_prefix(id, entry);
    let mut used = str_width(&line);
    let tail = format!("… [{} bytes]", entry.text.len());
    let budget = width.saturating_sub(str_width(&tail));
    let mut units = Vec::new();
    escape_units(&entry.text, |u| units.push(u.to_string()));
    let total: usize = units.iter().map(|u| str_width(u)).sum();
    if used + total <= width {
        line.extend(units);
        return line;
    }
    for unit in units {
        let w = str_width(&unit);
        if used + w > budget {
            break;
        }
        used += w;
        line.push_str(&unit);
    }
    line.push_str(&tail);
    line
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
pub(crate) fn rfc3339(entry: &Entry) -> String {
    humantime::format_rfc3339_micros(entry.time.to_system_time()).to_string()
}

fn ip(addr: SocketAddr) -> String {
    addr.ip().to_string()
}

/// `#<id>  <time>  <ip>:<port>  <text>`: one line per message, whatever the text holds.
pub(crate) fn line(id: MessageId, entry: &Entry) -> String {
    let mut line = line_prefix(id, entry);
    line.push_str(&one_line(&entry.text));
    line
}

fn line_prefix(id: MessageId, entry: &Entry) -> String {
    format!("#{id}  {}  {}  ", rfc3339(entry), entry.from)
}

/// `{"id", "time", "ip", "port", "text"}` with the text decoded as UTF-8, lossily.
pub(crate) fn json(id: MessageId, entry: &Entry) -> String {
    format!(
        "{{\"id\":{id},\"time\":{},\"ip\":{},\"port\":{},\"text\":{}}}",
        json_string(&rfc3339(entry)),
        json_string(&ip(entry.from)),
        entry.from.port(),
        json_string(&String::from_utf8_lossy(&entry.text)),
    )
}

/// A progress bar for standard error, drawn over itself:
/// `\r[#####-----]  52%  8.3/16.0 MiB  2.1 MiB/s  4s left` and an erase to the line's end.
///
/// The rate is the average since the transfer began, `elapsed` ago; it and the time left
/// are left out until there is something to average.
pub(crate) fn progress_bar(done: u64, total: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let total = total.max(1);
    let done = done.min(total);
    let filled = (done * WIDTH / total) as usize;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut bar = format!(
        "\r[{}{}] {:3}%  {:.1}/{:.1} MiB",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        done * 100 / total,
        mib(done),
        mib(total)
    );
    let secs = elapsed.as_secs_f64();
    if done > 0 && secs >= 0.1 {
        let rate = done as f64 / secs;
        let left = (total - done) as f64 / rate;
        let _ = write!(bar, "  {}/s  {} left", human_bytes(rate), human_secs(left));
    }
    bar.push_str("\x1b[K");
    bar
}

/// What erases a progress bar: back to the line's start, erase it.
pub(crate) const CLEAR_LINE: &str = "\r\x1b[K";

/// `512 B`, `3.2 KiB`, `8.3 MiB`, `1.1 GiB`.
fn human_bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut n = n;
    let mut unit = 0;
    while n >= 1024.0 && unit + 1 < units.len() {
        n /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n:.0} B")
    } else {
        format!("{n:.1} {}", units[unit])
    }
}

/// `4s`, `2m05s`, `1h20m`, rounded up (a transfer is never "0s left" before it ends).
fn human_secs(secs: f64) -> String {
    let s = secs.ceil().min(359_999.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
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
    fn progress_bar_fills_up_and_shows_rate_and_time_left() {
        let none = Duration::ZERO;
        assert_eq!(
            progress_bar(0, 4 << 20, none),
            format!("\r[{}]   0%  0.0/4.0 MiB\x1b[K", "-".repeat(30))
        );
        assert_eq!(
            progress_bar(2 << 20, 4 << 20, Duration::from_secs(4)),
            format!(
                "\r[{}{}]  50%  2.0/4.0 MiB  512.0 KiB/s  4s left\x1b[K",
                "#".repeat(15),
                "-".repeat(15)
            )
        );
        assert_eq!(
            progress_bar(4 << 20, 4 << 20, Duration::from_secs(2)),
            format!(
                "\r[{}] 100%  4.0/4.0 MiB  2.0 MiB/s  0s left\x1b[K",
                "#".repeat(30)
            )
        );
        assert!(progress_bar(1 << 20, 100 << 20, Duration::from_secs(1)).contains("1m39s left"));
        assert!(progress_bar(1, 1 << 30, Duration::from_secs(1)).contains("1 B/s  99h59m left"));
    }

    #[test]
    fn bidi_and_separator_controls_are_escaped() {
        for (c, escaped) in [
            ('\u{202a}', "\\u{202a}"),
            ('\u{202e}', "\\u{202e}"),
            ('\u{2066}', "\\u{2066}"),
            ('\u{2069}', "\\u{2069}"),
            ('\u{2028}', "\\u{2028}"),
            ('\u{2029}', "\\u{2029}"),
        ] {
            let text = format!("a{c}b");
            assert_eq!(one_line(text.as_bytes()), format!("a{escaped}b"));
        }
        assert_eq!(one_line("\u{2067}".as_bytes()), "\\u{2067}");
        assert_eq!(
            one_line("\u{2065}é".as_bytes()),
            "\u{2065}é",
            "neighbours pass"
        );
    }

    #[test]
    fn widths_count_wide_and_zero_width_characters() {
        assert_eq!(str_width("abc"), 3);
        assert_eq!(str_width("日本"), 4);
        assert_eq!(
            str_width("e\u{301}"),
            1,
            "a combining accent takes no column"
        );
        assert_eq!(str_width("🙂"), 2);
    }

    #[test]
    fn lines_are_cut_to_the_terminal_with_a_marker_and_the_size() {
        let prefix = "#7  2025-11-21T16:45:00.123456Z  127.0.0.1:40154  ";
        let short = entry(b"fits");
        assert_eq!(
            line_fitted(MessageId(7), &short, 80),
            format!("{prefix}fits")
        );
        let long = Entry {
            text: Bytes::from(vec![b'x'; 500]),
            ..entry(b"")
        };
        let cut = line_fitted(MessageId(7), &long, 80);
        assert_eq!(str_width(&cut), 80, "{cut}");
        assert!(cut.starts_with(&format!("{prefix}xxx")), "{cut}");
        assert!(cut.ends_with("x… [500 bytes]"), "{cut}");
        // Escapes are never cut in half.
        let escapes = Entry {
            text: Bytes::from("\n".repeat(100)),
            ..entry(b"")
        };
        let cut = line_fitted(MessageId(7), &escapes, 81);
        assert!(cut.ends_with("\\n… [100 bytes]"), "{cut}");
        // Wide characters count twice.
        let wide = Entry {
            text: Bytes::from("日".repeat(100)),
            ..entry(b"")
        };
        let cut = line_fitted(MessageId(7), &wide, 80);
        assert!(str_width(&cut) <= 80, "{cut}");
        // A terminal too narrow for the rest still gets all of it, and the marker.
        let cut = line_fitted(MessageId(7), &long, 20);
        assert_eq!(cut, format!("{prefix}… [500 bytes]"));
    }
}
