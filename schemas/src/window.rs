//! Window math (SPEC §4): which window a beat is in, its beats, its id and phase.

use sha2::{Digest, Sha256};
use std::fmt;

/// The position of a beat within its bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Plan,
    Execution,
    Review,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Execution => "execution",
            Phase::Review => "review",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        match s {
            "plan" => Some(Phase::Plan),
            "execution" => Some(Phase::Execution),
            "review" => Some(Phase::Review),
            _ => None,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Phase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Phase::parse(&s).ok_or_else(|| serde::de::Error::custom("phase must be plan, execution or review"))
    }
}

/// The window holding `beat` (`beat / L`). `bar_length` must be at least 1.
pub fn window_of(beat: u64, bar_length: u64) -> u64 {
    beat / bar_length
}

/// The first beat of window `w` (`w·L`).
pub fn from_beat(window: u64, bar_length: u64) -> u64 {
    window * bar_length
}

/// The last beat of window `w` (`w·L + L − 1`).
pub fn to_beat(window: u64, bar_length: u64) -> u64 {
    window * bar_length + (bar_length - 1)
}

/// Whether `beat` opens its bar.
pub fn is_downbeat(beat: u64, bar_length: u64) -> bool {
    beat.is_multiple_of(bar_length)
}

/// The phase of `beat`: `plan` if `p < L/4`, `review` if `p >= L − L/4`, else `execution`.
pub fn phase_of(beat: u64, bar_length: u64) -> Phase {
    let position = beat % bar_length;
    let quarter = bar_length / 4;
    if position < quarter {
        Phase::Plan
    } else if position >= bar_length - quarter {
        Phase::Review
    } else {
        Phase::Execution
    }
}

/// The first 32 lowercase hex characters of SHA-256 of `backbeat/v1/{cluster}/{L}/{w}`.
pub fn window_id(cluster_id: &str, bar_length: u64, window: u64) -> String {
    let digest = Sha256::digest(format!("backbeat/v1/{cluster_id}/{bar_length}/{window}"));
    lower_hex(&digest[..16])
}

/// The id of the window asked for last, kept: a cluster's consecutive beats
/// share their window, and its id (a SHA-256) costs more than the rest of a
/// beat's validation.
#[derive(Debug, Clone, Default)]
pub struct WindowIdCache {
    /// Cluster, bar length, window, and its id.
    last: Option<(String, u64, u64, String)>,
}

impl WindowIdCache {
    /// [`window_id`], computed only when it is not the last one asked for.
    pub fn window_id(&mut self, cluster_id: &str, bar_length: u64, window: u64) -> &str {
        let kept = self
            .last
            .as_ref()
            .is_some_and(|(c, l, w, _)| c == cluster_id && *l == bar_length && *w == window);
        if !kept {
            let id = window_id(cluster_id, bar_length, window);
            self.last = Some((cluster_id.to_string(), bar_length, window, id));
        }
        &self.last.as_ref().expect("set above").3
    }
}

/// Lowercase hexadecimal of `bytes`.
pub fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_cache_gives_the_window_id_whatever_was_asked_before() {
        let mut cache = WindowIdCache::default();
        for (cluster, bar_length, window) in [
            ("a", 4, 0),
            ("a", 4, 0),
            ("a", 4, 1),
            ("b", 4, 1),
            ("b", 8, 1),
            ("b", 8, 1),
            ("a", 4, 0),
        ] {
            assert_eq!(
                cache.window_id(cluster, bar_length, window),
                window_id(cluster, bar_length, window)
            );
        }
    }

    #[test]
    fn window_ids_match_the_conformance_logs() {
        assert_eq!(window_id("alpha", 4, 0), "ce8b2c18062421130c891884a283f8cc");
        assert_eq!(window_id("alpha", 4, 1), "92c2ba799bb9fd2582ab95a94b8439f0");
        assert_eq!(window_id("beta", 4, 0), "771c014cd797fa63f6176a73ffd02d7a");
        assert_eq!(window_id("gamma", 4, 2), "01e8d25bc5ebffbd9a27981bd3055a85");
    }

    #[test]
    fn phases() {
        let l4: Vec<_> = (0..4).map(|b| phase_of(b, 4)).collect();
        assert_eq!(l4, [Phase::Plan, Phase::Execution, Phase::Execution, Phase::Review]);
        assert_eq!(
            phase_of(0, 1),
            Phase::Execution,
            "L = 1: L/4 = 0, so neither plan nor review"
        );
        assert_eq!(phase_of(29, 120), Phase::Plan);
        assert_eq!(phase_of(30, 120), Phase::Execution);
        assert_eq!(phase_of(89, 120), Phase::Execution);
        assert_eq!(phase_of(90, 120), Phase::Review);
        assert_eq!(phase_of(119, 120), Phase::Review);
        assert_eq!(phase_of(120, 120), Phase::Plan);
    }

    proptest! {
        #[test]
        fn window_identities(beat in 0u64..(1 << 53), l in 1u64..10_000) {
            let w = window_of(beat, l);
            prop_assert!(from_beat(w, l) <= beat && beat <= to_beat(w, l));
            prop_assert_eq!(to_beat(w, l) - from_beat(w, l) + 1, l);
            prop_assert_eq!(from_beat(w + 1, l), to_beat(w, l) + 1);
            prop_assert_eq!(is_downbeat(beat, l), beat == from_beat(w, l));
            if is_downbeat(beat, l) && l >= 4 {
                prop_assert_eq!(phase_of(beat, l), Phase::Plan);
            }
        }
    }
}
