//! `deadline_at` timestamps (SPEC §2): `YYYY-MM-DDTHH:MM:SS[.1–9 digits]Z`, a real UTC time.

/// Checks that `s` is `YYYY-MM-DDTHH:MM:SS[.fraction]Z` with 1 to 9 fraction
/// digits and a real calendar date and time of day (no leap second `:60`).
pub fn is_valid_deadline(s: &str) -> bool {
    parse_utc_ms(s).is_some()
}

/// Parses a `deadline_at` into milliseconds since the Unix epoch (fraction
/// truncated to the millisecond); `None` when it is not of the SPEC form.
pub fn parse_utc_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = &b[range];
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &b[19..];
    let fraction_ms = match rest {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            if !fraction.iter().all(u8::is_ascii_digit) {
                return None;
            }
            fraction
                .iter()
                .chain(b"00")
                .take(3)
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + fraction_ms)
}

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
/// Panics outside years 0000–9999 (a programmer's error: beats are not scheduled there).
pub fn format_utc_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    assert!((0..=9999).contains(&year), "timestamp outside years 0000-9999");
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_spec_form() {
        assert_eq!(parse_utc_ms("1970-01-01T00:16:40.500Z"), Some(1_000_500));
        assert_eq!(parse_utc_ms("2024-01-15T10:30:00Z"), Some(1_705_314_600_000));
        assert!(is_valid_deadline("2024-02-29T23:59:59.123456789Z"));
        assert!(is_valid_deadline("2000-02-29T00:00:00.1Z"));
    }

    #[test]
    fn refuses_unreal_or_malformed_times() {
        for bad in [
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:60Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+00:00",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00.1234567890Z",
            "2024-01-01t00:00:00Z",
            "2024-01-01T00:00:00z",
            "24-01-01T00:00:00Z",
            "+024-01-01T00:00:00Z",
            "2024-1-01T00:00:00Z",
        ] {
            assert!(!is_valid_deadline(bad), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse(ms in -62_167_219_200_000i64..253_402_300_799_999) {
            let s = format_utc_ms(ms);
            prop_assert_eq!(parse_utc_ms(&s), Some(ms));
        }
    }
}
