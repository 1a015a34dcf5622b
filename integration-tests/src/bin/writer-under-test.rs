//! `butler-writer` itself (its `main`), built in this package so the scenarios can run it as a
//! process they can kill, and always from the current sources.

use std::process::ExitCode;

fn main() -> ExitCode {
    butler_writer::cli::main()
}
