//! Runs live mode's inbound half on a PowerMTA config: the listener of its `smtp-listener`
//! lines and `<source>` rules, writing every accepted message to the durable spool, until
//! the process is stopped. It is how to try the listener and spool before the live driver
//! delivers (see docs/live.md), and the process the spool's crash test kills.
//!
//!     cargo run --release --example live_listener -- CONFIG [--spool DIR] [--listen IP:PORT]... [--discard]
//!
//! `--spool` overrides the config's `spool` directory, `--listen` its `smtp-listener` lines.
//! `--discard` settles each message as soon as it is accepted, as a `type discard` queue
//! would, so the spool empties again. Output: `recovered N messages`, one
//! `listening on IP:PORT` per socket, then `accepted ID` per message (stdout); quarantined
//! spool files on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use pmta_sim::config::{self, Options, RealFs};
use pmta_sim::driver::live::listener::{Listener, ListenerConfig};
use pmta_sim::driver::live::spool::{Outcome, Spool, SpoolLimits, SpoolSync};
use pmta_sim::inbound::{InboundSettings, ListenerLimits};

fn usage() -> ExitCode {
    eprintln!("usage: live_listener CONFIG [--spool DIR] [--listen IP:PORT]... [--discard]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(config_path) = args.next() else {
        return usage();
    };
    let (mut spool_dir, mut listen, mut discard) = (None, Vec::new(), false);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--spool", Some(dir)) => spool_dir = Some(PathBuf::from(dir)),
            ("--listen", Some(addr)) => match addr.parse() {
                Ok(addr) => listen.push(addr),
                Err(_) => return usage(),
            },
            ("--discard", next) => {
                discard = true;
                if next.is_some() {
                    return usage();
                }
            }
            _ => return usage(),
        }
    }
    let checked = match config::load(config_path.as_ref(), &RealFs, Options { live: true }) {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    if checked.error_count() > 0 {
        for diagnostic in &checked.diagnostics {
            eprint!("{}", diagnostic.render(&checked.config.sources));
        }
        return ExitCode::from(2);
    }
    let settings = match InboundSettings::from_config(&checked.config) {
        Ok(settings) => Arc::new(settings),
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let Some(dir) = spool_dir.or_else(|| settings.spool_dir.clone().map(PathBuf::from)) else {
        eprintln!("no spool directory: write `spool DIR` in the config or pass --spool DIR");
        return ExitCode::from(2);
    };
    let sync = SpoolSync {
        create: flag(&checked.config, "sync-msg-create"),
        update: flag(&checked.config, "sync-msg-update"),
    };
    let (spool, recovery) = match Spool::open(&dir, SpoolLimits::default(), sync) {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(1);
        }
    };
    for quarantined in &recovery.quarantined {
        eprintln!("{quarantined}");
    }
    println!("recovered {} messages", recovery.messages.len());
    let spool = Arc::new(spool);
    let (sink, mut accepted) = tokio::sync::mpsc::channel(1024);
    let config = ListenerConfig {
        settings,
        limits: ListenerLimits::default(),
        listen: (!listen.is_empty()).then_some(listen),
    };
    let listener = match Listener::start(config, spool.clone(), sink).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(1);
        }
    };
    for addr in listener.local_addrs() {
        println!("listening on {addr}");
    }
    while let Some(message) = accepted.recv().await {
        println!("accepted {}", message.id);
        if discard {
            for index in 0..message.injection.recipients.len() as u32 {
                if let Err(error) = spool.settle(message.id, index, Outcome::Delivered) {
                    eprintln!("{error}");
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn flag(config: &config::model::Config, name: &str) -> bool {
    !matches!(
        config.globals.get(name).map(|s| &s.value),
        Some(config::model::Value::Bool(false))
    )
}
