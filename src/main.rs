//! The `pmta-sim` binary: parse arguments, run the command, map the outcome to an exit code.
//!
//! Everything else lives in the library; see `cli.rs` for the commands and ARCHITECTURE.md for
//! the map of the rooms.

use std::process::ExitCode;

fn main() -> ExitCode {
    pmta_sim::cli::main()
}
