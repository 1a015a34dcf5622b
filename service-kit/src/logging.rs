//! Logging set-up, the same for every service: one line per event on stderr, JSON in production
//! (the deployed writer's log lines are read by dashboards), text on a terminal.

use clap::Args;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Starts logging to stderr: `RUST_LOG` if set (a full filter), else `level`; JSON or text by
/// `format`. A level more verbose than `info` applies to the service's own `targets` only, the
/// libraries staying at `info`: the deployed writer runs at DEBUG for its timing lines, and the
/// database driver's and the HTTP stack's debug lines would bury them. A second call does nothing
/// (tests start several services in one process).
pub fn init_logging(level: &str, format: LogFormat, targets: &[&str]) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives(level, targets)));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    };
}

/// The filter of a `level` for a service whose own log lines come from `targets`.
fn directives(level: &str, targets: &[&str]) -> String {
    let level = level.to_lowercase();
    if matches!(level.as_str(), "debug" | "trace") {
        std::iter::once("info".to_owned())
            .chain(targets.iter().map(|t| format!("{t}={level}")))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        level
    }
}

/// The environment variables a service's logging flags read (see [`LogArgs`]), and where its own
/// log lines come from.
pub trait LogArgNames: Send + Sync + 'static {
    /// The level's variable (the deployed writer's `WRITER_DEBUG_LEVEL`).
    const LEVEL: &'static str;
    /// The format's variable.
    const FORMAT: &'static str;
    /// The `tracing` targets of the service's own lines (its crates, the kit's), which a level
    /// more verbose than `info` applies to.
    const TARGETS: &'static [&'static str];
}

/// The logging flags of a service's command line, global to its subcommands: `--log-level` and
/// `--log-format`, read from the variables `N` names.
#[derive(Debug, Clone)]
pub struct LogArgs<N> {
    /// Log level (error, warn, info, debug, trace); `RUST_LOG` takes a full filter instead.
    pub level: String,
    /// Log format.
    pub format: LogFormat,
    names: std::marker::PhantomData<N>,
}

impl<N: LogArgNames> LogArgs<N> {
    /// Starts logging with these flags ([`init_logging`]).
    pub fn init(&self) {
        init_logging(&self.level, self.format, N::TARGETS);
    }
}

impl<N: LogArgNames> Args for LogArgs<N> {
    fn augment_args(command: clap::Command) -> clap::Command {
        command
            .arg(
                clap::Arg::new("log_level")
                    .long("log-level")
                    .global(true)
                    .env(N::LEVEL)
                    .default_value("info")
                    .help(
                        "Log level (error, warn, info, debug, trace); `RUST_LOG` takes a full filter instead",
                    ),
            )
            .arg(
                clap::Arg::new("log_format")
                    .long("log-format")
                    .global(true)
                    .env(N::FORMAT)
                    .value_parser(clap::value_parser!(LogFormat))
                    .default_value("auto")
                    .help(
                        "Log format: `json` (one object per line, for production), `text` (for a terminal), or `auto` (text on a terminal, JSON otherwise)",
                    ),
            )
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl<N: LogArgNames> clap::FromArgMatches for LogArgs<N> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            level: matches
                .get_one::<String>("log_level")
                .cloned()
                .unwrap_or_else(|| "info".to_owned()),
            format: matches
                .get_one::<LogFormat>("log_format")
                .copied()
                .unwrap_or(LogFormat::Auto),
            names: std::marker::PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verbose_level_applies_to_the_services_own_lines() {
        assert_eq!(
            directives("DEBUG", &["butler_writer", "timer"]),
            "info,butler_writer=debug,timer=debug"
        );
        assert_eq!(directives("WARN", &["butler_writer"]), "warn");
        assert_eq!(directives("info", &["butler_writer"]), "info");
    }
}
