//! The progress bar on stderr while a benchmark runs: hidden when stderr is not a terminal
//! or the report goes out as JSON. A ticker task reads the shared operation counter a few
//! times a second, so the sessions' hot loop only bumps an atomic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// A progress bar, possibly hidden.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

/// What the bar measures in the current phase.
pub enum Goal {
    /// Operations, out of a known total.
    Count(u64),
    /// Time, until a deadline (the count is shown as a rate).
    Until { start: Instant, end: Instant },
}

impl Progress {
    pub fn new(visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            bar: ProgressBar::with_draw_target(None, target),
        }
    }

    /// Starts a phase called `name`; returns the ticker that redraws the bar from `done`
    /// until it is aborted.
    pub fn phase(&self, name: &str, goal: Goal, done: Arc<AtomicU64>) -> Ticker {
        let template = match goal {
            Goal::Count(_) => "{prefix:>12} [{bar:40}] {pos}/{len} {msg}",
            Goal::Until { .. } => "{prefix:>12} [{bar:40}] {msg}",
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_prefix(name.to_string());
        self.bar.reset();
        let bar = self.bar.clone();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            loop {
                draw(&bar, &goal, &done, started);
                tokio::time::sleep(TICK).await;
            }
        });
        Ticker { handle }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn draw(bar: &ProgressBar, goal: &Goal, done: &AtomicU64, started: Instant) {
    let count = done.load(Ordering::Relaxed);
    let rate = count as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let rate = format!("{} ops/s", group_digits(rate.round() as u64));
    match goal {
        Goal::Count(total) => {
            bar.set_length(*total);
            bar.set_position(count);
            bar.set_message(rate);
        }
        Goal::Until { start, end } => {
            let total = end.saturating_duration_since(*start);
            let now = start.elapsed().min(total);
            bar.set_length(millis(total));
            bar.set_position(millis(now));
            let (now, total) = (now.as_secs_f64(), total.as_secs_f64());
            bar.set_message(format!("{now:.1}/{total:.1} s  {rate}"));
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Redraws the bar until stopped (or dropped).
pub struct Ticker {
    handle: JoinHandle<()>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// `1234567` as `1,234,567`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
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
    fn digits_are_grouped_by_thousands() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1234567), "1,234,567");
    }
}
