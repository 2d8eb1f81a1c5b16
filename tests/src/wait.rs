use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `condition` until it returns `Some`, or fails after `timeout` with a
/// message naming `what`. For conditions that have no event to await (a
/// process accepting connections, a file appearing); the poll interval is
/// short so that tests are not slowed by it.
pub fn wait_until<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(2);
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

/// The async form of [`wait_until`].
pub async fn wait_until_async<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut interval = Duration::from_millis(2);
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}
