//! Serialize-then-validate round trips: what the Rust types write, the
//! validator takes back unchanged, for any value in range.

use std::borrow::Cow;

use backbeat_schemas::message::{BeatFrameType, StatusClaimType};
use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
use backbeat_schemas::{validate_beat, validate_claim, BarReport, BeatFrame, ClaimState, Hlc, StatusClaim};
use proptest::prelude::*;

fn hlc() -> impl Strategy<Value = Hlc> {
    (0u64..=0xFFFF_FFFF_FFFF, any::<u16>(), any::<u16>()).prop_map(|(p, l, n)| Hlc::new(p, l, n))
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max).prop_map(|c| c.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn claims_round_trip(
        agent in text(128).prop_filter("agent_id is not empty", |s| !s.is_empty()),
        task in proptest::option::of(text(128).prop_filter("an empty task_id is absent", |s| !s.is_empty())),
        beat_index in 0u64..=(1u64 << 53) - 1,
        state in proptest::sample::select(ClaimState::ALL.to_vec()),
        beats_left in any::<u32>(),
        progress in 0.0f64..=1.0,
        notes in proptest::option::of(text(64)),
        hlc in hlc(),
    ) {
        let claim = StatusClaim {
            kind: StatusClaimType,
            agent_id: Cow::Owned(agent),
            task_id: task.map(Cow::Owned),
            beat_index,
            state,
            beats_left,
            progress,
            notes: notes.map(Cow::Owned),
            hlc,
        };
        let bytes = serde_json::to_vec(&claim).unwrap();
        prop_assume!(bytes.len() <= 8192);
        let back = validate_claim(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, claim);
    }

    #[test]
    fn beats_round_trip(
        cluster in "[A-Za-z0-9_-]{1,64}",
        bar_length in 1u64..=1000,
        beat_index in 0u64..=(1u64 << 53) - 1,
        hlc in hlc(),
        tempo in 1u32..=1000,
    ) {
        let beat = BeatFrame {
            kind: BeatFrameType,
            cluster_id: cluster.clone(),
            beat_index,
            downbeat: is_downbeat(beat_index, bar_length),
            phase: phase_of(beat_index, bar_length),
            hlc,
            deadline_at: "2024-01-15T10:30:00.25Z".into(),
            tempo_bpm: tempo,
            window_id: window_id(&cluster, bar_length, window_of(beat_index, bar_length)),
        };
        let bytes = serde_json::to_vec(&beat).unwrap();
        let back = validate_beat(&bytes, &cluster, bar_length).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, beat);
    }
}

#[test]
fn reports_round_trip_byte_for_byte() {
    let root = backbeat_tests::workspace_root().join("tests/conformance");
    for name in ["basic", "late_and_gaps", "tasks_and_help"] {
        let text = std::fs::read_to_string(root.join(format!("{name}.expected.jsonl"))).unwrap();
        for line in text.lines() {
            let report: BarReport = serde_json::from_str(line).unwrap();
            assert_eq!(report.to_json(), line, "{name}");
        }
    }
}
