//! Prints the table of the scenarios' figures (`target/scenario-figures/*.json`), as
//! `scripts/test` does at the end of a run.

use std::process::ExitCode;

fn main() -> ExitCode {
    match integration_tests::figures_table() {
        Ok(table) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{table}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scenario-table: {e:#}");
            ExitCode::FAILURE
        }
    }
}
