//! `retries`: whether a failed call is run again, and how long to wait
//! before each new attempt (spec section 7, "Retries").

use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::raw::{RawRetries, RawRetriesTable};
use super::units::{self, format_duration};
use super::{ManifestError, Validator};

/// The most retries app.toml may ask for: a call still failing after a
/// hundred tries is failing for good, and more would only load the nodes.
pub const MAX_RETRIES: u32 = 100;
/// The steepest `backoff`: past tenfold the waits hit `max_delay` within a
/// retry or two, so a larger number is more likely a typo than a wish.
pub const MAX_BACKOFF: f64 = 10.0;
const DEFAULT_INITIAL_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF: f64 = 2.0;
const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(60);

/// How a failed call is run again. Kept whole in the registry, so whichever
/// node takes over a retry waits as the app asked without its app.toml.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct RetryPolicy {
    /// Attempts after the first, so a call runs at most `max + 1` times.
    pub max: u32,
    /// Time for a passing cause (a node restarting, a busy service) to
    /// clear before the first retry.
    pub initial_delay: Duration,
    /// Each wait is this many times the one before, so a lasting failure
    /// is tried less and less often.
    pub backoff: f64,
    /// So that a late retry is not put off for hours.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// No retries: running a call twice is safe only for a function its
    /// author knows to be idempotent, so it must be asked for.
    fn default() -> Self {
        RetryPolicy {
            max: 0,
            initial_delay: DEFAULT_INITIAL_DELAY,
            backoff: DEFAULT_BACKOFF,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt number `attempt`, counting the first run as
    /// 1 (it, and a nonsensical 0, wait for nothing). Worked out in floating
    /// point and capped, so a huge attempt number, or fields set by hand to
    /// values app.toml refuses, give `max_delay` rather than a panic.
    pub fn delay_before(&self, attempt: u32) -> Duration {
        let Some(retry) = attempt.checked_sub(2) else {
            return Duration::ZERO;
        };
        let growth = self.backoff.powi(i32::try_from(retry).unwrap_or(i32::MAX));
        let seconds = self.initial_delay.as_secs_f64() * growth;
        Duration::try_from_secs_f64(seconds)
            .map_or(self.max_delay, |delay| delay.min(self.max_delay))
    }
}

impl Validator<'_> {
    /// The policy app.toml asks for; none when it has no `retries`.
    pub(super) fn retries(
        &self,
        raw: Option<&Spanned<RawRetries>>,
    ) -> Result<RetryPolicy, ManifestError> {
        let Some(raw) = raw else {
            return Ok(RetryPolicy::default());
        };
        match raw.get_ref() {
            RawRetries::Count(count) => Ok(RetryPolicy {
                max: self.retry_count(*count, raw.span(), "retries")?,
                ..RetryPolicy::default()
            }),
            RawRetries::Table(table) => self.retry_table(table),
        }
    }

    fn retry_table(&self, table: &RawRetriesTable) -> Result<RetryPolicy, ManifestError> {
        let max = self.retry_count(*table.max.get_ref(), table.max.span(), "max")?;
        let initial_delay = self.retry_delay(
            table.initial_delay.as_ref(),
            "initial_delay",
            DEFAULT_INITIAL_DELAY,
        )?;
        let max_delay =
            self.retry_delay(table.max_delay.as_ref(), "max_delay", DEFAULT_MAX_DELAY)?;
        let backoff = match &table.backoff {
            None => DEFAULT_BACKOFF,
            Some(b) if (1.0..=MAX_BACKOFF).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                return Err(self.error(
                    Some(b.span()),
                    format!(
                        "`backoff = {}` in `retries` is out of range",
                        self.written(b.span())
                    ),
                    "use a number from 1.0 (the same wait every time) to 10.0, e.g. backoff = 2.0",
                ));
            }
        };
        if let Some(initial) = &table.initial_delay
            && initial_delay > max_delay
        {
            let limit = match &table.max_delay {
                Some(m) => format!("`max_delay = {}`", self.written(m.span())),
                None => format!("`max_delay` ({}, the default)", format_duration(max_delay)),
            };
            return Err(self.error(
                Some(initial.span()),
                format!(
                    "`initial_delay = {}` in `retries` is longer than {limit}",
                    self.written(initial.span())
                ),
                format!(
                    "shorten `initial_delay`, or set `max_delay` to {} or more",
                    format_duration(initial_delay)
                ),
            ));
        }
        Ok(RetryPolicy {
            max,
            initial_delay,
            backoff,
            max_delay,
        })
    }

    /// `retries = N`, or `max = N` in its table.
    fn retry_count(
        &self,
        count: i128,
        span: Range<usize>,
        key: &str,
    ) -> Result<u32, ManifestError> {
        match u32::try_from(count) {
            Ok(count) if count <= MAX_RETRIES => Ok(count),
            _ => {
                let place = if key == "retries" {
                    ""
                } else {
                    " in `retries`"
                };
                Err(self.error(
                    Some(span.clone()),
                    format!("`{key} = {}`{place} is out of range", self.written(span)),
                    format!(
                        "use a whole number of retries from 0 (none, the default) to {MAX_RETRIES}"
                    ),
                ))
            }
        }
    }

    fn retry_delay(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ManifestError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let example = format!("e.g. {key} = \"{}\"", format_duration(default));
        match units::parse_duration_or_zero(value.get_ref()) {
            Err(problem) => Err(self.error(
                Some(value.span()),
                format!("bad `{key}` in `retries`: {problem}"),
                format!(
                    "write a number and a unit ({}) up to 24h, {example}",
                    units::DURATION_UNITS
                ),
            )),
            Ok(delay) if delay.is_zero() => Err(self.error(
                Some(value.span()),
                format!(
                    "`{key} = {}` in `retries` would retry at once, leaving no time for the cause of a failure to pass",
                    self.written(value.span())
                ),
                format!("wait at least 1ms, {example}"),
            )),
            Ok(delay) => Ok(delay),
        }
    }

    /// A value exactly as app.toml spells it.
    fn written(&self, span: Range<usize>) -> &str {
        self.text.get(span).unwrap_or("?").trim()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::parse;
    use crate::manifest::proptests::base_dir;

    fn policy(max: u32, initial_ms: u64, backoff: f64, max_delay_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max,
            initial_delay: Duration::from_millis(initial_ms),
            backoff,
            max_delay: Duration::from_millis(max_delay_ms),
        }
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_default_is_no_retries() {
        assert_eq!(RetryPolicy::default().max, 0);
    }

    #[test]
    fn delays_grow_by_backoff_from_the_first_retry() {
        let p = policy(5, 1000, 2.0, 60_000);
        let delays: Vec<Duration> = (0..=9).map(|a| p.delay_before(a)).collect();
        assert_eq!(
            delays,
            [0, 0, 1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000].map(ms)
        );
        let p = policy(3, 100, 1.5, 1000);
        assert_eq!(p.delay_before(2), ms(100));
        assert_eq!(p.delay_before(3), ms(150));
        assert_eq!(p.delay_before(4), ms(225));
    }

    #[test]
    fn a_backoff_of_one_waits_the_same_every_time() {
        let p = policy(100, 250, 1.0, 60_000);
        for attempt in [2, 3, 50, 101, u32::MAX] {
            assert_eq!(p.delay_before(attempt), ms(250));
        }
    }

    #[test]
    fn any_attempt_and_any_fields_give_a_capped_delay_without_panicking() {
        let fields = [
            policy(100, 1000, 10.0, 86_400_000),
            policy(0, 86_400_000, 10.0, 86_400_000),
            policy(1, 5000, 2.0, 1000),
            policy(1, 1000, f64::NAN, 1000),
            policy(1, 1000, f64::INFINITY, 1000),
            policy(1, 1000, -3.0, 1000),
            policy(1, 0, 0.0, 0),
            RetryPolicy {
                initial_delay: Duration::MAX,
                max_delay: Duration::MAX,
                ..policy(1, 0, 2.0, 0)
            },
        ];
        for p in fields {
            for attempt in [
                0,
                1,
                2,
                3,
                40,
                1100,
                i32::MAX as u32,
                u32::MAX - 1,
                u32::MAX,
            ] {
                assert!(p.delay_before(attempt) <= p.max_delay, "{p:?} {attempt}");
            }
        }
        assert_eq!(
            policy(1, 1000, 10.0, 86_400_000).delay_before(u32::MAX),
            ms(86_400_000)
        );
    }

    fn retries_of(value: &str) -> Result<RetryPolicy, ManifestError> {
        let text =
            format!("name = \"ok\"\n[functions.f]\nmodule = \"m.wasm\"\nretries = {value}\n");
        parse(Path::new("app.toml"), &text, base_dir()).map(|m| m.functions["f"].retries)
    }

    #[test]
    fn no_key_is_no_retries() {
        let text = "name = \"ok\"\n[functions.f]\nmodule = \"m.wasm\"\n";
        let m = parse(Path::new("app.toml"), text, base_dir()).unwrap();
        assert_eq!(m.functions["f"].retries, RetryPolicy::default());
    }

    #[test]
    fn a_number_is_the_count_with_default_delays() {
        for n in [0, 2, 100] {
            assert_eq!(
                retries_of(&n.to_string()),
                Ok(RetryPolicy {
                    max: n,
                    ..RetryPolicy::default()
                })
            );
        }
    }

    #[test]
    fn a_table_sets_each_field_and_defaults_the_rest() {
        assert_eq!(
            retries_of(r#"{ max = 3, initial_delay = "250ms", backoff = 1.5, max_delay = "2m" }"#),
            Ok(policy(3, 250, 1.5, 120_000))
        );
        assert_eq!(retries_of("{ max = 4 }"), Ok(policy(4, 1000, 2.0, 60_000)));
        // An integer backoff is a number like any other.
        assert_eq!(
            retries_of("{ max = 1, backoff = 3 }"),
            Ok(policy(1, 1000, 3.0, 60_000))
        );
        assert_eq!(
            retries_of(r#"{ max = 1, initial_delay = "60s" }"#),
            Ok(policy(1, 60_000, 2.0, 60_000))
        );
        assert_eq!(
            retries_of(r#"{ max = 1, max_delay = "1s", backoff = 10.0 }"#),
            Ok(policy(1, 1000, 10.0, 1000))
        );
    }

    /// Each bad value is refused at its own line and column, with a fix.
    #[test]
    fn bad_values_are_refused_where_they_stand() {
        for (value, column, needle) in [
            ("-1", 11, "`retries = -1` is out of range"),
            ("101", 11, "`retries = 101` is out of range"),
            ("99999999999999999999", 11, "is out of range"),
            ("2.0", 11, "expected a whole number of retries"),
            ("\"2\"", 11, "expected a whole number of retries"),
            ("true", 11, "expected a whole number of retries"),
            ("[2]", 11, "expected a whole number of retries"),
            (
                "{ max = 101 }",
                19,
                "`max = 101` in `retries` is out of range",
            ),
            ("{ max = -1 }", 19, "`max = -1` in `retries`"),
            ("{ max = \"1\" }", 19, "expected a whole number"),
            ("{ initial_delay = \"1s\" }", 11, "missing key `max`"),
            ("{ max = 1, delay = \"1s\" }", 22, "unknown key `delay`"),
            (
                "{ max = 1, backoff = 0.5 }",
                32,
                "`backoff = 0.5` in `retries` is out of range",
            ),
            ("{ max = 1, backoff = 11 }", 32, "out of range"),
            ("{ max = 1, backoff = nan }", 32, "out of range"),
            ("{ max = 1, backoff = inf }", 32, "out of range"),
            ("{ max = 1, backoff = \"2\" }", 32, "expected a number"),
            (
                "{ max = 1, initial_delay = \"1x\" }",
                38,
                "bad `initial_delay` in `retries`",
            ),
            (
                "{ max = 1, max_delay = \"25h\" }",
                34,
                "bad `max_delay` in `retries`",
            ),
            ("{ max = 1, max_delay = \"0s\" }", 34, "would retry at once"),
            (
                "{ max = 1, initial_delay = \"2m\" }",
                38,
                "longer than `max_delay` (1m, the default)",
            ),
            (
                "{ max = 1, initial_delay = \"2s\", max_delay = \"1s\" }",
                38,
                "longer than `max_delay = \"1s\"`",
            ),
        ] {
            let e = retries_of(value).unwrap_err();
            let message = e.to_string();
            assert_eq!(e.position, Some((4, column)), "{value}: {message}");
            assert!(message.contains(needle), "{value}: {message}");
            assert!(
                message.contains("; fix: ") && !message.contains('\n'),
                "{message}"
            );
        }
    }
}
