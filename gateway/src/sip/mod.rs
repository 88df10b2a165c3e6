//! The SIP trunk leg on `rsip`: transports, transactions, dialogs, digest authentication,
//! SDP for G.711, and the outbound call with failover.

pub mod auth;
mod canonical;
pub mod dialog;
pub mod edge;
pub mod endpoint;
pub mod message;
pub mod monitor;
pub mod registration;
pub mod sdp;
pub mod transaction;
pub mod transport;
pub mod trunk;
pub mod values;
