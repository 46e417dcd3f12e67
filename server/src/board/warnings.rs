//! Repeated identical warnings, one line per interval: the rest are counted and the count
//! is reported with the next line (`… 19,998 more in the last 10 s`).
//!
//! A full disk refuses every publish; without this, 20,000 refusals are 20,000 identical
//! lines. Sans-IO: callers pass the time and log what [`Warnings::admit`] lets through.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one warning is logged at most, unless told otherwise.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// Keys remembered at once; past it, those whose interval has ended are forgotten.
const MAX_KEYS: usize = 256;

/// When a warning was last logged, and how many were kept quiet since.
#[derive(Debug, Clone, Copy)]
struct Slot {
    logged: Instant,
    quiet: u64,
}

/// Identical warnings (by key), at most one line per interval each.
#[derive(Debug)]
pub(crate) struct Warnings {
    interval: Duration,
    slots: Mutex<HashMap<String, Slot>>,
}

/// A line to log: the warning, and how many identical ones were kept quiet before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) quiet: u64,
}

impl Line {
    /// `""`, or `" (… 19,998 more in the last 10 s)"` to append to the line.
    pub(crate) fn suffix(&self, interval: Duration) -> String {
        if self.quiet == 0 {
            String::new()
        } else {
            format!(
                " (… {} more in the last {} s)",
                thousands(self.quiet),
                interval.as_secs()
            )
        }
    }
}

impl Default for Warnings {
    fn default() -> Self {
        Warnings::new(INTERVAL)
    }
}

impl Warnings {
    pub(crate) fn new(interval: Duration) -> Self {
        Warnings {
            interval,
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // Counts only: a panic elsewhere leaves nothing inconsistent.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the warning `key` is logged at `now`: `Some` (with the count kept quiet
    /// since it was last logged) once per interval, `None` otherwise.
    pub(crate) fn admit(&self, key: &str, now: Instant) -> Option<Line> {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(key) {
            if now.saturating_duration_since(slot.logged) < self.interval {
                slot.quiet += 1;
                return None;
            }
            let line = Line { quiet: slot.quiet };
            *slot = Slot {
                logged: now,
                quiet: 0,
            };
            return Some(line);
        }
        if slots.len() >= MAX_KEYS {
            let interval = self.interval;
            slots.retain(|_, s| now.saturating_duration_since(s.logged) < interval);
        }
        slots.insert(
            key.to_owned(),
            Slot {
                logged: now,
                quiet: 0,
            },
        );
        Some(Line { quiet: 0 })
    }

    /// The warnings kept quiet in intervals that have ended by `now` and were not followed
    /// by another line: their keys and counts, to report once. They are forgotten.
    pub(crate) fn flush(&self, now: Instant) -> Vec<(String, u64)> {
        let interval = self.interval;
        let mut due = Vec::new();
        self.slots().retain(|key, slot| {
            if now.saturating_duration_since(slot.logged) < interval {
                return true;
            }
            if slot.quiet > 0 {
                due.push((key.clone(), slot.quiet));
            }
            false
        });
        due
    }
}

/// `19998` as `19,998`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let w = Warnings::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.admit("disk full", t0), Some(Line { quiet: 0 }));
        for i in 1..=19_998u64 {
            assert_eq!(
                w.admit("disk full", t0 + Duration::from_micros(i * 50)),
                None
            );
        }
        // Another warning is not held back by the first.
        assert_eq!(w.admit("other", t0), Some(Line { quiet: 0 }));
        let line = w
            .admit("disk full", t0 + Duration::from_secs(10))
            .expect("a new interval");
        assert_eq!(line.quiet, 19_998);
        assert_eq!(
            line.suffix(w.interval()),
            " (… 19,998 more in the last 10 s)"
        );
        assert_eq!(Line { quiet: 0 }.suffix(w.interval()), "");
    }

    #[test]
    fn counts_left_when_the_warnings_stop_are_flushed_once() {
        let w = Warnings::new(Duration::from_secs(10));
        let t0 = Instant::now();
        w.admit("a", t0);
        w.admit("a", t0 + Duration::from_secs(1));
        w.admit("a", t0 + Duration::from_secs(2));
        w.admit("b", t0);
        assert!(w.flush(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(
            w.flush(t0 + Duration::from_secs(10)),
            vec![("a".to_owned(), 2)]
        );
        assert!(w.flush(t0 + Duration::from_secs(30)).is_empty());
        // Forgotten: the next one is logged at once.
        assert!(w.admit("a", t0 + Duration::from_secs(31)).is_some());
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(19_998), "19,998");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_table_stays_bounded() {
        let w = Warnings::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..10 * MAX_KEYS {
            let at = t0 + Duration::from_secs(i as u64 / MAX_KEYS as u64 * 2);
            w.admit(&format!("key {i}"), at);
        }
        assert!(w.slots().len() <= MAX_KEYS);
    }
}
