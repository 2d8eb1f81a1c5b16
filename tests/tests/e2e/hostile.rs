//! A hostile or buggy client on a shared NATS (issue 16), against the whole
//! system on real processes. While the pulse, the gateway and the processor
//! run, one client:
//! - asks the gateway to answer a claim on the beat and bar subjects (reply
//!   subject injection),
//! - publishes garbage, forged and overflowing beats straight to the cluster's
//!   beat subject (index 2^53−1, u64::MAX, a valid-looking beat far ahead, an
//!   HLC at its maximum),
//! - publishes garbage and forged reports straight to the cluster's bar subject.
//!
//! Nothing halts: the pulse goes on emitting its own beats in order (no index
//! twice, not moved by the forged ones), the processor goes on publishing its
//! own reports in window order (each window once), and those reports are the
//! bytes of the offline fold of the exported log, in which the forged beats
//! count as SPEC §5 says.

use std::collections::BTreeSet;

use async_nats::jetstream;
use backbeat_schemas::names::{BARS_STREAM, EVENTS_STREAM};
use backbeat_schemas::window::{window_id, window_of};
use backbeat_schemas::BarReport;
use backbeat_tests::{wait_until_async, Signal};

use crate::stack::{beat_frame, messages_on, wait_for_metric, Stack, CLUSTER, TIMEOUT};

const BAR_LENGTH: u64 = 8;
const BEAT_SUBJECT: &str = "backbeat.e2e.beat";
const BAR_SUBJECT: &str = "backbeat.e2e.bar";

/// A beat frame as the pulse writes it (valid for cluster `e2e`, L = 8), for any index and HLC.
fn forged_beat(beat_index: u64, hlc: &str) -> String {
    beat_frame(CLUSTER, beat_index, hlc)
}

/// A report that looks like the processor's, for `window`.
fn forged_report(window: u64, agents_reporting: u64) -> String {
    format!(
        r#"{{"type":"backbeat.barreport.v1","window_id":"{}","from_beat":{},"to_beat":{},"agents_reporting":{agents_reporting},"on_time_reviews":0,"help_promises_fulfilled":0,"secret_rotations_ok":true,"tempo_drift_ms":0,"issues":[],"cluster_id":"{CLUSTER}","window_index":{window},"bar_length":8,"beats_observed":8,"claims_accepted":0,"claims_late":0,"claims_rejected":0,"tempo_bpm":600,"seq_first":0,"seq_last":0}}"#,
        window_id(CLUSTER, BAR_LENGTH, window),
        window * BAR_LENGTH,
        window * BAR_LENGTH + BAR_LENGTH - 1,
    )
}

/// The last beat the pulse stored (its index), read off the stream's beat subject.
async fn last_stored_beat(js: &jetstream::Context) -> Option<u64> {
    let events = js.get_stream(EVENTS_STREAM).await.ok()?;
    let last = events.get_last_raw_message_by_subject(BEAT_SUBJECT).await.ok()?;
    let value: serde_json::Value = serde_json::from_slice(&last.payload).ok()?;
    value["beat_index"].as_u64()
}

async fn publish(js: &jetstream::Context, subject: &str, payload: String) -> anyhow::Result<u64> {
    Ok(js.publish(subject.to_string(), payload.into()).await?.await?.sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_and_forged_messages_never_stop_the_clock_or_the_reports() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let client = stack.server.client().await?;
    let js = jetstream::new(client.clone());

    // A few bars of beats first, so the processor has published reports.
    let before = wait_until_async("beats of two bars", TIMEOUT, || async {
        last_stored_beat(&js).await.filter(|&beat| beat >= 2 * BAR_LENGTH)
    })
    .await?;

    // 1. Reply-subject injection: the gateway must answer inboxes only.
    let claim = format!(
        r#"{{"type":"backbeat.statusclaim.v1","agent_id":"mallory","beat_index":{before},"state":"executing","beats_left":3,"progress":0.5,"hlc":"1:0000:0001"}}"#
    );
    for reply_to in [BEAT_SUBJECT, BAR_SUBJECT] {
        client
            .publish_with_reply(
                format!("backbeat.{CLUSTER}.intake"),
                reply_to.to_string(),
                claim.clone().into(),
            )
            .await?;
    }
    client.flush().await?;

    // 2. Foreign messages on the beat subject, straight into the stream.
    let mut forged_beats = BTreeSet::new();
    for payload in [
        "garbage".to_string(),
        "{}".to_string(),
        forged_beat(9_007_199_254_740_991, "1:0000:0009"),
        forged_beat(u64::MAX, "1:0000:0009"),
        forged_beat(before + 1000, "1:0000:0009"),
        forged_beat(before + 2, "ffffffffffff:ffff:ffff"),
    ] {
        forged_beats.insert(publish(&js, BEAT_SUBJECT, payload).await?);
    }

    // 3. Foreign messages on the bar subject.
    let first_window_now = window_of(before, BAR_LENGTH);
    let mut forged_bars = BTreeSet::new();
    for payload in [
        "garbage".to_string(),
        forged_report(1_000_000, 1),
        forged_report(first_window_now + 1, 999),
    ] {
        forged_bars.insert(publish(&js, BAR_SUBJECT, payload).await?);
    }

    // The clock goes on: beats well past the forgeries, each from the pulse.
    let after = wait_until_async("the pulse to go on emitting", TIMEOUT, || async {
        let beats = messages_on(&js, EVENTS_STREAM, BEAT_SUBJECT).await.ok()?;
        let newest = beats
            .iter()
            .rev()
            .find(|(seq, _)| !forged_beats.contains(seq))?
            .1
            .clone();
        let value: serde_json::Value = serde_json::from_slice(&newest).ok()?;
        let index = value["beat_index"].as_u64()?;
        (index >= before + 4 * BAR_LENGTH).then_some(index)
    })
    .await?;
    // The reports go on: a window closed after the forgeries is published.
    wait_until_async("the processor to publish past the forgeries", TIMEOUT, || async {
        let bars = messages_on(&js, BARS_STREAM, BAR_SUBJECT).await.ok()?;
        bars.iter()
            .filter(|(seq, _)| !forged_bars.contains(seq))
            .filter_map(|(_, payload)| serde_json::from_slice::<BarReport>(payload).ok())
            .any(|report| report.window_index >= first_window_now + 2)
            .then_some(())
    })
    .await?;
    assert!(after > before);
    // Each service counted what it refused or skipped.
    wait_for_metric(stack.ingest_port, "backbeat_ingest_replies_refused_total", 2.0).await?;
    wait_for_metric(stack.pulse_port, "backbeat_pulse_foreign_beats_total", 1.0).await?;
    wait_for_metric(stack.processor_port, "backbeat_processor_foreign_bars_total", 1.0).await?;

    stack.pulse.signal(Signal::Term)?;
    stack.pulse.wait_exit(TIMEOUT)?;
    let last_seq = js.get_stream(EVENTS_STREAM).await?.info().await?.state.last_sequence;
    stack.stop_processor_after(last_seq).await?;

    // The beat subject holds the pulse's beats and the forged messages, nothing
    // else: the gateway's answers did not land there.
    let beats = messages_on(&js, EVENTS_STREAM, BEAT_SUBJECT).await?;
    let mut previous = None;
    for (seq, payload) in &beats {
        if forged_beats.contains(seq) {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| anyhow::anyhow!("a message on the beat subject that nobody forged: {e}"))?;
        assert_eq!(value["type"], "backbeat.beatframe.v1", "{value}");
        let index = value["beat_index"].as_u64().expect("an index");
        assert!(index < before + 1000, "the pulse was moved by a forged beat: {index}");
        if let Some(previous) = previous {
            assert!(
                index > previous,
                "beat {index} after {previous}: not strictly increasing"
            );
        }
        previous = Some(index);
    }

    // The bar subject holds the processor's reports, in window order, each
    // window once, and the forged messages.
    let bars = messages_on(&js, BARS_STREAM, BAR_SUBJECT).await?;
    let mut live = String::new();
    let mut windows = Vec::new();
    for (seq, payload) in &bars {
        if forged_bars.contains(seq) {
            continue;
        }
        let report: BarReport = serde_json::from_slice(payload)
            .map_err(|e| anyhow::anyhow!("a message on the bar subject that nobody forged: {e}"))?;
        windows.push(report.window_index);
        live.push_str(std::str::from_utf8(payload)?);
        live.push('\n');
    }
    for pair in windows.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "reports in window order, each once: {windows:?}");
    }
    assert!(
        windows.contains(&(first_window_now + 1)),
        "the window a forged report named was published"
    );

    let folded = stack.fold_of_the_exported_log()?;
    assert_eq!(
        folded, live,
        "the live reports differ from the fold of the exported log"
    );
    // The forged beats are in the reports as SPEC §5 counts them.
    let reports: Vec<BarReport> = folded.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let rejected_beats: u64 = reports
        .iter()
        .flat_map(|r| r.issues.iter())
        .filter(|issue| issue.code == "rejected_beats")
        .map(|issue| issue.count)
        .sum();
    assert!(
        rejected_beats >= 4,
        "garbage, {{}}, u64::MAX and the jump are rejected beats: {reports:?}"
    );
    Ok(())
}
