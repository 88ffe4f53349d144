//! Durations written as `10s`, `5m`, `1h` (and `2d`, `500ms` for tests),
//! shared by the operator config, `convoy.yml` and slash commands.

use std::time::Duration;

/// Parses `<digits><unit>` with unit `ms`, `s`, `m`, `h` or `d`. Several
/// parts may be joined (`1h30m`). The error says what form is expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration: use a form like `10s`, `5m` or `1h`".into());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration `{text}`: use a form like `10s`, `5m` or `1h`"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration `{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let millis_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "invalid duration `{text}`: missing unit (s, m or h), e.g. `{value}s`"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration `{text}`: unknown unit `{other}` (use ms, s, m, h or d)"
                ));
            }
        };
        total = value
            .checked_mul(millis_per)
            .and_then(|v| total.checked_add(v))
            .filter(|&v| v <= MAX_MILLIS)
            .ok_or_else(|| {
                format!(
                    "invalid duration `{text}`: too large (at most {}d)",
                    MAX_MILLIS / 86_400_000
                )
            })?;
    }
    Ok(Duration::from_millis(total))
}

/// The longest duration anything accepts: ten years. Longer ones mean a
/// typo, and times that far out leave the range of calendar dates
/// (`bake: 200000000d` once made the engine's time arithmetic panic).
const MAX_MILLIS: u64 = 3_650 * 86_400_000;

/// Writes a duration back in the shortest exact `1h30m`-style form.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "ten s",
            "-5s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn ten_years_is_the_longest() {
        assert_eq!(
            parse_duration("3650d").unwrap(),
            Duration::from_secs(3_650 * 86_400)
        );
        for long in ["3651d", "3650d1ms", "200000000d", "87601h"] {
            let e = parse_duration(long).unwrap_err();
            assert!(e.contains("too large (at most 3650d)"), "{long}: {e}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["10s", "5m", "1h30m", "2d", "250ms", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
