//! The live driver's parts that stand on their own: the inbound SMTP listener, the durable
//! spool, mail host lookups and TLS, each over real sockets, files and time.
//!
//! Owns the real world's edges for live mode. The pure decisions they carry out live
//! elsewhere (`inbound` for relay and AUTH answers, `smtp::server` for the protocol, the
//! engine for delivery); this room only does I/O, reads the wall clock, and keeps every
//! buffer, wait and file bounded. It must not copy a decision from those rooms.

pub mod acct;
pub mod dns;
pub mod listener;
pub mod mgmt;
pub mod observe;
pub mod run;
pub mod shared;
pub mod spool;
pub mod tls;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::time::Time;

/// Now, for a message's `timeQueued` (live mode's one clock, with tokio's for timeouts).
pub fn wall_clock() -> Time {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Time::from_ms(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// One line on standard error for an operator: what happened and to what.
pub fn log(line: &str) {
    eprintln!("pmta-sim: {line}");
}
