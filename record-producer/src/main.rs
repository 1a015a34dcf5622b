//! `record-producer`: see the library documentation and `record-producer --help`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use record_producer::cli::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let report_json = args.report_json.clone();
    let mut settings = match args.into_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("record-producer: {e}");
            return ExitCode::from(2);
        }
    };
    settings.progress &= std::io::stderr().is_terminal();
    let report = match record_producer::run(settings).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("record-producer: {e:#}");
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
