//! Durations (`"60s"`) and sizes (`"512MiB"`) as written in app.toml.

use std::time::Duration;

/// The longest `timeout` accepted: a day. Longer is almost surely a typo.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Linear memory is capped at 16 GiB, past what a wasm32 guest can address.
pub const MAX_MEMORY: u64 = 16 << 30;
/// One WebAssembly page: no guest with memory runs in less.
pub const MIN_MEMORY: u64 = 64 << 10;

/// Units `parse_duration` accepts, for messages.
pub const DURATION_UNITS: &str = "ms, s, m or h";
/// Units `parse_size` accepts, for messages.
pub const SIZE_UNITS: &str = "KiB, MiB, GiB, B, KB, MB or GB";

/// Parses `"500ms"`, `"60s"`, `"2m"`, `"1h30m"`. Errors say what is wrong,
/// not how to fix it: the caller knows where the text came from.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let total = parse_duration_or_zero(text)?;
    if total.is_zero() {
        return Err("a duration of zero would stop every invocation at once".to_owned());
    }
    Ok(total)
}

/// [`parse_duration`] letting `"0s"` through, for a caller whose reason to
/// refuse zero is not a timeout's and so needs its own words.
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let total = sum_parts(text, text.trim(), false)?;
    if total > MAX_TIMEOUT {
        return Err(format!("`{text}` is too large; the most is 24h"));
    }
    Ok(total)
}

/// A look back in time (`logs?since=`): the syntax of [`parse_duration`]
/// with zero allowed, no bound (past the largest duration it means
/// "everything") and no spaces around it.
pub fn parse_lookback(text: &str) -> Result<Duration, String> {
    sum_parts(text, text, true)
}

/// The sum of the `NUMBER UNIT` parts of `rest` (`text`, as written, is for
/// messages); one too large for a `Duration` is an error, or with
/// `saturate` the largest duration.
fn sum_parts(text: &str, mut rest: &str, saturate: bool) -> Result<Duration, String> {
    if rest.is_empty() {
        return Err("the duration is empty".to_owned());
    }
    let too_large = || format!("`{text}` is too large; the most is 24h");
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("`{text}` is not a duration"));
        }
        let number: Option<u64> = rest[..digits].parse().ok();
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "" => return Err(format!("`{text}` has no unit")),
            other => return Err(format!("`{other}` in `{text}` is not a unit")),
        };
        rest = &rest[unit_len..];
        let part = number
            .and_then(|n| u32::try_from(n).ok())
            .and_then(|n| unit.checked_mul(n));
        let part = match part {
            Some(part) => part,
            None if saturate => Duration::MAX,
            None => return Err(too_large()),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Units `parse_quota_size` accepts, for messages.
pub const QUOTA_UNITS: &str = "KiB, MiB, GiB, TiB, B, KB, MB, GB or TB";
/// The largest volume quota: 1 PiB, past any one disk.
pub const MAX_QUOTA: u64 = 1 << 50;

/// Parses a linear-memory size: `"512MiB"`, `"1GiB"`, `"64KiB"`, `"100MB"`
/// or a byte count, from one WebAssembly page to 16GiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text, MAX_MEMORY, "16GiB")?;
    if bytes < MIN_MEMORY {
        return Err(format!("`{text}` is less than one 64KiB WebAssembly page"));
    }
    Ok(bytes)
}

/// Parses a volume quota (`max_size`): the units of [`parse_size`] and
/// TiB/TB, from one byte to 1PiB.
pub fn parse_quota_size(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text, MAX_QUOTA, "1PiB")?;
    if bytes == 0 {
        return Err("a quota of zero bytes would refuse every write".to_owned());
    }
    Ok(bytes)
}

/// A number and an optional unit, at most `max` (`max_text` in messages).
fn parse_bytes(text: &str, max: u64, max_text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("`{text}` is not a size"));
    }
    let too_large = || format!("`{text}` is too large; the most is {max_text}");
    let number: u64 = trimmed[..digits].parse().map_err(|_| too_large())?;
    let multiplier: u64 = match trimmed[digits..].trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("`{other}` in `{text}` is not a unit")),
    };
    number
        .checked_mul(multiplier)
        .filter(|b| *b <= max)
        .ok_or_else(too_large)
}

/// Formats a byte count the way app.toml spells it.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        b if b % (1 << 40) == 0 && b > 0 => format!("{}TiB", b >> 40),
        b if b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// Formats a duration the way app.toml spells it.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in [
            "",
            "60",
            "s",
            "1x",
            "0s",
            "25h",
            "-1s",
            "1.5s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn lookbacks_allow_zero_and_any_length_but_no_spaces() {
        assert_eq!(parse_lookback("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_lookback("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(
            parse_lookback("99999999999999999999s1ms"),
            Ok(Duration::MAX)
        );
        for bad in ["", " 1h", "1h ", "1h\n", "1", "h", "1x", "-1s"] {
            assert!(parse_lookback(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        for bad in [
            "",
            "MiB",
            "1",
            "1TiB",
            "17GiB",
            "-1MiB",
            "99999999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn quota_sizes() {
        assert_eq!(parse_quota_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_quota_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_quota_size("1"), Ok(1));
        for bad in ["", "0", "0B", "MiB", "1PiB", "2000TiB", "-1MiB", "1.5GiB"] {
            assert!(parse_quota_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn durations_round_trip(ms in 1u64..=MAX_TIMEOUT.as_millis() as u64) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn sizes_round_trip(pages in 1u64..=(MAX_MEMORY >> 16)) {
            let bytes = pages << 16;
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
            let _ = parse_size(&text);
        }
    }
}
