//! The SIP trunk leg on `rsip`: transports, transactions, dialogs, digest authentication,
//! SDP for G.711, the trunks' live state and the sans-IO INVITE client.

pub mod auth;
mod canonical;
pub mod dialog;
pub mod edge;
pub mod endpoint;
pub mod extensions;
pub mod message;
pub mod monitor;
pub mod registration;
pub mod sdp;
pub mod transaction;
pub mod transport;
pub mod trunks;
pub mod uac;
pub mod values;

/// What a sans-IO SIP user (a call, the INVITE client) asks of the endpoint. The driver
/// carries it out; responses to a `Request` come back tagged with its `tx`, requests for a
/// listened-to Call-ID come back with an id to `Respond` with.
#[derive(Debug, Clone)]
pub enum Transmit {
    /// Start a client transaction.
    Request {
        /// The caller's id for the transaction.
        tx: u64,
        /// The request.
        request: rsip::Request,
        /// Where it goes.
        target: transport::Target,
    },
    /// Send outside any transaction: the ACK for a 2xx (§13.2.2.4).
    Stateless {
        /// The request.
        request: rsip::Request,
        /// Where it goes.
        target: transport::Target,
    },
    /// Answer the server transaction of an incoming request.
    Respond {
        /// The id the request arrived with.
        id: u64,
        /// The response.
        response: rsip::Response,
    },
    /// Forget a client transaction that will never end by itself: an INVITE left in
    /// Proceeding after its CANCEL went unanswered for 64·T1 (§9.1).
    Abandon {
        /// The INVITE.
        request: Box<rsip::Request>,
    },
    /// Route requests with this Call-ID to the caller from now on.
    Listen(String),
    /// Stop routing this Call-ID.
    Forget(String),
}
