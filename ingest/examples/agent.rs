//! A complete BACKBEAT agent built on the client library: it follows its
//! cluster's beats, works through one task (planning → executing → reviewing
//! → done) claiming its status every few beats, and prints the BarReports of
//! its cluster as the processor publishes them.
//!
//! Run it against a running stack (`deploy/up.sh`):
//!
//! ```text
//! cargo run -p backbeat-ingest --example agent -- nats://127.0.0.1:4222 local agent-1
//! ```
//!
//! Arguments: NATS URL, cluster id, agent id, seconds to wait for bar reports
//! at the end (defaults as above, and 5). Set
//! `BACKBEAT_HTTP=http://127.0.0.1:8082` to send claims over HTTP instead.

use std::sync::Arc;
use std::time::Duration;

use backbeat_ingest::client::{
    Agent, BarReports, BarsFrom, BeatFollower, ClaimDraft, ClaimSender, Clock, FollowerConfig, RetryPolicy,
    SystemClock, Transport,
};
use backbeat_schemas::message::ClaimState;
use futures::StreamExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nats_url = args.next().unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let cluster = args.next().unwrap_or_else(|| "local".into());
    let agent_id = args.next().unwrap_or_else(|| "agent-1".into());
    let linger_secs: u64 = args.next().map_or(Ok(5), |s| s.parse())?;

    let client = async_nats::connect(&nats_url).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());

    // 1. Follow the beats: a local timer predicts the beat between frames.
    let follower = BeatFollower::start(
        client.clone(),
        FollowerConfig {
            cluster: cluster.clone(),
            bar_length: 120,
        },
        clock.clone(),
    )
    .await?;
    let first = follower.wait_first_beat(Duration::from_secs(30)).await?;
    println!(
        "beat {} at {} bpm (window {})",
        first.beat_index, first.tempo_bpm, first.window_id
    );

    // 2. Print BarReports as they come (the processor creates BACKBEAT_BARS;
    //    without it there is nothing to read yet).
    match BarReports::subscribe(client.clone(), &cluster, BarsFrom::New).await {
        Ok(reports) => {
            tokio::spawn(async move {
                let mut reports = Box::pin(reports);
                while let Some(report) = reports.next().await {
                    match report {
                        Ok((seq, report)) => println!(
                            "bar report #{seq}: beats {}..={}, {} agents, {} claims ({} late), {} on-time reviews, \
                             {} help promises kept, secret rotations ok: {}, issues {:?}",
                            report.from_beat,
                            report.to_beat,
                            report.agents_reporting,
                            report.claims_accepted,
                            report.claims_late,
                            report.on_time_reviews,
                            report.help_promises_fulfilled,
                            report.secret_rotations_ok,
                            report.issues.iter().map(|i| (&i.code, i.count)).collect::<Vec<_>>()
                        ),
                        Err(e) => eprintln!("bar reports: {e}"),
                    }
                }
            });
        }
        Err(e) => println!("not reading bar reports: {e}"),
    }

    // 3. Send claims: stamped with the beat and an HLC, retried with the same bytes.
    let transport = match std::env::var("BACKBEAT_HTTP") {
        Ok(url) => Transport::http(url),
        Err(_) => Transport::nats(client.clone()),
    };
    let sender = ClaimSender::new(transport, &cluster, RetryPolicy::default(), 1);
    let mut agent = Agent::new(agent_id, 1);
    let task = format!("build:{}", first.beat_index);
    let promised_beats = 8u32;
    let plan = [
        (ClaimState::Planning, 0.0),
        (ClaimState::Executing, 0.3),
        (ClaimState::Executing, 0.6),
        (ClaimState::Reviewing, 0.9),
        (ClaimState::Done, 1.0),
    ];
    for (step, (state, progress)) in plan.into_iter().enumerate() {
        let beat = follower.now().expect("a beat was seen");
        let beats_left = promised_beats.saturating_sub(2 * step as u32);
        let draft = ClaimDraft::new(state)
            .task(task.clone())
            .beats_left(beats_left)
            .progress(progress);
        let bytes = agent.stamp(&draft, &beat, clock.wall_ms());
        match sender.send(bytes).await {
            Ok(accepted) => println!(
                "beat {}: {state} stored at seq {} (duplicate: {})",
                beat.beat_index, accepted.seq, accepted.duplicate
            ),
            Err(e) => println!("beat {}: {state} not stored: {e}", beat.beat_index),
        }
        // Two beats of work before the next claim.
        for _ in 0..2 {
            let wait = follower.until_next_beat().unwrap_or(Duration::from_millis(500));
            tokio::time::sleep(wait + Duration::from_millis(1)).await;
        }
    }
    println!("task {task} done; waiting {linger_secs} s for bar reports");
    tokio::time::sleep(Duration::from_secs(linger_secs)).await;
    Ok(())
}
