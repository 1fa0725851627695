//! The `pmta-sim` binary: parse arguments, run the command, map the outcome to an exit code.
//!
//! Everything else lives in the library; see `cli.rs` for the commands and ARCHITECTURE.md for
//! the map of the rooms.

use std::process::ExitCode;

/// mimalloc: a simulation allocates and frees small buffers (SMTP segments, records) by the
/// million; it is markedly faster at that than the system allocator (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    pmta_sim::cli::main()
}
