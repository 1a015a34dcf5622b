//! `butler-writer`: parse the command line, start logging, run.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = butler_writer::cli::Cli::parse();
    butler_writer::cli::init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("butler-writer: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(butler_writer::cli::run(cli))
}
