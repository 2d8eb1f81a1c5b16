//! Contract tests of `backbeat-schemas`: every SPEC §5 validation rule with the
//! reason it must produce, the JSON Schema documents under `schemas/json/`
//! against the same corpus, and serialize-then-validate round trips.
//! One test binary, so the crate links its integration tests once.

mod corpus;
mod json_schema;
mod roundtrip;
mod rules;
