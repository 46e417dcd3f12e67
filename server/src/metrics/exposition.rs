//! Which text format a scrape gets, by its `Accept` header: OpenMetrics when it asks for
//! it (as Prometheus does, ranking it first), else the Prometheus text format 0.0.4, which
//! older scrapers, `curl | promtool check metrics` and people read.
//!
//! The registry encodes OpenMetrics only, so the older format is made from it: the two
//! differ in a few lines per family, not in the samples.

/// The content type of OpenMetrics 1.0.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format.
pub(crate) const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A text format a scrape may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// The format `accept` prefers: OpenMetrics if it names it, with a quality above zero
    /// and no lower than that of `text/plain`; else the text format (also for no header
    /// and for `*/*`, as the Prometheus client libraries do).
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let ranges: Vec<(&str, f32)> = accept.split(',').filter_map(media_range).collect();
        let named = |kind: &str| {
            ranges
                .iter()
                .filter(|(range, _)| range.eq_ignore_ascii_case(kind))
                .map(|&(_, q)| q)
                .reduce(f32::max)
        };
        let Some(openmetrics) = named("application/openmetrics-text") else {
            return Format::Text;
        };
        // The most specific range that matches `text/plain` decides its quality.
        let text = named("text/plain")
            .or_else(|| named("text/*"))
            .or_else(|| named("*/*"))
            .unwrap_or(0.0);
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// Its content type.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Text => TEXT,
        }
    }
}

/// One media range of an `Accept` header and its quality (`q`, 1 if not given).
fn media_range(item: &str) -> Option<(&str, f32)> {
    let mut parts = item.split(';').map(str::trim);
    let range = parts.next().filter(|r| !r.is_empty())?;
    let q = parts
        .filter_map(|p| p.split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
        .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())?;
    Some((range, q.clamp(0.0, 1.0)))
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: `# EOF`, `# UNIT`,
/// exemplars and `_created` samples go; a counter's family is named with its `_total`
/// suffix, as its samples are; types the older format lacks become the nearest it has.
pub(crate) fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    let mut created = String::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Written once the `TYPE` line that follows says what the family is called.
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let Some((name, kind)) = rest.rsplit_once(' ') else {
                continue;
            };
            let (named, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_owned(), "gauge"),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some(text) = help.take().and_then(|h| h.strip_prefix(name)) {
                out.push_str(&format!("# HELP {named}{text}\n"));
            }
            out.push_str(&format!("# TYPE {named} {kind}\n"));
            created = format!("{name}_created");
        } else if line.starts_with('#') {
            // `# EOF`, `# UNIT`, and any other comment.
        } else {
            let sample = without_exemplar(line);
            let name = &sample[..sample.find(['{', ' ']).unwrap_or(sample.len())];
            if !sample.is_empty() && name != created {
                out.push_str(sample);
                out.push('\n');
            }
        }
    }
    out
}

/// A sample line up to its exemplar (` # {…} value`), if it has one. The label set is
/// skipped first, so that a `#` inside a quoted label value is left alone.
fn without_exemplar(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut i = 0;
    if let Some(open) = line.find('{') {
        i = open + 1;
        let mut quoted = false;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'}' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
    }
    match line.get(i..).and_then(|rest| rest.find(" # ")) {
        Some(at) => line[..i + at].trim_end(),
        None => line.trim_end(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for_first() {
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        let older_prometheus =
            "application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, format) in [
            (Some(prometheus), Format::OpenMetrics),
            (Some(older_prometheus), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; Q=1"),
                Format::OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.1"),
                Format::Text,
            ),
            (Some("text/plain"), Format::Text),
            (Some("*/*"), Format::Text),
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("application/json"), Format::Text),
            (
                Some("text/plain, application/openmetrics-text;q=0.9"),
                Format::Text,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (
                Some("application/openmetrics-text;q=0.5, text/*;q=0.4"),
                Format::OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;q=0.5, */*"),
                Format::Text,
            ),
            (Some("application/openmetrics-text;q=bad"), Format::Text),
        ] {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_drops_what_it_lacks() {
        let openmetrics = concat!(
            "# HELP mboard_requests Requests handled.\n",
            "# TYPE mboard_requests counter\n",
            "mboard_requests_total{type=\"get\",reply=\"0\"} 3\n",
            "mboard_requests_created 1700000000.0\n",
            "# HELP mboard_sessions Sessions open.\n",
            "# TYPE mboard_sessions gauge\n",
            "mboard_sessions 2\n",
            "# HELP mboard_fsync_seconds Fsync latency.\n",
            "# TYPE mboard_fsync_seconds histogram\n",
            "# UNIT mboard_fsync_seconds seconds\n",
            "mboard_fsync_seconds_sum 0.5\n",
            "mboard_fsync_seconds_count 2\n",
            "mboard_fsync_seconds_bucket{le=\"0.1\"} 1 # {trace=\"a # b\"} 0.05\n",
            "mboard_fsync_seconds_bucket{le=\"+Inf\"} 2\n",
            "# HELP mboard_build Build.\n",
            "# TYPE mboard_build info\n",
            "mboard_build_info{version=\"1\"} 1\n",
            "# EOF\n",
        );
        let expected = concat!(
            "# HELP mboard_requests_total Requests handled.\n",
            "# TYPE mboard_requests_total counter\n",
            "mboard_requests_total{type=\"get\",reply=\"0\"} 3\n",
            "# HELP mboard_sessions Sessions open.\n",
            "# TYPE mboard_sessions gauge\n",
            "mboard_sessions 2\n",
            "# HELP mboard_fsync_seconds Fsync latency.\n",
            "# TYPE mboard_fsync_seconds histogram\n",
            "mboard_fsync_seconds_sum 0.5\n",
            "mboard_fsync_seconds_count 2\n",
            "mboard_fsync_seconds_bucket{le=\"0.1\"} 1\n",
            "mboard_fsync_seconds_bucket{le=\"+Inf\"} 2\n",
            "# HELP mboard_build_info Build.\n",
            "# TYPE mboard_build_info gauge\n",
            "mboard_build_info{version=\"1\"} 1\n",
        );
        assert_eq!(to_text(openmetrics), expected);
    }

    #[test]
    fn a_hash_inside_a_label_value_is_not_an_exemplar() {
        assert_eq!(
            without_exemplar("x{a=\"# \\\" # \"} 1 # {e=\"1\"} 2"),
            "x{a=\"# \\\" # \"} 1"
        );
        assert_eq!(without_exemplar("x 1"), "x 1");
    }
}
