//! Progress off a terminal: plain lines every N steps or S seconds and at the end.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prism::report::{Progress, ProgressMode, ProgressOptions};

/// A sink the test can read back.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn plain(every_steps: u64, every: Duration) -> (Progress, Buf) {
    let buf = Buf::default();
    let p = Progress::with_sink(
        ProgressOptions {
            mode: ProgressMode::Plain,
            every_steps,
            every,
        },
        Box::new(buf.clone()),
    );
    (p, buf)
}

#[test]
fn plain_mode_prints_every_n_steps_and_at_the_end() {
    let (p, buf) = plain(5, Duration::from_secs(3600));
    assert!(!p.is_bars());
    let mut s = p.stage("align", 20);
    for i in 0..20 {
        s.set_metric("reward", 0.25 + i as f64 / 100.0);
        s.inc(1);
    }
    s.finish();
    s.finish(); // idempotent
    let lines = buf.lines();
    let steps: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        steps,
        ["1/20", "6/20", "11/20", "16/20", "20/20"],
        "{lines:#?}"
    );
    assert!(
        lines[0].starts_with("[align] step 1/20 (5%) reward=0.2500 elapsed "),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains(" eta "), "{}", lines[1]);
    assert!(
        lines[4].starts_with("[align] step 20/20 (100%) reward=0.4400 elapsed "),
        "{}",
        lines[4]
    );
    assert!(
        !lines[4].contains("eta"),
        "a finished stage shows no ETA: {}",
        lines[4]
    );
}

#[test]
fn plain_mode_prints_when_the_interval_has_passed() {
    let (p, buf) = plain(1_000, Duration::ZERO);
    let mut s = p.stage("sft", 3);
    s.set_step(1);
    s.set_step(2);
    s.set_step(3);
    s.finish(); // step 3 already printed: no duplicate line
    assert_eq!(buf.lines().len(), 3, "{:#?}", buf.lines());
}

#[test]
fn no_line_when_neither_steps_nor_time_are_due() {
    let (p, buf) = plain(100, Duration::from_secs(3600));
    let mut s = p.stage("rlvr", 1000);
    for step in 1..=50 {
        s.set_step(step);
    }
    assert_eq!(buf.lines().len(), 1, "only the first step is printed");
    s.set_step(10); // steps never go backwards
    s.finish();
    let lines = buf.lines();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].starts_with("[rlvr] step 50/1000 (5%)"),
        "{}",
        lines[1]
    );
}

#[test]
fn stages_share_one_display_and_keep_their_names() {
    let (p, buf) = plain(1, Duration::from_secs(3600));
    let mut a = p.stage("sft", 2);
    let mut b = p.stage("warmup", 2);
    a.inc(1);
    b.inc(2);
    a.inc(1);
    drop(a);
    b.finish();
    let lines = buf.lines();
    assert!(lines[0].starts_with("[sft] step 1/2"));
    assert!(lines[1].starts_with("[warmup] step 2/2"));
    assert!(lines[2].starts_with("[sft] step 2/2"));
}

#[test]
fn auto_mode_is_plain_off_a_terminal() {
    let buf = Buf::default();
    let p = Progress::with_sink(ProgressOptions::default(), Box::new(buf.clone()));
    assert_eq!(p.is_bars(), prism::report::progress::bars_wanted());
    if !std::io::stderr().is_terminal() {
        assert!(
            !p.is_bars(),
            "stderr is not a terminal: bars must be hidden"
        );
        let mut s = p.stage("eval", 1);
        s.inc(1);
        s.finish();
        assert_eq!(buf.lines().len(), 1);
    }
}

#[test]
fn bar_mode_prints_no_plain_lines() {
    let buf = Buf::default();
    let p = Progress::with_sink(
        ProgressOptions {
            mode: ProgressMode::Bars,
            ..ProgressOptions::default()
        },
        Box::new(buf.clone()),
    );
    assert!(p.is_bars());
    let mut s = p.stage("align", 4);
    s.set_metric("reward", 0.5);
    s.inc(4);
    s.finish();
    assert!(buf.lines().is_empty());
}

#[test]
fn bar_template_is_valid_indicatif() {
    assert!(indicatif::ProgressStyle::with_template(prism::report::progress::BAR_TEMPLATE).is_ok());
}
