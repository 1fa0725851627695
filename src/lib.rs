//! pmta-sim: a mail delivery engine that reads PowerMTA's configuration language, and a
//! deterministic lab around it. See ARCHITECTURE.md for the map of the rooms.

pub mod cli;
pub mod config;
