//! `publication-consumer`: parse the command line, start logging, run.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = publication_consumer::cli::Cli::parse();
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
