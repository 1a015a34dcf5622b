//! `record-producer`: see the library documentation and `record-producer --help`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use record_producer::Mode;
use record_producer::cli::{Cli, Command};
use service_kit::chain;
use service_kit::logging::{LogFormat, init_logging};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Text: the producer's log lines sit beside its report, read by people.
    init_logging("info", LogFormat::Text, &[]);
    let (args, mode) = match cli.command {
        Command::Night(args) => (args, Mode::Night),
        Command::Burst(args) => (args, Mode::Burst),
        Command::Backlog(args) => (args, Mode::Backlog),
        Command::CreateTopics(args) => return create_topics(args).await,
    };
    let report_json = args.report_json.clone();
    let mut settings = match args.into_settings(mode) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("record-producer: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    settings.progress &= std::io::stderr().is_terminal();
    let report = match record_producer::run(settings).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("record-producer: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    #[allow(clippy::print_stdout)]
    {
        print!("{}", report.table());
    }
    if let Some(path) = report_json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if path.as_os_str() == "-" {
            #[allow(clippy::print_stdout)]
            {
                println!("{json}");
            }
        } else if let Err(e) = std::fs::write(&path, json + "\n") {
            eprintln!("record-producer: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.outcome.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn create_topics(args: record_producer::cli::CreateTopicsArgs) -> ExitCode {
    let (kafka, topics) = match args.into_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("record-producer: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    let topics: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    match record_producer::create_topics(&kafka, &topics).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("record-producer: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}
