//! SPEC §8 claim ids: two claims that differ in any of cluster, agent, task,
//! beat or HLC never share an id. The ids are drawn from a small alphabet rich
//! in `/`, `:`, digits and non-ASCII, where an encoding without the length
//! prefixes collides readily (agent `a/b` without a task and agent `a` with
//! task `b/`), so an ambiguous encoding would be found quickly.

use backbeat_schemas::names::claim_msg_id;
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
struct ClaimKey {
    cluster: String,
    agent: String,
    task: Option<String>,
    beat: u64,
    hlc: String,
}

fn text(min_len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(vec!["a", "b", "/", ":", "1", "0", "é", "ß", "/1:"]),
        min_len..5,
    )
    .prop_map(|parts| parts.concat())
}

fn claim_key() -> impl Strategy<Value = ClaimKey> {
    (
        proptest::sample::select(vec!["c", "c1", "c-1"]),
        text(1),
        proptest::option::of(text(1)),
        0u64..12,
        proptest::sample::select(vec!["1:0000:0001", "1:0000:0010", "10:0000:0001"]),
    )
        .prop_map(|(cluster, agent, task, beat, hlc)| ClaimKey {
            cluster: cluster.to_string(),
            agent,
            task,
            beat,
            hlc: hlc.to_string(),
        })
}

fn id_of(key: &ClaimKey) -> String {
    claim_msg_id(&key.cluster, &key.agent, key.task.as_deref(), key.beat, &key.hlc)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn different_claims_never_share_an_id(first in claim_key(), second in claim_key()) {
        if first == second {
            prop_assert_eq!(id_of(&first), id_of(&second));
        } else {
            prop_assert_ne!(id_of(&first), id_of(&second), "{:?} and {:?} share an id", first, second);
        }
    }

    /// A pair that differs only in how the agent/task boundary is drawn: the
    /// shape that collided before the lengths were added.
    #[test]
    fn moving_the_agent_task_boundary_changes_the_id(
        agent in text(1), task in text(1), beat in 0u64..12,
    ) {
        let joined = ClaimKey { cluster: "c".into(), agent: format!("{agent}/{task}"), task: None, beat, hlc: "1:0000:0001".into() };
        let split = ClaimKey { cluster: "c".into(), agent, task: Some(format!("{task}/")), beat, hlc: "1:0000:0001".into() };
        prop_assert_ne!(id_of(&joined), id_of(&split));
    }
}
