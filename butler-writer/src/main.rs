//! `butler-writer`: see [`butler_writer::cli::main`].

use std::process::ExitCode;

fn main() -> ExitCode {
    butler_writer::cli::main()
}
