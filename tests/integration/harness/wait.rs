//! The one way tests wait: ask a condition again and again, with a deadline.
//!
//! A test does not sleep for a guessed time and then look: it states what it
//! waits for, [`wait_until`] asks every [`POLL_INTERVAL`] until it holds, and
//! on timeout the error says what was awaited and what was seen last. The
//! sleeps left in tests pace a workload (a writer's gap between
//! transactions, a fault's random moment); they are what the test does, not
//! a wait for something to happen.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often a condition is asked again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One answer of a condition: it holds (with a value), or not yet (with
/// what was seen instead, for the timeout message).
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds.
    Done(T),
    /// It does not hold yet; what was seen.
    NotYet(String),
}

/// Asks `check` until it answers [`Check::Done`], at most `timeout`. An
/// error from `check` ends the wait at once. On timeout the error reads
/// "after T, still waiting until WHAT; last seen: …".
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    wait_until_every(POLL_INTERVAL, timeout, what, check).await
}

/// [`wait_until`], asking every `interval`: for a test that must act as soon
/// as the condition holds (e.g. stop a server while a transaction is still
/// in flight).
pub async fn wait_until_every<T, F, Fut>(
    interval: Duration,
    timeout: Duration,
    what: &str,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check().await? {
            Check::Done(value) => return Ok(value),
            Check::NotYet(seen) => seen,
        };
        if Instant::now() > deadline {
            bail!("after {timeout:?}, still waiting until {what}; last seen: {seen}");
        }
        tokio::time::sleep(interval).await;
    }
}
