//! When the progress bar is drawn, and that it is gone before anything else is written.

use std::time::{Duration, Instant};

use crate::output::{CLEAR_LINE, progress_bar};

/// A slow transfer's bar is redrawn this often even when the percentage stands still, so
/// that its rate and time left stay current.
const REFRESH: Duration = Duration::from_secs(1);

/// The state of the bar on standard error.
#[derive(Debug, Default)]
pub(crate) struct Bar {
    /// When the transfer being shown began.
    begun: Option<Instant>,
    shown: Option<u64>,
    drawn_at: Option<Instant>,
    visible: bool,
}

impl Bar {
    /// What to write for `done` of `total` bytes at `now`, if anything: a redraw when the
    /// percentage moves (one write per block would cost a system call per datagram), or
    /// the erasure of the bar once the transfer is complete.
    pub(crate) fn update(&mut self, done: u64, total: u64, now: Instant) -> Option<String> {
        let begun = *self.begun.get_or_insert(now);
        if done >= total {
            *self = Bar::default();
            return Some(CLEAR_LINE.to_string());
        }
        let percent = done * 100 / total.max(1);
        let due = self
            .drawn_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REFRESH);
        if self.shown == Some(percent) && !due {
            return None;
        }
        self.shown = Some(percent);
        self.drawn_at = Some(now);
        self.visible = true;
        Some(progress_bar(
            done,
            total,
            now.saturating_duration_since(begun),
        ))
    }

    /// What erases the bar, if one is showing: written before an error message, so that
    /// the message does not land on the bar's line.
    pub(crate) fn clear(&mut self) -> Option<&'static str> {
        std::mem::take(&mut self.visible).then_some(CLEAR_LINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn redrawn_when_the_percentage_moves_or_a_second_passes() {
        let t0 = Instant::now();
        let mut bar = Bar::default();
        assert!(bar.update(0, 100 * MB, t0).is_some(), "drawn at once");
        assert!(bar.update(MB / 2, 100 * MB, t0).is_none(), "still 0%");
        let drawn = bar.update(MB, 100 * MB, t0 + Duration::from_millis(500));
        assert!(drawn.is_some_and(|d| d.contains("  1%") && d.contains("left")));
        assert!(
            bar.update(MB, 100 * MB, t0 + Duration::from_millis(900))
                .is_none()
        );
        assert!(
            bar.update(MB, 100 * MB, t0 + Duration::from_millis(1_600))
                .is_some()
        );
    }

    #[test]
    fn cleared_when_done_and_before_an_error() {
        let t0 = Instant::now();
        let mut bar = Bar::default();
        assert_eq!(bar.clear(), None, "nothing to clear yet");
        bar.update(MB, 4 * MB, t0);
        assert_eq!(bar.clear(), Some(CLEAR_LINE));
        assert_eq!(bar.clear(), None, "once");
        bar.update(MB, 4 * MB, t0);
        assert_eq!(bar.update(4 * MB, 4 * MB, t0).as_deref(), Some(CLEAR_LINE));
        assert_eq!(bar.clear(), None, "already gone");
        // The next transfer starts its own clock.
        assert!(bar.update(0, 4 * MB, t0 + Duration::from_secs(9)).is_some());
    }
}
