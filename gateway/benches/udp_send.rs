//! What one media datagram costs the thread that sends it through an io_uring ring, three
//! ways: `IORING_OP_SENDMSG` with the destination's address on an unconnected socket (the
//! trunks' sends, and the browsers' without a direct path), `IORING_OP_SENDMSG` on a socket
//! connected to it (a browser's direct path, `media::outgoing`), and `IORING_OP_SEND` on a
//! connected socket. Batches of 32 datagrams of 172 bytes (an SRTP audio packet) go to a
//! loopback socket a thread drains, a batch every 200 µs, as a busy worker's turn sends them.
//! The figure is the sending thread's CPU time per datagram (`CLOCK_THREAD_CPUTIME_ID`),
//! which includes the loopback's delivery to the receiver.
//!
//! Run: `cargo bench -p gateway --bench udp_send` (`BATCHES=N` for another length).

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};
use nix::libc;
use nix::sys::socket::{SockaddrIn, SockaddrLike};

const SOCKETS: usize = 32;
const DATAGRAM: usize = 172;

fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the struct it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    SendmsgTo,
    SendmsgConnected,
    SendConnected,
}

fn ns_per_datagram(way: Way, batches: usize) -> f64 {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = receiver.local_addr().unwrap();
    let drain = receiver.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while drain.recv(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let sockets: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            if way != Way::SendmsgTo {
                s.connect(to).unwrap();
            }
            s
        })
        .collect();
    let mut ring = IoUring::new(64).unwrap();
    let bytes = [0x80u8; DATAGRAM];
    let address = match to {
        std::net::SocketAddr::V4(v4) => SockaddrIn::from(v4),
        _ => unreachable!(),
    };
    let mut slice = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is an empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut slice;
    header.msg_iovlen = 1;
    if way == Way::SendmsgTo {
        header.msg_name = address.as_ptr() as *mut libc::c_void;
        header.msg_namelen = address.len();
    }
    let started = thread_cpu_ns();
    for _ in 0..batches {
        {
            let mut queue = ring.submission();
            for socket in &sockets {
                let fd = types::Fd(socket.as_raw_fd());
                let entry = match way {
                    Way::SendConnected => opcode::Send::new(fd, bytes.as_ptr(), DATAGRAM as u32)
                        .flags(libc::MSG_DONTWAIT)
                        .build(),
                    _ => opcode::SendMsg::new(fd, &header)
                        .flags(libc::MSG_DONTWAIT as u32)
                        .build(),
                };
                // SAFETY: the header, its slice and address, and the bytes outlive the entry:
                // every completion is reaped below before they go.
                unsafe { queue.push(&entry) }.unwrap();
            }
        }
        ring.submit_and_wait(SOCKETS).unwrap();
        for completion in ring.completion() {
            assert_eq!(completion.result(), DATAGRAM as i32, "a send failed");
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let spent = thread_cpu_ns() - started;
    // The drain thread ends on an empty datagram.
    sockets[0].send_to(&[], to).unwrap();
    spent / (batches * SOCKETS) as f64
}

fn main() {
    let batches = std::env::var("BATCHES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(20_000);
    if IoUring::new(8).is_err() {
        println!("no io_uring here: nothing to measure");
        return;
    }
    for round in 1..=3 {
        let to = ns_per_datagram(Way::SendmsgTo, batches);
        let connected = ns_per_datagram(Way::SendmsgConnected, batches);
        let send = ns_per_datagram(Way::SendConnected, batches);
        println!(
            "round {round}: SENDMSG to an address {to:.0} ns a datagram; SENDMSG connected \
             {connected:.0} ns ({:+.1} %); SEND connected {send:.0} ns ({:+.1} %)",
            (connected / to - 1.0) * 100.0,
            (send / to - 1.0) * 100.0
        );
    }
}
