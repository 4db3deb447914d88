//! The one way tests wait: ask a condition again and again, with a deadline.
//!
//! A test should not sleep for a guessed time and then look (a few still do;
//! move them here): it states what it waits for, [`wait_until`] asks every [`POLL_INTERVAL`]
//! until it holds, and on timeout the error says what was awaited and what
//! was seen last.

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
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
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
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
