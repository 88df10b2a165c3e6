//! What reading media datagrams costs a paced worker two ways: as the gateway reads them
//! (`epoll_wait` once a 2 ms turn, then the gateway's own read, one `recvmmsg`, per readable
//! socket: `gateway::media::incoming::recv_unwatched`), and through io_uring (a multishot `recvmsg` armed on every
//! socket, its datagrams landing in a ring of provided buffers, gathered once a turn by one
//! `io_uring_enter`, `IORING_SETUP_DEFER_TASKRUN`). Prints the reading thread's CPU per
//! datagram for each, rounds alternated, and the medians.
//!
//! Why: a call's sockets each hold about one datagram a turn, so the gateway makes about one
//! `recvmmsg` per datagram (100 a call a second, `scripts/load_ramp.py --profile`), and
//! io_uring would gather them without a system call each. This measures what that would save
//! before the media path is rebuilt around it (docs/benchmarks-history.md).
//!
//! A sender thread sends 172-byte datagrams (20 ms of G.711 in RTP) on loopback to every
//! socket, spread over each turn; only the reading thread's CPU time is counted
//! (`CLOCK_THREAD_CPUTIME_ID`), including its sleeps' wake-ups, which both ways pay alike.
//! The gateway's read also parses each datagram's source and control messages, which the
//! io_uring way here skips: what it saves is at most what io_uring would save the gateway.
//!
//! Usage: `recv-compare [--sockets 100] [--pps 50] [--seconds 10] [--rounds 3]`.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use gateway::media::incoming::{self, BATCH, DATAGRAM, Got};
use nix::libc;

/// `recv-compare`'s arguments.
#[derive(Parser)]
#[command(about = "The CPU a paced worker spends reading datagrams: recvmmsg or io_uring")]
struct Args {
    /// Receiving sockets (two a call: the browser's and the trunk's).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=4000))]
    sockets: u64,
    /// Datagrams a second to each socket (50: one 20 ms frame each).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pps: u64,
    /// Length of each way's run, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Rounds, each running both ways.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    rounds: u64,
}

/// A worker's turn.
const TURN: Duration = Duration::from_millis(2);
/// Buffers in the io_uring's provided-buffer ring (a power of two).
const BUFFERS: u16 = 1024;
/// The buffer group the ring's buffers are provided under.
const GROUP: u16 = 1;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sleeps until the next turn starts.
fn next_turn(turn: &mut Instant) {
    *turn += TURN;
    if let Some(rest) = turn.checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
}

/// Sends `pps` datagrams a second to each of `ports`, a turn's share each turn, until `until`.
fn send(ports: Vec<u16>, pps: u64, until: Instant) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a sending socket");
    let payload = [0x80u8; 172];
    let per_second = ports.len() as u64 * pps;
    let (mut turn, start, mut sent) = (Instant::now(), Instant::now(), 0u64);
    while Instant::now() < until {
        let due = (start.elapsed().as_secs_f64() * per_second as f64) as u64;
        for k in sent..due {
            let _ = socket.send_to(&payload, ("127.0.0.1", ports[k as usize % ports.len()]));
        }
        sent = due;
        next_turn(&mut turn);
    }
}

/// The gateway's way: a turn's `epoll_wait`, then its own read
/// (`gateway::media::incoming::recv_unwatched`, one `recvmmsg`) on each readable socket until
/// it takes fewer than it asked for. Returns the datagrams read.
fn read_with_recvmmsg(sockets: &[UdpSocket], until: Instant) -> u64 {
    // SAFETY: plain system calls on descriptors this function owns or borrows for its run.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        epoll >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    for (i, socket) in sockets.iter().enumerate() {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: i as u64,
        };
        // SAFETY: as above; `event` is live for the call.
        let added =
            unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut event) };
        assert_eq!(added, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; sockets.len()];
    let mut bufs = [[0u8; DATAGRAM]; BATCH];
    let mut got = [Got::empty(); BATCH];
    let (mut read, mut turn) = (0u64, Instant::now());
    while Instant::now() < until {
        // SAFETY: `events` has room for the count given.
        let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 0) };
        for event in &events[..ready.max(0) as usize] {
            let socket = &sockets[event.u64 as usize];
            // The gateway's own read: fewer than a batch means the socket is drained.
            while let Ok(taken) = incoming::recv_unwatched(socket, &mut bufs, &mut got) {
                read += taken as u64;
                if taken < BATCH {
                    break;
                }
            }
        }
        next_turn(&mut turn);
    }
    // SAFETY: the descriptor is this function's.
    unsafe { libc::close(epoll) };
    read
}

/// One entry of a provided-buffer ring (`struct io_uring_buf`, include/uapi/linux/io_uring.h).
#[repr(C)]
struct RingBuffer {
    addr: u64,
    len: u32,
    bid: u16,
    /// The ring's tail, in its first entry.
    resv: u16,
}

/// The io_uring way: a multishot `recvmsg` on every socket into provided buffers; once a turn
/// one `io_uring_enter` runs the deferred receives and the turn reaps their completions.
/// Returns the datagrams read.
fn read_with_io_uring(sockets: &[UdpSocket], until: Instant) -> u64 {
    use io_uring::{IoUring, cqueue, opcode, types};
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(4 * u32::from(BUFFERS))
        .build(256)
        .expect("an io_uring ring (kernel 6.1 or later)");
    let entries_len = usize::from(BUFFERS) * std::mem::size_of::<RingBuffer>();
    // SAFETY: an anonymous private mapping, page-aligned as the kernel asks of a buffer ring,
    // unmapped at the end once the ring that uses it is gone.
    let entries = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            entries_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
            -1,
            0,
        )
    };
    assert_ne!(
        entries,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let entries = entries.cast::<RingBuffer>();
    let mut pool = vec![0u8; usize::from(BUFFERS) * DATAGRAM];
    let base = pool.as_mut_ptr() as u64;
    // SAFETY: `entries` is the mapping above, of `BUFFERS` entries, alive until the end.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(entries as u64, BUFFERS, GROUP, 0)
    }
    .expect("a provided-buffer ring (kernel 5.19 or later)");
    // SAFETY: the tail is the first entry's last field, which the kernel reads atomically.
    let tail_at = unsafe { &*entries.cast::<u8>().add(14).cast::<AtomicU16>() };
    let mut tail = 0u16;
    let provide = |bid: u16, tail: &mut u16| {
        // SAFETY: the slot is inside the mapping (masked); the kernel reads it only once the
        // tail is published past it.
        unsafe {
            let slot = entries.add(usize::from(*tail & (BUFFERS - 1)));
            (*slot).addr = base + u64::from(bid) * DATAGRAM as u64;
            (*slot).len = DATAGRAM as u32;
            (*slot).bid = bid;
        }
        *tail = tail.wrapping_add(1);
    };
    for bid in 0..BUFFERS {
        provide(bid, &mut tail);
    }
    tail_at.store(tail, Ordering::Release);
    // SAFETY: all-zero bytes are a valid `msghdr`; only its name length is used.
    let mut template: libc::msghdr = unsafe { std::mem::zeroed() };
    template.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let arm = |ring: &mut IoUring, i: usize| {
        let entry = opcode::RecvMsgMulti::new(types::Fd(sockets[i].as_raw_fd()), &template, GROUP)
            .build()
            .user_data(i as u64);
        // SAFETY: the template and sockets outlive the ring's use of them (the ring is dropped
        // first, at the end of this function, which ends its requests).
        unsafe { ring.submission().push(&entry) }.expect("room in the submission queue");
    };
    for i in 0..sockets.len() {
        if ring.submission().is_full() {
            ring.submit().expect("io_uring_enter");
        }
        arm(&mut ring, i);
    }
    ring.submit().expect("io_uring_enter");
    let (mut read, mut turn, mut rearm) = (0u64, Instant::now(), Vec::new());
    while Instant::now() < until {
        // SAFETY: no argument is passed; GETEVENTS runs the deferred receives.
        unsafe {
            ring.submitter()
                .enter::<libc::sigset_t>(0, 0, 1 /* IORING_ENTER_GETEVENTS */, None)
        }
        .expect("io_uring_enter");
        for completion in ring.completion() {
            if completion.result() >= 0
                && let Some(bid) = cqueue::buffer_select(completion.flags())
            {
                let at = usize::from(bid) * DATAGRAM;
                let filled = &pool[at..at + completion.result() as usize];
                let datagram = types::RecvMsgOut::parse(filled, &template).expect("a datagram");
                std::hint::black_box(datagram.payload_data());
                read += 1;
                provide(bid, &mut tail);
            }
            if !cqueue::more(completion.flags()) {
                // Out of buffers, or ended: armed again below.
                rearm.push(completion.user_data() as usize);
            }
        }
        tail_at.store(tail, Ordering::Release);
        for i in rearm.drain(..) {
            if ring.submission().is_full() {
                ring.submit().expect("io_uring_enter");
            }
            arm(&mut ring, i);
        }
        if !ring.submission().is_empty() {
            ring.submit().expect("io_uring_enter");
        }
        next_turn(&mut turn);
    }
    drop(ring);
    // SAFETY: the ring that used the mapping is gone.
    unsafe { libc::munmap(entries.cast(), entries_len) };
    read
}

/// One way's run: the reading thread's CPU per datagram, ns, and its share of a core.
fn run(way: &str, args: &Args) -> (f64, f64) {
    let sockets: Vec<UdpSocket> = (0..args.sockets)
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("a receiving socket");
            socket.set_nonblocking(true).expect("non-blocking");
            socket
        })
        .collect();
    let ports = sockets
        .iter()
        .map(|s| s.local_addr().expect("bound").port())
        .collect();
    let seconds = Duration::from_secs(args.seconds);
    let until = Instant::now() + seconds;
    let pps = args.pps;
    let sender = std::thread::spawn(move || send(ports, pps, until));
    let cpu = thread_cpu();
    let read = match way {
        "recvmmsg" => read_with_recvmmsg(&sockets, until),
        _ => read_with_io_uring(&sockets, until),
    };
    let cpu = thread_cpu() - cpu;
    sender.join().expect("the sender");
    let per_datagram = cpu.as_nanos() as f64 / read.max(1) as f64;
    let share = cpu.as_secs_f64() / seconds.as_secs_f64() * 100.0;
    println!("{way}: {read} datagrams, {per_datagram:.0} ns a datagram, {share:.2} % of a core");
    (per_datagram, share)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    let mut results = [Vec::new(), Vec::new()];
    for _ in 0..args.rounds {
        for (k, way) in ["recvmmsg", "io_uring"].into_iter().enumerate() {
            results[k].push(run(way, &args).0);
        }
    }
    let [recvmmsg, io_uring] = results.map(median);
    println!(
        "medians of {} rounds, {} sockets at {} datagrams a second each: recvmmsg {recvmmsg:.0} ns, \
         io_uring {io_uring:.0} ns a datagram ({:+.0} %)",
        args.rounds,
        args.sockets,
        args.pps,
        (io_uring / recvmmsg - 1.0) * 100.0
    );
    // A call's sockets receive 100 datagrams a second (50 from the browser, 50 from the trunk).
    let saved_ns = recvmmsg - io_uring;
    println!(
        "io_uring would save {saved_ns:.0} ns a datagram: {:.4} % of a core a call at 100 \
         datagrams a call a second",
        saved_ns * 100.0 / 1e9 * 100.0
    );
}
