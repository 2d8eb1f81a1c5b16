//! Hybrid logical clock (SPEC §3): `{physical}:{logical}:{node}`.
//!
//! The clock never reads time itself: callers pass the wall clock in
//! milliseconds, so the send and receive rules are testable and the fold stays pure.

use std::fmt;
use std::str::FromStr;

/// The largest physical part: 12 hex digits.
pub const HLC_PHYSICAL_MAX: u64 = 0xFFFF_FFFF_FFFF;

/// One HLC timestamp. Order is the tuple order (physical, logical, node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    pub physical_ms: u64,
    pub logical: u16,
    pub node: u16,
}

/// Why a string is not an HLC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hlc must be {{physical}}:{{logical}}:{{node}}: physical 1-12 lowercase hex digits without leading zeros, logical and node 4 lowercase hex digits each")]
pub struct HlcParseError;

impl Hlc {
    /// Reads `{physical}:{logical}:{node}` from bytes (what [`str::parse`] does).
    pub fn parse_bytes(bytes: &[u8]) -> Option<Hlc> {
        // 1 to 12 digits, then exactly 4 and 4. One pass over the bytes; a
        // `:` anywhere else is not a hex digit.
        if !(11..=22).contains(&bytes.len()) {
            return None;
        }
        let (physical, rest) = bytes.split_at(bytes.len() - 10);
        if rest[0] != b':' || rest[5] != b':' || (physical.len() > 1 && physical[0] == b'0') {
            return None;
        }
        Some(Hlc {
            physical_ms: lower_hex_value(physical)?,
            logical: lower_hex_value(&rest[1..5])? as u16,
            node: lower_hex_value(&rest[6..10])? as u16,
        })
    }

    pub fn new(physical_ms: u64, logical: u16, node: u16) -> Self {
        assert!(physical_ms <= HLC_PHYSICAL_MAX, "hlc physical beyond 12 hex digits");
        Hlc {
            physical_ms,
            logical,
            node,
        }
    }
}

fn lower_hex_value(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    // Branch-free: a byte that is not a lowercase hex digit sets the high bit of `bad`.
    let mut bad = 0u8;
    let value = digits.iter().fold(0u64, |value, &b| {
        let digit = HEX_DIGIT[usize::from(b)];
        bad |= digit;
        value << 4 | u64::from(digit & 0x0f)
    });
    (bad & 0x80 == 0).then_some(value)
}

/// The value of each lowercase hex digit; 0x80 for every other byte.
const HEX_DIGIT: [u8; 256] = {
    let mut table = [0x80u8; 256];
    let mut digit = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};

impl FromStr for Hlc {
    type Err = HlcParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hlc::parse_bytes(s.as_bytes()).ok_or(HlcParseError)
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{:04x}:{:04x}", self.physical_ms, self.logical, self.node)
    }
}

impl serde::Serialize for Hlc {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Hlc {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's clock: the send and receive rules of a hybrid logical clock.
#[derive(Debug, Clone)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    pub fn new(node: u16) -> Self {
        HlcClock {
            last: Hlc {
                physical_ms: 0,
                logical: 0,
                node,
            },
        }
    }

    /// The last timestamp issued or merged.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A timestamp for a local event or a message sent now (`wall_ms` = the wall clock).
    pub fn send(&mut self, wall_ms: u64) -> Hlc {
        let wall_ms = wall_ms.min(HLC_PHYSICAL_MAX);
        if wall_ms > self.last.physical_ms {
            self.set(wall_ms, 0);
        } else {
            self.tick(self.last.physical_ms, self.last.logical);
        }
        self.last
    }

    /// Merges a received timestamp: physical = max(wall, last, remote).
    pub fn receive(&mut self, remote: Hlc, wall_ms: u64) -> Hlc {
        let wall_ms = wall_ms.min(HLC_PHYSICAL_MAX);
        let last = self.last;
        let physical = wall_ms.max(last.physical_ms).max(remote.physical_ms);
        match (physical == last.physical_ms, physical == remote.physical_ms) {
            (true, true) => self.tick(physical, last.logical.max(remote.logical)),
            (true, false) => self.tick(physical, last.logical),
            (false, true) => self.tick(physical, remote.logical),
            (false, false) => self.set(physical, 0),
        }
        self.last
    }

    fn set(&mut self, physical_ms: u64, logical: u16) {
        self.last.physical_ms = physical_ms;
        self.last.logical = logical;
    }

    /// logical+1; a full counter moves physical on by one millisecond instead,
    /// so timestamps stay strictly increasing. The largest timestamp
    /// (`HLC_PHYSICAL_MAX` with a full counter, in the year 10889) stays as it
    /// is: the clock cannot move past it, and must never wrap back to a
    /// smaller one (found by the `hlc_timestamp` fuzz target).
    fn tick(&mut self, physical_ms: u64, logical: u16) {
        match logical.checked_add(1) {
            Some(next) => self.set(physical_ms, next),
            None if physical_ms < HLC_PHYSICAL_MAX => self.set(physical_ms + 1, 0),
            None => self.set(HLC_PHYSICAL_MAX, u16::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_largest_timestamp_stays_and_never_wraps_back() {
        let largest = Hlc::new(HLC_PHYSICAL_MAX, u16::MAX, 0);
        // A remote clock at the largest timestamp: the merge is not below it.
        let mut clock = HlcClock::new(0);
        assert_eq!(clock.receive(largest, 1_000), largest);
        // Sending and receiving from there stays there.
        assert_eq!(clock.send(u64::MAX), largest);
        assert_eq!(clock.receive(Hlc::new(5, 0, 1), 0), largest);
        // One short of it: a full counter still moves on by a millisecond.
        let mut clock = HlcClock::new(0);
        clock.receive(Hlc::new(HLC_PHYSICAL_MAX - 1, u16::MAX - 1, 1), 0);
        assert_eq!(
            (clock.last().physical_ms, clock.last().logical),
            (HLC_PHYSICAL_MAX - 1, u16::MAX)
        );
        assert_eq!(clock.send(0), Hlc::new(HLC_PHYSICAL_MAX, 0, 0));
    }

    #[test]
    fn parses_and_formats() {
        let h: Hlc = "f4240:0000:00a1".parse().unwrap();
        assert_eq!(h, Hlc::new(1_000_000, 0, 0xa1));
        assert_eq!(h.to_string(), "f4240:0000:00a1");
        assert_eq!("0:0000:0000".parse::<Hlc>().unwrap(), Hlc::default());
        for bad in [
            "",
            "0f:0000:0000",
            "F4240:0000:00a1",
            "f4240:000:00a1",
            "f4240:0000:00A1",
            "1234567890abc:0000:0000",
            "1:0000:0000:0",
            "1:0000",
            "-1:0000:0000",
            "+1:0000:0000",
            ":0000:0000",
        ] {
            assert!(bad.parse::<Hlc>().is_err(), "{bad:?} accepted");
        }
        assert!("ffffffffffff:ffff:ffff".parse::<Hlc>().is_ok());
    }

    #[test]
    fn send_and_receive_rules() {
        let mut c = HlcClock::new(1);
        assert_eq!(c.send(100), Hlc::new(100, 0, 1));
        assert_eq!(c.send(100), Hlc::new(100, 1, 1));
        assert_eq!(
            c.send(90),
            Hlc::new(100, 2, 1),
            "a clock going back does not move the HLC back"
        );
        assert_eq!(c.receive(Hlc::new(200, 7, 2), 150), Hlc::new(200, 8, 1));
        assert_eq!(c.receive(Hlc::new(200, 3, 2), 150), Hlc::new(200, 9, 1));
        assert_eq!(c.receive(Hlc::new(100, 3, 2), 300), Hlc::new(300, 0, 1));
        let mut full = HlcClock::new(1);
        full.receive(Hlc::new(5, u16::MAX, 2), 5);
        assert_eq!(full.last(), Hlc::new(6, 0, 1));
    }

    proptest! {
        /// The one-pass reader refuses and reads exactly what the rule's plain
        /// reading (split at colons, then check each part) does.
        #[test]
        fn parsing_agrees_with_the_plain_reading(s in "[0-9a-gA-G:/@` \u{7f}é]{0,24}|[1-9a-f][0-9a-f]{0,11}:[0-9a-f]{4}:[0-9a-f]{4}|[1-9a-f][0-9a-f]{0,13}:[0-9a-f:]{4}:[0-9a-f]{3,5}") {
            fn plain(s: &str) -> Option<Hlc> {
                let (physical, rest) = s.split_once(':')?;
                let (logical, node) = rest.split_once(':')?;
                let hex = |t: &str| (!t.is_empty() && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(|| u64::from_str_radix(t, 16).ok()).flatten();
                if node.contains(':') || physical.len() > 12 || (physical.len() > 1 && physical.starts_with('0')) || logical.len() != 4 || node.len() != 4 {
                    return None;
                }
                Some(Hlc { physical_ms: hex(physical)?, logical: hex(logical)? as u16, node: hex(node)? as u16 })
            }
            prop_assert_eq!(s.parse::<Hlc>().ok(), plain(&s));
        }

        #[test]
        fn round_trip(p in 0..=HLC_PHYSICAL_MAX, l: u16, n: u16) {
            let h = Hlc::new(p, l, n);
            prop_assert_eq!(h.to_string().parse::<Hlc>().unwrap(), h);
        }

        #[test]
        fn strictly_monotonic(events in prop::collection::vec((any::<bool>(), 0u64..1000, 0u64..1000, any::<u16>()), 1..200)) {
            let mut c = HlcClock::new(7);
            let mut previous = c.last();
            for (is_send, wall, remote_p, remote_l) in events {
                let next = if is_send {
                    c.send(wall)
                } else {
                    let remote = Hlc::new(remote_p, remote_l, 3);
                    let merged = c.receive(remote, wall);
                    prop_assert!((merged.physical_ms, merged.logical) > (remote.physical_ms, remote.logical));
                    merged
                };
                prop_assert!(next > previous);
                prop_assert!(next.physical_ms >= wall.min(HLC_PHYSICAL_MAX));
                previous = next;
            }
        }
    }
}
