//! Progress while a run trains: one indicatif bar per stage under a shared `MultiProgress`,
//! showing the stage name, step/total, a key metric the stage sets (e.g. `reward=0.512`) and
//! the ETA. When stderr is not a terminal or `CI` is set, bars are hidden and each stage prints a
//! plain line every N steps or S seconds (and at the end) instead, so logs still show progress.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal and `CI` is unset, plain lines otherwise.
    Auto,
    /// indicatif bars on stderr.
    Bars,
    /// Plain lines on the sink.
    Plain,
}

/// Options of [`Progress`].
#[derive(Debug, Clone)]
pub struct ProgressOptions {
    pub mode: ProgressMode,
    /// Plain mode: print at least every this many steps.
    pub every_steps: u64,
    /// Plain mode: print at least every this often.
    pub every: Duration,
}

impl Default for ProgressOptions {
    fn default() -> Self {
        ProgressOptions {
            mode: ProgressMode::Auto,
            every_steps: 10,
            every: Duration::from_secs(30),
        }
    }
}

/// indicatif template of a stage's bar: name, bar, step/total, key metric, ETA.
pub const BAR_TEMPLATE: &str =
    "{prefix:>8.bold} [{bar:32.cyan/blue}] {pos:>6}/{len:<6} {msg}  eta {eta}";

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// The progress display of a run; hands out one [`StageProgress`] per stage.
pub struct Progress {
    multi: Option<MultiProgress>,
    sink: Sink,
    opts: ProgressOptions,
}

/// The process-wide display the stages of `prism run` draw on (created on first use with the
/// default options: bars on a terminal, plain lines otherwise).
pub fn global() -> &'static Progress {
    static GLOBAL: std::sync::OnceLock<Progress> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(|| Progress::new(ProgressOptions::default()))
}

/// Whether `Auto` should draw bars: stderr is a terminal and `CI` is unset.
pub fn bars_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

impl Progress {
    /// Progress on stderr.
    pub fn new(opts: ProgressOptions) -> Progress {
        Self::with_sink(opts, Box::new(std::io::stderr()))
    }

    /// Progress whose plain lines go to `sink` (bars always draw on stderr).
    pub fn with_sink(opts: ProgressOptions, sink: Box<dyn Write + Send>) -> Progress {
        let bars = match opts.mode {
            ProgressMode::Auto => bars_wanted(),
            ProgressMode::Bars => true,
            ProgressMode::Plain => false,
        };
        let multi = bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            multi,
            sink: Arc::new(Mutex::new(sink)),
            opts,
        }
    }

    /// True when this display draws bars rather than plain lines.
    pub fn is_bars(&self) -> bool {
        self.multi.is_some()
    }

    /// Starts the display of a stage of `total` steps.
    pub fn stage(&self, name: &str, total: u64) -> StageProgress {
        let bar = self.multi.as_ref().map(|m| {
            let style = ProgressStyle::with_template(BAR_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let pb = m.add(ProgressBar::new(total));
            pb.set_style(style);
            pb.set_prefix(name.to_string());
            pb
        });
        StageProgress {
            name: name.to_string(),
            total,
            step: 0,
            metric: None,
            bar,
            sink: self.sink.clone(),
            every_steps: self.opts.every_steps.max(1),
            every: self.opts.every,
            started: Instant::now(),
            last_print: None,
            finished: false,
        }
    }
}

/// Progress of one stage.
pub struct StageProgress {
    name: String,
    total: u64,
    step: u64,
    metric: Option<(String, f64)>,
    bar: Option<ProgressBar>,
    sink: Sink,
    every_steps: u64,
    every: Duration,
    started: Instant,
    /// (step, time) of the last plain line.
    last_print: Option<(u64, Instant)>,
    finished: bool,
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl StageProgress {
    /// Sets the key metric shown next to the bar (e.g. `("reward", 0.51)`).
    pub fn set_metric(&mut self, name: &str, value: f64) {
        self.metric = Some((name.to_string(), value));
        if let Some(b) = &self.bar {
            b.set_message(format!("{name}={value:.4}"));
        }
    }

    /// Marks `step` steps done (absolute; may only grow).
    pub fn set_step(&mut self, step: u64) {
        self.step = self.step.max(step);
        if let Some(b) = &self.bar {
            b.set_position(self.step);
        } else {
            let due = match self.last_print {
                None => true,
                Some((s, t)) => self.step >= s + self.every_steps || t.elapsed() >= self.every,
            };
            if due {
                self.print_line();
            }
        }
    }

    /// Marks `n` more steps done.
    pub fn inc(&mut self, n: u64) {
        self.set_step(self.step + n);
    }

    /// Ends the stage: the bar stays on screen finished, or a last plain line is printed.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Some(b) = &self.bar {
            b.finish();
        } else if self.last_print.map(|(s, _)| s) != Some(self.step) {
            self.print_line();
        }
    }

    /// The plain-mode line for the current state.
    pub fn line(&self) -> String {
        let elapsed = self.started.elapsed();
        let pct = if self.total > 0 {
            100.0 * self.step as f64 / self.total as f64
        } else {
            100.0
        };
        let mut s = format!(
            "[{}] step {}/{} ({pct:.0}%)",
            self.name, self.step, self.total
        );
        if let Some((k, v)) = &self.metric {
            s.push_str(&format!(" {k}={v:.4}"));
        }
        s.push_str(&format!(" elapsed {}", fmt_duration(elapsed)));
        if self.step > 0 && self.step < self.total {
            let per = elapsed.as_secs_f64() / self.step as f64;
            let eta = Duration::from_secs_f64(per * (self.total - self.step) as f64);
            s.push_str(&format!(" eta {}", fmt_duration(eta)));
        }
        s
    }

    fn print_line(&mut self) {
        let line = self.line();
        if let Ok(mut w) = self.sink.lock() {
            // Progress output is best effort: a closed stderr must not stop training.
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
        self.last_print = Some((self.step, Instant::now()));
    }
}

impl Drop for StageProgress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar
            && !self.finished
        {
            b.abandon();
        }
    }
}
