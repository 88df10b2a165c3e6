//! What the endpoint sends: after each turn, what the transactions it touched want sent (and
//! their events and next timers); responses back to where their request came from; requests to
//! their target, over UDP or a connection, opened on first use.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::{Core, TxKey};
use crate::sip::transaction::ServerEvent;
use crate::sip::transport::{self, Target, Transport};

impl Core {
    pub(super) fn send_back(&mut self, peer: SocketAddr, transport: Transport, bytes: Vec<u8>) {
        match transport {
            Transport::Udp => {
                let _ = self.udp_send.send_to(&bytes, peer);
            }
            _ => self.send_on_stream(peer, bytes),
        }
    }

    /// Queues `bytes` on an open connection. A full queue means the peer has stopped
    /// reading: the connection is dropped (its writer ends, the stream closes) rather than
    /// let it hold our memory.
    fn send_on_stream(&mut self, peer: SocketAddr, bytes: Vec<u8>) {
        let Some(tx) = self.streams.get(&peer) else {
            return;
        };
        match tx.try_send(bytes) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%peer, "SIP connection's write queue is full; dropping the connection");
                self.streams.remove(&peer);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.streams.remove(&peer);
            }
        }
    }

    pub(super) fn send_to_target(&mut self, target: &Target, bytes: Vec<u8>) {
        if target.transport == Transport::Udp {
            if let Err(e) = self.udp_send.send_to(&bytes, target.addr) {
                tracing::debug!(peer = %target.addr, error = %e, "UDP send failed");
            }
            return;
        }
        if self.streams.contains_key(&target.addr) {
            self.send_on_stream(target.addr, bytes);
            return;
        }
        if let Some(queue) = self.pending_streams.get_mut(&target.addr) {
            if queue.len() < transport::WRITE_QUEUE {
                queue.push(bytes);
            }
            return;
        }
        self.pending_streams.insert(target.addr, Vec::new());
        tokio::spawn(transport::connect(
            target.clone(),
            self.stream_tx.clone(),
            vec![bytes],
        ));
    }

    /// Carries out what the transactions touched since the last flush want: bytes to
    /// send, events for their users, their next timer; ended transactions leave the tables.
    pub(super) async fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort();
        dirty.dedup();
        for key in dirty {
            match key {
                TxKey::Client(k) => self.flush_client(k),
                TxKey::Server(k) => self.flush_server(k),
            }
        }
        self.tables
            .transactions
            .store(self.clients.len() + self.servers.len(), Ordering::Relaxed);
        self.tables
            .dialogs
            .store(self.dialogs.len(), Ordering::Relaxed);
    }

    fn flush_client(&mut self, key: String) {
        let Some(e) = self.clients.get_mut(&key) else {
            return;
        };
        let mut out = Vec::new();
        while let Some(bytes) = e.tx.poll_transmit() {
            out.push(bytes);
        }
        while let Some(ev) = e.tx.poll_event() {
            self.tables.count_lost(e.events.send(ev));
        }
        let target = e.target.clone();
        if e.tx.is_terminated() {
            self.clients.remove(&key);
        } else if let Some(at) = e.tx.poll_timeout() {
            self.timer_heap.push(Reverse((at, TxKey::Client(key))));
        }
        for bytes in out {
            self.send_to_target(&target, bytes);
        }
    }

    fn flush_server(&mut self, key: String) {
        let Some(e) = self.servers.get_mut(&key) else {
            return;
        };
        let mut out = Vec::new();
        while let Some(bytes) = e.tx.poll_transmit() {
            out.push(bytes);
        }
        while let Some(ev) = e.tx.poll_event() {
            if ev == ServerEvent::AckTimeout {
                // The call that sent the 2xx runs its own ACK timer and ends itself.
                tracing::warn!(call_id = %e.call_id, "no ACK for final response (Timer H)");
            }
        }
        let (source, transport) = (e.source, e.transport);
        if e.tx.is_terminated() {
            let ended = (e.call_id.clone(), e.cseq);
            if self.invites.get(&ended) == Some(&key) {
                self.invites.remove(&ended);
            }
            self.servers.remove(&key);
        } else if let Some(at) = e.tx.poll_timeout() {
            self.timer_heap.push(Reverse((at, TxKey::Server(key))));
        }
        for bytes in out {
            self.send_back(source, transport, bytes);
        }
    }
}
