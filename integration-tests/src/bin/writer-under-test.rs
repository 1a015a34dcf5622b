//! `butler-writer` itself (its `main`), built in this package so the scenarios can run it as a
//! process they can kill, and always from the current sources.

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    // Faults come from the environment: a scenario asks the writer to kill itself mid-transaction.
    butler_writer::cli::main_with_faults(Arc::new(integration_tests::EnvFaults::from_env()))
}
