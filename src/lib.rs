//! pmta-sim: a mail delivery engine that reads PowerMTA's configuration language, and a
//! deterministic lab around it. See ARCHITECTURE.md for the map of the rooms.

pub mod auth;
pub mod cli;
pub mod config;
pub mod engine;
pub mod smtp;
