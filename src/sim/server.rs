//! One connection to a simulated provider, as its MX host sees it: pmta-sim's server
//! session under the provider's policy, with the time of each input passed in.
//!
//! Owns the order of a receiver connection (accept at `now`, bytes in, replies out, STARTTLS
//! completed as protocol, close at `now`), shared by the turmoil and fast drivers. Must not:
//! read a clock or own a socket.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use crate::isp::{Provider, Receiver};
use crate::smtp::server::ServerSession;
use crate::time::Time;

/// A provider's side of one connection.
pub struct ServerConn {
    session: ServerSession<Receiver>,
}

impl ServerConn {
    /// A connection from `peer` accepted at `now`: the greeting is waiting in the output.
    pub fn accept(provider: Rc<RefCell<Provider>>, peer: IpAddr, now: Time) -> ServerConn {
        ServerConn {
            session: ServerSession::new(Receiver::connect(provider, peer, now), now),
        }
    }

    /// Bytes from the client at `now`.
    pub fn handle_bytes(&mut self, now: Time, bytes: &[u8]) {
        self.session.handle_bytes(now, bytes);
        if self.session.tls_pending {
            // Simulated TLS is negotiated as protocol: once the 220 is out, the channel is
            // "encrypted" and the session starts over.
            self.session.tls_established(now);
        }
    }

    /// The replies to send, if any.
    pub fn take_output(&mut self) -> Option<Vec<u8>> {
        self.session.take_output()
    }

    /// The server ended the session (after a 421, or a silent close).
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// The connection is gone at `now`, whoever ended it.
    pub fn close(&mut self, now: Time) {
        self.session.close(now);
    }
}
