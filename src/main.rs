//! The `pmta-sim` binary: parse arguments, run the command, map the outcome to an exit code.
//!
//! Everything else lives in the library; see `cli.rs` for the commands and ARCHITECTURE.md for
//! the map of the rooms.

use std::process::ExitCode;

/// mimalloc instead of the system allocator: live mode holds a million queued messages as
/// many small allocations, where glibc's 16-byte header and 32-byte minimum per block cost
/// about a quarter of the memory, and its threads free what other threads allocated (the
/// listener's messages end in the engine loop), which mimalloc does without a lock; a
/// simulation allocates and frees small buffers (SMTP segments, records) by the million.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    pmta_sim::cli::main()
}
