//! Health checks and their durations: how a check probes a container (a command, an HTTP
//! request or a TCP connection), compose's test forms (`["CMD", ...]`, `["CMD-SHELL", "..."]`,
//! `["NONE"]`), compose's duration strings (`"10s"`, `"1m30s"`, `"500ms"`) and the bounds a
//! check must keep.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The shortest interval and timeout a check may have.
pub const MIN_PROBE_PERIOD: Duration = Duration::from_secs(1);
/// The longest interval, timeout and start period a check may have.
pub const MAX_PROBE_PERIOD: Duration = Duration::from_secs(3600);
/// The most consecutive failures a check may wait for before it turns unhealthy.
pub const MAX_RETRIES: u32 = 100;

/// How a health check probes its container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum HealthProbe {
    /// Runs `argv` inside the container (compose's `["CMD", ...]`); exit 0 is healthy.
    Exec {
        /// The command and its arguments.
        argv: Vec<String>,
    },
    /// Runs a command line with `/bin/sh -c` inside the container (compose's
    /// `["CMD-SHELL", "..."]`); exit 0 is healthy.
    Shell {
        /// The command line.
        command: String,
    },
    /// `GET http://<container address>:<port><path>` from the node; a 2xx or 3xx answer
    /// is healthy (redirects are not followed).
    Http {
        /// Port in the container.
        port: u16,
        /// Path requested, starting with `/`.
        path: String,
    },
    /// A TCP connection from the node to `<container address>:<port>`; an accepted
    /// connection is healthy.
    Tcp {
        /// Port in the container.
        port: u16,
    },
}

impl HealthProbe {
    /// The probe a compose or Docker `test` describes: `["CMD", argv...]`,
    /// `["CMD-SHELL", "line"]`, a plain argv (run as `CMD`), or `["NONE"]` (`None`: no check).
    pub fn from_test(test: &[String]) -> Result<Option<HealthProbe>, String> {
        match test {
            [] => Err("the health check command is empty".into()),
            [none] if none == "NONE" => Ok(None),
            [cmd, argv @ ..] if cmd == "CMD" => {
                if argv.is_empty() || argv[0].trim().is_empty() {
                    return Err("CMD needs a command to run".into());
                }
                Ok(Some(HealthProbe::Exec { argv: argv.to_vec() }))
            }
            [shell, rest @ ..] if shell == "CMD-SHELL" => match rest {
                [line] if !line.trim().is_empty() => Ok(Some(HealthProbe::Shell { command: line.clone() })),
                _ => Err("CMD-SHELL takes exactly one command line".into()),
            },
            [first, ..] if first.trim().is_empty() => Err("the health check command is empty".into()),
            argv => Ok(Some(HealthProbe::Exec { argv: argv.to_vec() })),
        }
    }

    /// The argv a command probe runs in the container (`/bin/sh -c LINE` for a shell
    /// line); `None` for HTTP and TCP probes, which run from the node.
    pub fn argv(&self) -> Option<Vec<String>> {
        match self {
            HealthProbe::Exec { argv } => Some(argv.clone()),
            HealthProbe::Shell { command } => Some(vec!["/bin/sh".into(), "-c".into(), command.clone()]),
            HealthProbe::Http { .. } | HealthProbe::Tcp { .. } => None,
        }
    }

    /// The compose/Docker `test` of a command probe (`["CMD", ...]` or
    /// `["CMD-SHELL", line]`); `None` for HTTP and TCP probes.
    pub fn test(&self) -> Option<Vec<String>> {
        match self {
            HealthProbe::Exec { argv } => Some(std::iter::once("CMD".to_owned()).chain(argv.iter().cloned()).collect()),
            HealthProbe::Shell { command } => Some(vec!["CMD-SHELL".into(), command.clone()]),
            HealthProbe::Http { .. } | HealthProbe::Tcp { .. } => None,
        }
    }

    /// The wire name of its kind: `cmd`, `http` or `tcp`.
    pub fn kind(&self) -> &'static str {
        match self {
            HealthProbe::Exec { .. } | HealthProbe::Shell { .. } => "cmd",
            HealthProbe::Http { .. } => "http",
            HealthProbe::Tcp { .. } => "tcp",
        }
    }
}

/// How a container's health is judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "HealthCheckRecord")]
pub struct HealthCheck {
    /// What is probed.
    pub probe: HealthProbe,
    /// Time between probes.
    pub interval: Duration,
    /// Time a probe may take; a slower one fails.
    pub timeout: Duration,
    /// Consecutive failures before unhealthy.
    pub retries: u32,
    /// Time after a start during which failures do not count (a success still makes
    /// the container healthy).
    #[serde(default)]
    pub start_period: Duration,
}

/// What stored health checks look like: today's form, or the older one whose command
/// was a plain `test` argv.
#[derive(Deserialize)]
struct HealthCheckRecord {
    #[serde(default)]
    probe: Option<HealthProbe>,
    #[serde(default)]
    test: Vec<String>,
    interval: Duration,
    timeout: Duration,
    retries: u32,
    #[serde(default)]
    start_period: Duration,
}

impl From<HealthCheckRecord> for HealthCheck {
    fn from(record: HealthCheckRecord) -> Self {
        HealthCheck {
            probe: record.probe.unwrap_or(HealthProbe::Exec { argv: record.test }),
            interval: record.interval,
            timeout: record.timeout,
            retries: record.retries,
            start_period: record.start_period,
        }
    }
}

/// A health check setting out of bounds: the field (`healthcheck.interval`, ...) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct InvalidHealthCheck {
    /// The field at fault, e.g. `healthcheck.interval`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> InvalidHealthCheck {
    InvalidHealthCheck { field, message: message.into() }
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

impl HealthCheck {
    /// A command check (`argv` run in the container) with today's defaults for the rest:
    /// every 30 s, 30 s timeout, 3 retries, no start period.
    pub fn command(argv: Vec<String>) -> Self {
        HealthCheck {
            probe: HealthProbe::Exec { argv },
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            retries: 3,
            start_period: Duration::ZERO,
        }
    }

    /// Checks the bounds: interval and timeout 1 s to 1 h, start period at most 1 h,
    /// retries 1 to 100, ports 1-65535, HTTP paths starting with `/`, no control
    /// characters in paths (nor in commands other than a shell line's newlines or tabs), and
    /// a non-empty command.
    pub fn validate(&self) -> Result<(), InvalidHealthCheck> {
        for (field, value) in [("healthcheck.interval", self.interval), ("healthcheck.timeout", self.timeout)] {
            if value < MIN_PROBE_PERIOD || value > MAX_PROBE_PERIOD {
                return Err(bad(field, format!("{} is outside 1s to 1h", format_duration(value))));
            }
        }
        if self.start_period > MAX_PROBE_PERIOD {
            return Err(bad("healthcheck.start_period", format!("{} is more than 1h", format_duration(self.start_period))));
        }
        if self.retries == 0 || self.retries > MAX_RETRIES {
            return Err(bad("healthcheck.retries", format!("{} is outside 1 to {MAX_RETRIES}", self.retries)));
        }
        match &self.probe {
            HealthProbe::Exec { argv } => {
                if argv.first().is_none_or(|program| program.trim().is_empty()) {
                    return Err(bad("healthcheck.test", "the health check command is empty"));
                }
                if argv.iter().any(|arg| has_control(arg) || arg.contains('\0')) {
                    return Err(bad("healthcheck.test", "arguments may not hold control characters"));
                }
            }
            HealthProbe::Shell { command } => {
                if command.trim().is_empty() {
                    return Err(bad("healthcheck.test", "the health check command is empty"));
                }
                if command.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    return Err(bad("healthcheck.test", "the command line may not hold control characters"));
                }
            }
            HealthProbe::Http { port, path } => {
                if *port == 0 {
                    return Err(bad("healthcheck.port", "0 is not a port (1-65535)"));
                }
                if !path.starts_with('/') || has_control(path) || path.contains(char::is_whitespace) || path.len() > 2048 {
                    return Err(bad("healthcheck.path", format!("{path:?} must start with '/' and hold no spaces or control characters")));
                }
            }
            HealthProbe::Tcp { port } => {
                if *port == 0 {
                    return Err(bad("healthcheck.port", "0 is not a port (1-65535)"));
                }
            }
        }
        Ok(())
    }
}

/// Nanoseconds in each unit a duration string may use.
const UNITS: [(&str, u128); 7] =
    [("h", 3_600_000_000_000), ("ms", 1_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000), ("us", 1_000), ("µs", 1_000), ("ns", 1)];

/// Parses a duration as compose writes it (Go's `time.ParseDuration` without signs):
/// numbers with units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`, concatenated (`"1m30s"`,
/// `"500ms"`, `"1.5s"`); a bare `"0"` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 10s, 1m30s or 500ms");
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    if trimmed.is_empty() {
        return Err(bad());
    }
    let mut rest = trimmed;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') || whole.len() > 20 || fraction.len() > 20 {
            return Err(bad());
        }
        let (unit, factor) = UNITS.iter().find(|(unit, _)| tail.starts_with(unit)).ok_or_else(bad)?;
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let mut part = whole.checked_mul(*factor).ok_or_else(bad)?;
        if !fraction.is_empty() {
            let digits: u128 = fraction.parse().map_err(|_| bad())?;
            let scale = 10u128.checked_pow(u32::try_from(fraction.len()).map_err(|_| bad())?).ok_or_else(bad)?;
            part = part.checked_add(digits.checked_mul(*factor).ok_or_else(bad)? / scale).ok_or_else(bad)?;
        }
        nanos = nanos.checked_add(part).ok_or_else(bad)?;
        rest = &tail[unit.len()..];
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, u32::try_from(nanos % 1_000_000_000).map_err(|_| bad())?))
}

/// Formats a duration the way [`parse_duration`] reads it: `1h2m3s`, `1m30s500ms`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".into();
    }
    let mut nanos = duration.as_nanos();
    let mut text = String::new();
    for (unit, factor) in
        [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000), ("ns", 1)]
    {
        let count = nanos / factor;
        nanos %= factor;
        if count > 0 {
            let _ = write!(text, "{count}{unit}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn durations_parse_as_compose_writes_them() {
        let cases = [
            ("10s", Some(Duration::from_secs(10))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("500ms", Some(Duration::from_millis(500))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1.5s", Some(Duration::from_millis(1500))),
            (".5s", Some(Duration::from_millis(500))),
            ("2h45m", Some(Duration::from_secs(9900))),
            ("10us", Some(Duration::from_micros(10))),
            ("10µs", Some(Duration::from_micros(10))),
            ("7ns", Some(Duration::from_nanos(7))),
            ("0", Some(Duration::ZERO)),
            ("0s", Some(Duration::ZERO)),
            (" 3s ", Some(Duration::from_secs(3))),
            ("", None),
            ("10", None),
            ("s", None),
            ("1.2.3s", None),
            ("-1s", None),
            ("10 s", None),
            ("5d", None),
            ("1m30", None),
            ("99999999999999999999999h", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text).ok(), expected, "{text:?}");
        }
        assert!(parse_duration("5d").expect_err("days").contains("\"5d\""));
    }

    #[test]
    fn durations_format_compactly() {
        for (duration, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::from_secs(3661), "1h1m1s"),
        ] {
            assert_eq!(format_duration(duration), text);
        }
    }

    proptest! {
        #[test]
        fn formatting_then_parsing_a_duration_round_trips(secs in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
            let duration = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
        }
    }

    #[test]
    fn compose_tests_make_probes() {
        let exec = |argv: &[&str]| Ok(Some(HealthProbe::Exec { argv: strings(argv) }));
        assert_eq!(HealthProbe::from_test(&strings(&["CMD", "curl", "-f", "http://x"])), exec(&["curl", "-f", "http://x"]));
        assert_eq!(HealthProbe::from_test(&strings(&["true"])), exec(&["true"]));
        assert_eq!(
            HealthProbe::from_test(&strings(&["CMD-SHELL", "test -f /ok || exit 1"])),
            Ok(Some(HealthProbe::Shell { command: "test -f /ok || exit 1".into() }))
        );
        assert_eq!(HealthProbe::from_test(&strings(&["NONE"])), Ok(None));
        for bad in [&[][..], &["CMD"], &["CMD-SHELL"], &["CMD-SHELL", "a", "b"], &["CMD", ""], &[" "]] {
            assert!(HealthProbe::from_test(&strings(bad)).is_err(), "{bad:?}");
        }
        let shell = HealthProbe::Shell { command: "exit 0".into() };
        assert_eq!(HealthProbe::from_test(&shell.test().expect("a command")), Ok(Some(shell.clone())));
        assert_eq!(shell.argv(), Some(strings(&["/bin/sh", "-c", "exit 0"])));
        assert_eq!(HealthProbe::Tcp { port: 80 }.test(), None);
    }

    #[test]
    fn validation_names_the_field_at_fault() {
        let ok = HealthCheck::command(strings(&["true"]));
        assert_eq!(ok.validate(), Ok(()));
        let field = |check: HealthCheck| check.validate().expect_err("out of bounds").field;
        let http = |port, path: &str| HealthCheck { probe: HealthProbe::Http { port, path: path.into() }, ..ok.clone() };
        assert_eq!(http(8080, "/healthz?x=1").validate(), Ok(()));
        assert_eq!(field(HealthCheck { interval: Duration::from_millis(500), ..ok.clone() }), "healthcheck.interval");
        assert_eq!(field(HealthCheck { interval: Duration::from_secs(3601), ..ok.clone() }), "healthcheck.interval");
        assert_eq!(field(HealthCheck { timeout: Duration::ZERO, ..ok.clone() }), "healthcheck.timeout");
        assert_eq!(field(HealthCheck { start_period: Duration::from_secs(7200), ..ok.clone() }), "healthcheck.start_period");
        assert_eq!(field(HealthCheck { retries: 0, ..ok.clone() }), "healthcheck.retries");
        assert_eq!(field(HealthCheck { retries: 101, ..ok.clone() }), "healthcheck.retries");
        assert_eq!(field(HealthCheck { probe: HealthProbe::Tcp { port: 0 }, ..ok.clone() }), "healthcheck.port");
        assert_eq!(field(http(0, "/")), "healthcheck.port");
        assert_eq!(field(http(80, "healthz")), "healthcheck.path");
        assert_eq!(field(http(80, "/a\nb")), "healthcheck.path");
        assert_eq!(field(HealthCheck { probe: HealthProbe::Exec { argv: vec![] }, ..ok.clone() }), "healthcheck.test");
        assert_eq!(field(HealthCheck { probe: HealthProbe::Shell { command: "a\u{1b}b".into() }, ..ok.clone() }), "healthcheck.test");
        let message = HealthCheck { interval: Duration::from_millis(500), ..ok }.validate().expect_err("too short").to_string();
        assert!(message.contains("healthcheck.interval") && message.contains("500ms"), "{message}");
    }

    #[test]
    fn stored_checks_of_the_older_form_still_read() {
        let old =
            serde_json::json!({"test": ["true"], "interval": {"secs": 5, "nanos": 0}, "timeout": {"secs": 1, "nanos": 0}, "retries": 3});
        let check: HealthCheck = serde_json::from_value(old).expect("older form");
        assert_eq!(check.probe, HealthProbe::Exec { argv: strings(&["true"]) });
        assert_eq!(check.start_period, Duration::ZERO);
        let tcp = HealthCheck { probe: HealthProbe::Tcp { port: 5432 }, start_period: Duration::from_secs(2), ..check };
        let back: HealthCheck = serde_json::from_value(serde_json::to_value(&tcp).expect("encodes")).expect("decodes");
        assert_eq!(back, tcp);
    }
}
