//! What the benchmarks share: the raw references they measure against, and
//! the CPU a process used.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;

/// Reads every message of `stream` with an ordered consumer (the raw floor
/// of any reader of a stream); returns how many it read.
pub async fn read_stream_ordered(js: &jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    let stream = js.get_stream(stream).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let (mut count, mut bytes) = (0u64, 0usize);
    while let Some(message) = messages.next().await {
        let message = message?;
        count += 1;
        bytes += message.payload.len();
        if message.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending == 0 {
            break;
        }
    }
    std::hint::black_box(bytes);
    Ok(count)
}

/// CPU seconds process `pid` (`"self"` for this one) has used, user + system,
/// all threads, from `/proc/{pid}/stat`.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}
