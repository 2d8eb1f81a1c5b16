//! Contract tests of `backbeat-schemas`: every SPEC §5 validation rule with the
//! reason it must produce, the JSON Schema documents under `schemas/json/`
//! against the same corpus, serialize-then-validate round trips, and the
//! validator against the one it replaced on random mutations (`differential`),
//! and SPEC §8 claim ids that cannot collide (`claim_ids`).
//! One test binary, so the crate links its integration tests once.

mod claim_ids;
mod corpus;
mod differential;
mod json_schema;
mod reference;
mod roundtrip;
mod rules;
