//! `publication-consumer`: read the Prompt Publication Service's variables as ours, parse the
//! command line, start logging, run.

use std::process::ExitCode;

use clap::Parser;
use publication_consumer::pps_variables;

fn main() -> ExitCode {
    let args = match pps_variables::translate(std::env::args_os().collect(), |name| {
        std::env::var(name).ok()
    }) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("publication-consumer: {error}");
            return ExitCode::from(2);
        }
    };
    let cli = publication_consumer::cli::Cli::parse_from(args);
    publication_consumer::cli::init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("publication-consumer: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(publication_consumer::cli::run(cli))
}
