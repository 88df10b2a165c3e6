use super::*;
use std::time::Duration;

/// A STUN Binding request whose USERNAME is `ufrag:browser` (RFC 5389 §6, §15.3).
fn binding_request(ufrag: &str) -> Vec<u8> {
    let username = format!("{ufrag}:browser");
    let padded = username.len().div_ceil(4) * 4;
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&[0x00, 0x06]);
    m.extend_from_slice(&(username.len() as u16).to_be_bytes());
    m.extend_from_slice(username.as_bytes());
    m.resize(20 + 4 + padded, 0);
    m
}

#[test]
fn audio_is_cut_from_the_shared_chunk_and_what_the_stack_may_keep_is_not() {
    std::thread::spawn(|| {
        // An SRTP packet (RTP version 2, Opus payload type 111) and a STUN request.
        let audio = [&[0x80, 111][..], &[0; 98]].concat();
        let first = own_copy(&audio);
        let check = own_copy(&binding_request("abcd"));
        let second = own_copy(&audio);
        assert_eq!(
            second.as_ptr(),
            first.as_ptr().wrapping_add(audio.len()),
            "the STUN request took room in the chunk"
        );
        assert_eq!(&check[..], &binding_request("abcd")[..]);
        // SRTCP (a receiver report, packet type 201) is the stack's too.
        let report = [&[0x81, 201][..], &[0; 30]].concat();
        let kept = own_copy(&report);
        let third = own_copy(&audio);
        assert_eq!(third.as_ptr(), second.as_ptr().wrapping_add(audio.len()));
        assert_eq!(&kept[..], &report[..]);
    })
    .join()
    .unwrap();
}

/// A browser port on loopback.
fn port() -> MediaMux {
    MediaMux::bind("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A browser's socket on loopback.
fn browser_socket() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// The next datagram on `direct` within `wait`; `None` if none came.
async fn next_on(direct: &mut DirectPath, wait: Duration) -> Option<Datagram> {
    let next = std::future::poll_fn(|cx| direct.poll_recv(cx));
    tokio::time::timeout(wait, next).await.ok()
}

async fn arrives(route: &mut MuxRoute) -> Option<SocketAddr> {
    tokio::time::timeout(Duration::from_millis(300), route.recv())
        .await
        .ok()
        .flatten()
        .map(|(_, from)| from)
}

#[test]
fn media_ports_asked_for_as_port_0_are_never_shared() {
    // Five hundred gateways' ports at once: a `SO_REUSEPORT` bind to port 0 alone gives
    // two of them the same port every few hundred.
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sockets: Vec<_> = (0..500).map(|_| first_socket(any).unwrap()).collect();
    let ports: std::collections::BTreeSet<u16> = sockets
        .iter()
        .map(|s| s.local_addr().unwrap().as_socket().unwrap().port())
        .collect();
    assert_eq!(ports.len(), sockets.len(), "every port its own");
}

#[test]
fn the_port_asks_for_a_receive_buffer_that_rides_out_a_late_receive_task() {
    let socket = browser_socket();
    let before = socket2::SockRef::from(&socket).recv_buffer_size().unwrap() / 2;
    let granted = enlarge_receive_buffer(&socket).unwrap();
    // What the kernel allows: net.core.rmem_max caps an unprivileged request.
    let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(before);
    assert_eq!(
        granted,
        RECEIVE_BUFFER.min(cap.max(before)),
        "default was {before}"
    );
}

#[tokio::test]
async fn a_fault_on_one_datagram_drops_it_alone_and_the_port_goes_on_routing() {
    let mux = port();
    let to = mux.local_addr();
    let mut route = mux.register("call");
    let (first, second) = (browser_socket(), browser_socket());
    crate::fault::injection::panic_on_browser_datagram_from(first.local_addr().unwrap());
    first.send_to(&binding_request("call"), to).unwrap();
    assert_eq!(
        arrives(&mut route).await,
        None,
        "the datagram it faulted on"
    );
    second.send_to(&binding_request("call"), to).unwrap();
    assert_eq!(arrives(&mut route).await, second.local_addr().ok());
    first.send_to(&binding_request("call"), to).unwrap();
    assert_eq!(
        arrives(&mut route).await,
        first.local_addr().ok(),
        "the next one from the same address"
    );
}

#[tokio::test]
async fn a_direct_path_takes_its_browsers_datagrams_and_leaves_the_others_to_the_mux() {
    let mux = port();
    let to = mux.local_addr();
    let mut route = mux.register("call");
    let browser = browser_socket();
    let other = browser_socket();
    browser.send_to(&binding_request("call"), to).unwrap();
    assert_eq!(arrives(&mut route).await, browser.local_addr().ok());

    let mut direct = mux.connect(browser.local_addr().unwrap()).unwrap();
    for i in 0..20u8 {
        browser.send_to(&[0x80, 0, 0, i], to).unwrap();
        let (datagram, from) = next_on(&mut direct, Duration::from_secs(1))
            .await
            .expect("the browser's datagram on the direct path");
        assert_eq!(
            (&datagram[..], from),
            (&[0x80, 0, 0, i][..], browser.local_addr().unwrap())
        );
    }
    // Several at once are read together and handed out one by one, in order.
    for i in 20..23u8 {
        browser.send_to(&[0x80, 0, 0, i], to).unwrap();
    }
    for i in 20..23u8 {
        let (datagram, _) = next_on(&mut direct, Duration::from_secs(1))
            .await
            .expect("each of a burst's datagrams");
        assert_eq!(&datagram[..], &[0x80, 0, 0, i][..]);
    }
    assert_eq!(
        arrives(&mut route).await,
        None,
        "nothing of it through the mux"
    );
    // Another address of the same browser still reaches the call through the mux.
    other.send_to(&binding_request("call"), to).unwrap();
    assert_eq!(arrives(&mut route).await, other.local_addr().ok());
    // Replies leave from the media port, as the browser's ICE pair expects.
    direct.send(b"reply");
    let mut buf = [0u8; 16];
    browser
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let (n, from) = browser.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"reply"[..], to));
    // Closed, its browser's datagrams come through the mux again.
    drop(direct);
    assert_eq!(mux.direct_paths(), 0);
    browser.send_to(&[0x80, 0, 0, 99], to).unwrap();
    assert_eq!(arrives(&mut route).await, browser.local_addr().ok());
}

#[test]
fn a_worker_with_a_ring_sends_a_browsers_datagrams_from_its_connected_direct_path() {
    use std::os::fd::AsRawFd;
    // A thread of its own: what it holds to send is its own (`outgoing`).
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mux = port();
            let browser = browser_socket();
            browser
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let peer = browser.local_addr().unwrap();
            let direct = mux.connect(peer).unwrap();
            let shared = mux.send.as_raw_fd();
            let own = direct.socket.as_raw_fd();
            let mut buf = [0u8; 16];
            for use_ring in [false, true] {
                outgoing::hold_on_this_thread(use_ring);
                direct.send(b"audio");
                let expected = if outgoing::sends_with_ring() {
                    // Connected: no address, and the route the kernel found at `connect`.
                    (own, None)
                } else {
                    // One `sendmmsg` on the shared socket carries every browser's.
                    (shared, Some(peer))
                };
                assert_eq!(outgoing::held(), [expected], "ring asked: {use_ring}");
                outgoing::flush();
                let (n, from) = browser.recv_from(&mut buf).unwrap();
                assert_eq!((&buf[..n], from), (&b"audio"[..], mux.local_addr()));
            }
        });
    })
    .join()
    .unwrap();
}

#[tokio::test]
async fn a_browser_port_that_closes_and_opens_again_costs_its_direct_path_one_error() {
    let mux = port();
    let browser = browser_socket();
    let peer = browser.local_addr().unwrap();
    let mut direct = mux.connect(peer).unwrap();
    drop(browser);
    // Sent on the connected socket itself (this is no worker's thread): the closed port
    // answers with an ICMP error, which the socket reports to its next read.
    outgoing::send(&direct.socket, b"audio", None).unwrap();
    assert!(
        next_on(&mut direct, Duration::from_millis(200))
            .await
            .is_none(),
        "no datagram, and the error read and let go"
    );
    // The browser's port again: its datagrams come through.
    let browser = std::net::UdpSocket::bind(peer).unwrap();
    browser.send_to(&[0x80, 0, 0, 1], mux.local_addr()).unwrap();
    let (datagram, from) = next_on(&mut direct, Duration::from_secs(1))
        .await
        .expect("the browser's datagram after the error");
    assert_eq!((&datagram[..], from), (&[0x80, 0, 0, 1][..], peer));
}

#[tokio::test]
async fn an_ice_restart_routes_the_new_ufrag_and_forgets_all_but_the_media_address() {
    let mux = port();
    let to = mux.local_addr();
    let mut route = mux.register("before");
    let wifi = browser_socket();
    let mobile = browser_socket();
    let other = browser_socket();
    wifi.send_to(&binding_request("before"), to).unwrap();
    assert_eq!(arrives(&mut route).await, wifi.local_addr().ok());
    other.send_to(&binding_request("before"), to).unwrap();
    assert_eq!(arrives(&mut route).await, other.local_addr().ok());

    route.rekey("after", wifi.local_addr().ok());
    assert_eq!(mux.calls(), 1);
    // Media goes on from the address it came from.
    wifi.send_to(&[0x80, 0, 0, 1], to).unwrap();
    assert_eq!(arrives(&mut route).await, wifi.local_addr().ok());
    // The other old address and the old ufrag lead nowhere now.
    other.send_to(&[0x80, 0, 0, 1], to).unwrap();
    mobile.send_to(&binding_request("before"), to).unwrap();
    assert_eq!(arrives(&mut route).await, None);
    // The new ufrag from the new network does.
    mobile.send_to(&binding_request("after"), to).unwrap();
    assert_eq!(arrives(&mut route).await, mobile.local_addr().ok());
    mobile.send_to(&[0x80, 0, 0, 2], to).unwrap();
    assert_eq!(arrives(&mut route).await, mobile.local_addr().ok());

    drop(route);
    assert_eq!(
        mux.calls(),
        0,
        "the new ufrag is unregistered with the call"
    );
}

#[tokio::test]
async fn a_direct_path_read_at_the_calls_tick_is_not_watched_and_is_watched_again_when_asked() {
    let mux = port();
    let browser = browser_socket();
    let peer = browser.local_addr().unwrap();
    let mut direct = mux.connect(peer).unwrap();
    assert!(direct.watched.is_some(), "a new path is watched");
    assert_eq!(direct.try_recv(), None, "nothing waits");
    assert!(
        direct.watched.is_none(),
        "read at the tick: off the reactor"
    );
    // Three at once (more than one read takes), read in order, then nothing.
    for i in 0..3u8 {
        browser.send_to(&[0x80, 0, 0, i], mux.local_addr()).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..3u8 {
        let ((datagram, from), more) = direct.try_recv().expect("each datagram that waited");
        assert_eq!((&datagram[..], from), (&[0x80, 0, 0, i][..], peer));
        assert_eq!(
            more,
            i < 2,
            "the third came alone from a read that drained the socket"
        );
    }
    assert_eq!(direct.try_recv(), None, "drained");
    // One that arrives while nobody watches is found once the call waits for it again.
    browser.send_to(&[0x80, 0, 0, 7], mux.local_addr()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (datagram, _) = next_on(&mut direct, Duration::from_secs(1))
        .await
        .expect("the datagram that arrived unwatched");
    assert_eq!(&datagram[..], &[0x80, 0, 0, 7][..]);
    assert!(direct.watched.is_some(), "watched again");
    // And the next one wakes the waiting call as it arrives.
    let waiting =
        tokio::spawn(async move { std::future::poll_fn(|cx| direct.poll_recv(cx)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    browser.send_to(&[0x80, 0, 0, 8], mux.local_addr()).unwrap();
    let (datagram, _) = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("woken by its arrival")
        .unwrap();
    assert_eq!(&datagram[..], &[0x80, 0, 0, 8][..]);
}
