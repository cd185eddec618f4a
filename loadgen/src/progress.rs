//! Live progress while a crowd runs: an indicatif bar (buyers done, rate,
//! outcome counts) on a terminal, or a plain line every second when stderr
//! is a log file, so scripts and CI still show the sale moving.

use std::{
    io::IsTerminal,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// The bar's layout (indicatif template).
const TEMPLATE: &str = "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} buyers · {msg}";

/// A running progress display; [`Progress::finish`] stops it.
pub struct Progress {
    bar: Option<ProgressBar>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Shows progress over `total` buyers unless `enabled` is false.
    pub fn start(total: u64, stats: Arc<Stats>, enabled: bool) -> Self {
        let stop = CancellationToken::new();
        if !enabled {
            return Self {
                bar: None,
                stop,
                task: None,
            };
        }
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let b =
                ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(8));
            b.set_style(
                ProgressStyle::with_template(TEMPLATE)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b
        });
        let (b2, s2) = (bar.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut last_buys = 0u64;
            let mut last_t = start;
            let period = if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            };
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = s2.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = tokio::time::Instant::now();
                let buys = stats.buys.load(Ordering::Relaxed);
                let dt = (now - last_t).as_secs_f64().max(1e-3);
                let rate = (buys - last_buys) as f64 / dt;
                last_buys = buys;
                last_t = now;
                let done = stats.buyers_done.load(Ordering::Relaxed);
                let line = format!("{} · {:.0} buys/s", stats.summary_line(), rate);
                match &b2 {
                    Some(b) => {
                        b.set_position(done);
                        b.set_message(line);
                    }
                    None => eprintln!(
                        "[{:>6.1}s] {done}/{total} buyers · {line}",
                        (now - start).as_secs_f64()
                    ),
                }
            }
        });
        Self {
            bar,
            stop,
            task: Some(task),
        }
    }

    /// Stops the display and leaves the bar's last state on screen.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }

    #[tokio::test]
    async fn a_disabled_display_starts_and_stops() {
        let p = Progress::start(10, Arc::new(Stats::new()), false);
        p.finish().await;
    }
}
