//! What the emitter reports about itself, for `/api/v1/status`, `/ready` and the
//! tempo handler (which needs the lowest beat not yet emitted).

use std::sync::Mutex;

use serde::Serialize;

/// A snapshot of the emitter's progress.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EmitterStatus {
    /// Whether this node is emitting now (leader with quorum and a known position).
    pub emitting: bool,
    /// The last beat this node published and the stream stored.
    pub last_beat_emitted: Option<u64>,
    /// The last beat this node saw in the stream (its own or another leader's).
    pub last_beat_seen: Option<u64>,
    /// The next beat this node will emit while leading, and when it is due (µs since the Unix epoch).
    pub next_beat: Option<u64>,
    pub next_beat_due_unix_us: Option<i64>,
    /// Why the emitter cannot do its job right now, if so.
    pub problem: Option<String>,
    /// A tempo change aimed at this beat is being committed: the emitter holds
    /// that beat (and later ones) until the write is decided, so the beat an
    /// accepted change names is the beat it lands on.
    #[serde(skip)]
    pub tempo_gate: Option<u64>,
    /// The beat whose tempo the emitter has fixed and is publishing now; a
    /// change can aim only past it.
    #[serde(skip)]
    pub locked_beat: Option<u64>,
}

/// Shared between the emitter (writer) and the HTTP handlers (readers).
#[derive(Debug, Default)]
pub struct SharedStatus {
    inner: Mutex<EmitterStatus>,
}

impl SharedStatus {
    pub fn get(&self) -> EmitterStatus {
        self.inner.lock().expect("status lock").clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut EmitterStatus)) {
        f(&mut self.inner.lock().expect("status lock"));
    }

    /// [`SharedStatus::update`] that returns what `f` returns (read and write under one lock).
    pub fn update_with<R>(&self, f: impl FnOnce(&mut EmitterStatus) -> R) -> R {
        f(&mut self.inner.lock().expect("status lock"))
    }
}
