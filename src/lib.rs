//! pmta-sim: a mail delivery engine that reads PowerMTA's configuration language, and a
//! deterministic lab around it. See ARCHITECTURE.md for the map of the rooms.

pub mod auth;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod driver;
pub mod engine;
pub mod inbound;
pub mod isp;
pub mod printable;
pub mod rate;
pub mod report;
pub mod rundir;
pub mod scenario;
pub mod sim;
pub mod smtp;
pub mod time;
pub mod warmup;
