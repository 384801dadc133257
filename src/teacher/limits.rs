//! Request and token rate limits over a sliding window (what providers enforce: no more than N
//! in any window), as an async gate every attempt passes before it is sent.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A sliding-window limit on events and on a weighted amount (tokens) per `window`.
/// A limit of 0 is unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    max_events: u32,
    max_amount: u64,
    /// (ticket, start time, amount) of each admitted event still inside the window, oldest first.
    log: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    next_ticket: u64,
    events: VecDeque<(u64, Instant, u64)>,
}

impl RateLimiter {
    pub fn new(max_events: u32, max_amount: u64, window: Duration) -> RateLimiter {
        RateLimiter {
            window,
            max_events,
            max_amount,
            log: Mutex::new(Log::default()),
        }
    }

    /// Per-minute limits (the config's `requests_per_minute`, `tokens_per_minute`).
    pub fn per_minute(requests: u32, tokens: u64) -> RateLimiter {
        RateLimiter::new(requests, tokens, Duration::from_secs(60))
    }

    /// Waits until one more event of `amount` fits in the window, then records it. An amount
    /// larger than the whole budget is admitted once the window is empty (it could never fit
    /// otherwise). Returns a ticket for [`RateLimiter::settle`].
    pub async fn acquire(&self, amount: u64) -> u64 {
        loop {
            let wait = {
                let mut log = self.log.lock().await;
                let now = Instant::now();
                while log
                    .events
                    .front()
                    .is_some_and(|(_, t, _)| now.duration_since(*t) >= self.window)
                {
                    log.events.pop_front();
                }
                let events_ok = self.max_events == 0 || (log.events.len() as u32) < self.max_events;
                let used: u64 = log.events.iter().map(|(_, _, a)| *a).sum();
                let amount_ok = self.max_amount == 0
                    || used + amount <= self.max_amount
                    || log.events.is_empty();
                if events_ok && amount_ok {
                    let ticket = log.next_ticket;
                    log.next_ticket += 1;
                    log.events.push_back((ticket, now, amount));
                    return ticket;
                }
                // The oldest entry leaving the window is the earliest moment anything changes.
                match log.events.front() {
                    Some((_, t, _)) => (*t + self.window).saturating_duration_since(now),
                    None => Duration::from_millis(1),
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Replaces the reserved amount of an admitted event by its real size once known (the
    /// usage the server reports). No effect once the event has left the window.
    pub async fn settle(&self, ticket: u64, actual: u64) {
        let mut log = self.log.lock().await;
        if let Some(e) = log.events.iter_mut().find(|e| e.0 == ticket) {
            e.2 = actual;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_per_window_are_bounded() {
        let window = Duration::from_millis(300);
        let limiter = std::sync::Arc::new(RateLimiter::new(3, 0, window));
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..9 {
            let l = limiter.clone();
            handles.push(tokio::spawn(async move {
                l.acquire(1).await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for h in handles {
            times.push(h.await.unwrap());
        }
        times.sort();
        // 9 events at 3 per window need at least two full windows.
        assert!(times[8].duration_since(start) >= window * 2);
        // No window holds more than 3 admissions.
        for i in 3..times.len() {
            assert!(times[i].duration_since(times[i - 3]) >= window);
        }
    }

    #[tokio::test]
    async fn amounts_per_window_are_bounded_and_oversize_passes_alone() {
        let window = Duration::from_millis(200);
        let limiter = RateLimiter::new(0, 100, window);
        let start = Instant::now();
        limiter.acquire(60).await;
        limiter.acquire(40).await;
        assert!(start.elapsed() < window);
        limiter.acquire(10).await; // must wait for the window to clear
        assert!(start.elapsed() >= window);
        let t = Instant::now();
        limiter.acquire(500).await; // larger than the budget: waits for an empty window
        assert!(t.elapsed() >= window / 2);
    }

    #[tokio::test]
    async fn settle_frees_or_charges_budget() {
        let window = Duration::from_millis(200);
        let limiter = RateLimiter::new(0, 100, window);
        let start = Instant::now();
        let t = limiter.acquire(90).await;
        limiter.settle(t, 10).await; // it really used 10
        let t = limiter.acquire(80).await;
        assert!(start.elapsed() < window);
        limiter.settle(t, 95).await; // it really used 95: 105 > 100, the next must wait
        limiter.acquire(1).await;
        assert!(start.elapsed() >= window);
    }
}
