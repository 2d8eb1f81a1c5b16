//! BACKBEAT's contract in code: the wire documents, their validation, the hybrid
//! logical clock, window math, subject and stream names, and log files (SPEC.md).
//!
//! Every other crate depends on this one, and agrees through it on every byte.
//! It must never do I/O: no NATS, no files, no clock, no async runtime. Functions
//! that need the time take it as an argument.

mod canonical;
pub mod hlc;
pub mod json;
pub mod logfile;
pub mod message;
pub mod names;
pub mod report;
pub mod timestamp;
pub mod validate;
pub mod window;

pub use hlc::{Hlc, HlcClock};
pub use logfile::{format_line, parse_log, LogEntry, LogLineError};
pub use message::{BeatFrame, BeatTick, ClaimState, StatusClaim, BARREPORT_TYPE, BEATFRAME_TYPE, STATUSCLAIM_TYPE};
pub use names::{parse_subject, subject, SubjectKind};
pub use report::{BarReport, Issue};
pub use validate::{
    validate_beat, validate_beat_fully, validate_beat_tick, validate_beat_with, validate_claim, validate_claim_fully,
    Reason, Rejection,
};
pub use window::Phase;
