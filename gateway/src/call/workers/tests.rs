use super::lateness::ON_TIME_TO_FORGET;
use super::*;

/// Spawns a call on `workers` that reports the thread it runs on, then waits for `held`.
async fn spawn_held(workers: &MediaWorkers, held: &tokio::sync::watch::Receiver<bool>) -> String {
    let (tx, rx) = oneshot::channel();
    let mut held = held.clone();
    workers.spawn(async move {
        let _ = tx.send(std::thread::current().name().map(str::to_string));
        let _ = held.wait_for(|r| *r).await;
    });
    rx.await.unwrap().unwrap()
}

/// `count` workers with the defaults: 2 ms turns, one sleep a turn, io_uring where it works,
/// the gateway's own nice.
fn started(count: usize) -> MediaWorkers {
    MediaWorkers::start(
        &LoadMonitor::default(),
        count,
        Duration::from_millis(2),
        Duration::ZERO,
        true,
        0,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fill_the_first_worker_until_it_is_busy_then_go_to_the_next() {
    let workers = started(2);
    let (release, held) = tokio::sync::watch::channel(false);
    for _ in 0..4 {
        assert_eq!(spawn_held(&workers, &held).await, "media-0");
    }
    assert_eq!(workers.calls(), [4, 0], "a quiet gateway wakes one thread");

    // A call that keeps the first worker's thread busy: 40 ms of work, 1 ms of rest.
    let mut hog_held = held.clone();
    workers.spawn(async move {
        while !*hog_held.borrow_and_update() {
            std::thread::sleep(Duration::from_millis(40));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    assert_eq!(workers.calls(), [5, 0]);
    tokio::time::sleep(MEASURE_EVERY + Duration::from_millis(300)).await;
    for _ in 0..2 {
        assert_eq!(
            spawn_held(&workers, &held).await,
            "media-1",
            "the first worker is measured busy: {:?} s",
            workers.busy_seconds()
        );
    }
    assert_eq!(workers.calls(), [5, 2]);
    let busy = workers.busy_seconds();
    assert!(busy[0] > 0.5 && busy[1] < 0.1, "busy seconds {busy:?}");

    release.send(true).unwrap();
    for _ in 0..100 {
        if workers.calls() == [0, 0] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "calls still counted after they ended: {:?}",
        workers.calls()
    );
}

#[test]
fn placement_fills_a_worker_to_half_then_takes_the_least_busy() {
    let t0 = Instant::now();
    let mut loads = vec![Measured::new(t0); 2];
    let place = |loads: &mut [Measured]| {
        let i = choose(loads, &[0, 0]);
        loads[i].placed += 1;
        i
    };
    // Unmeasured calls count NEW_CALL_SHARE each: the first worker takes a burst's first
    // 40 calls whole.
    for _ in 0..40 {
        assert_eq!(place(&mut loads), 0);
    }
    // Measured: the first worker was 60 % busy in the last window, the second 10.5 %.
    let busy = |share: f64| (MEASURE_EVERY.as_nanos() as f64 * share) as u64;
    loads[0].update(t0 + MEASURE_EVERY, busy(0.6), busy(0.6), 40, false);
    loads[1].update(t0 + MEASURE_EVERY, busy(0.105), busy(0.105), 0, false);
    assert!((loads[0].share - 0.6).abs() < 1e-9 && loads[0].placed == 0);
    assert!((loads[1].share - 0.105).abs() < 1e-9);
    // The second has room for 39 more (10.5 % + 39 × 1 % ≤ 50 %).
    for _ in 0..39 {
        assert_eq!(place(&mut loads), 1);
    }
    // Neither has room: the one expected least busy takes the call.
    assert_eq!(place(&mut loads), 1, "0.6 + 0.01 against 0.105 + 0.40");
    assert_eq!(loads[1].placed, 40);
    for _ in 0..20 {
        place(&mut loads);
    }
    assert!((loads[0].expected() - loads[1].expected()).abs() <= NEW_CALL_SHARE + 1e-9);

    // A window not yet over leaves the measurement as it is.
    let before = loads[0];
    loads[0].update(
        t0 + MEASURE_EVERY + MEASURE_EVERY / 2,
        u64::MAX,
        u64::MAX,
        40,
        false,
    );
    assert_eq!(loads[0].placed, before.placed);
    assert_eq!(loads[0].share, before.share);
}

/// `share` of a measurement window, in ns: a worker's busy or demand time over one window.
fn window_ns(share: f64) -> u64 {
    (MEASURE_EVERY.as_nanos() as f64 * share) as u64
}

#[test]
fn the_gate_counts_every_running_call_at_its_measured_demand() {
    let t0 = Instant::now();
    let mut m = Measured::new(t0);
    let few = GATED_FROM_CALLS - 1;
    assert!(has_room(&m, few, 0.0), "a worker with few calls takes one");
    // Unmeasured, a call is taken to want NEW_CALL_SHARE: 90 calls fit in 90 %.
    assert!(has_room(&m, 89, 0.9));
    assert!(!has_room(&m, 90, 0.9));
    // Measured: 100 calls wanted 60 % of a core, 0.6 % each; smoothed from 1 %.
    m.update(
        t0 + MEASURE_EVERY,
        window_ns(0.5),
        window_ns(0.6),
        100,
        false,
    );
    assert!((m.demand - 0.6).abs() < 1e-9);
    let per_call = 0.01 * (1.0 - DEMAND_WEIGHT) + DEMAND_WEIGHT * 0.006;
    assert!((m.per_call - per_call).abs() < 1e-12);
    let fit = (0.9 / per_call) as usize; // 102
    assert!(has_room(&m, fit - 1, 0.9));
    assert!(!has_room(&m, fit, 0.9), "calls let in since count at once");
    // A window without calls leaves the estimate as it was.
    m.update(
        t0 + MEASURE_EVERY * 2,
        window_ns(0.5),
        window_ns(0.6),
        0,
        false,
    );
    assert!((m.per_call - per_call).abs() < 1e-12 && m.demand == 0.0);
}

#[test]
fn a_worker_measured_past_the_limit_takes_no_call_whatever_its_calls_count_to() {
    let t0 = Instant::now();
    let mut m = Measured::new(t0);
    // Learned on the way up: 45 calls wanted 0.0022 of a core each.
    for i in 1..=40u32 {
        let total = window_ns(0.1) * u64::from(i);
        m.update(t0 + MEASURE_EVERY * i, total, total, 45, false);
    }
    assert!((m.per_call - 0.1 / 45.0).abs() < 1e-6, "{}", m.per_call);
    // Then 227 calls read 0.954: each wants more now than the estimate says.
    let before = window_ns(0.1) * 40;
    m.update(
        t0 + MEASURE_EVERY * 41,
        0,
        before + window_ns(0.954),
        227,
        false,
    );
    assert!(
        228.0 * m.per_call <= 0.9,
        "the calls still count to less than the limit ({})",
        228.0 * m.per_call
    );
    assert!(!has_room(&m, 227, 0.9), "but the worker measured past it");
    // A window that reads within the limit opens it again.
    m.update(
        t0 + MEASURE_EVERY * 42,
        0,
        before + window_ns(0.954) + window_ns(0.85),
        227,
        false,
    );
    assert!(has_room(&m, 227, 0.9), "{}", 228.0 * m.per_call);
    assert!(
        has_room(&m, GATED_FROM_CALLS - 1, 0.0),
        "a worker with few calls takes one"
    );
}

/// A worker measured for 30 windows at 0.75 of a core with 176 calls, every tick on time;
/// returns it and its demand and tick counts so far.
fn on_time_worker(t0: Instant) -> (Measured, u64, u64) {
    let mut m = Measured::new(t0);
    for i in 1..=30u32 {
        m.update(
            t0 + MEASURE_EVERY * i,
            0,
            window_ns(0.75) * u64::from(i),
            176,
            false,
        );
        m.count_ticks(4_400 * u64::from(i), 0, 176);
    }
    (m, window_ns(0.75) * 30, 4_400 * 30)
}

#[test]
fn a_worker_whose_ticks_ran_late_takes_no_call_until_it_has_run_on_time_a_while() {
    let t0 = Instant::now();
    let (mut m, mut demand, mut ticks) = on_time_worker(t0);
    assert!(has_room(&m, 176, 0.9), "{m:?}");
    let mut window = 30;
    // Each window at 0.75 of a core with 176 calls, `late` of its 4,400 ticks a frame late.
    let mut next = |m: &mut Measured, late: u64, late_so_far: &mut u64| {
        window += 1;
        demand += window_ns(0.75);
        ticks += 4_400;
        *late_so_far += late;
        m.update(t0 + MEASURE_EVERY * window, 0, demand, 176, false);
        m.count_ticks(ticks, *late_so_far, 176);
    };
    let mut late = 0;
    // 44 of them (1 %) is as many as a window on time tolerates.
    next(&mut m, 44, &mut late);
    assert!(has_room(&m, 176, 0.9), "{}", m.late);
    // 45 (1.02 %): the worker is closed, although its demand and per-call count have room.
    next(&mut m, 45, &mut late);
    assert!(m.demand <= 0.9 && 177.0 * m.per_call <= 0.9, "{m:?}");
    assert!(!has_room(&m, 170, 0.9), "late ticks close it: {}", m.late);
    // Three windows on time are not enough; the fourth opens it again, to fewer calls than
    // it ran late with.
    for _ in 0..3 {
        next(&mut m, 0, &mut late);
        assert!(!has_room(&m, 170, 0.9), "{:?}", m.lateness);
    }
    next(&mut m, 0, &mut late);
    assert!(has_room(&m, 174, 0.9), "{:?}", m.lateness);
    assert!(!has_room(&m, 175, 0.9), "176 calls ran late");
    // A late window with fewer calls lowers the bound; one with more does not raise it.
    m.count_ticks(ticks + 4_400, late + 100, 150);
    m.count_ticks(ticks + 8_800, late + 200, 160);
    assert_eq!(m.lateness.late_with, Some(150));
    // A window without ticks is on time; a worker with few calls takes one whatever.
    m.count_ticks(ticks + 8_800, late + 200, 160);
    assert_eq!(m.late, 0.0);
    assert!(has_room(&m, GATED_FROM_CALLS - 1, 0.9));
    assert!(!has_room(&m, GATED_FROM_CALLS, 0.9));
}

#[test]
fn a_worker_whose_ticks_ran_late_gets_no_call_while_another_has_room() {
    let t0 = Instant::now();
    let mut loads = vec![Measured::new(t0); 2];
    // The first worker is the less busy, but its ticks ran late with 100 calls in its last
    // window: the call goes to the second.
    loads[1].share = 0.8;
    loads[0].count_ticks(2_500, 100, 100);
    assert_eq!(choose(&loads, &[100, 60]), 1);
    // Below the calls that are gated, or once both ran late, busy share decides again.
    assert_eq!(choose(&loads, &[GATED_FROM_CALLS - 1, 60]), 0);
    loads[1].count_ticks(2_500, 100, 60);
    assert_eq!(choose(&loads, &[100, 60]), 0);
}

#[test]
fn a_minute_on_time_forgets_the_calls_a_worker_ran_late_with() {
    let (mut m, _, ticks) = on_time_worker(Instant::now());
    m.count_ticks(ticks + 4_400, 100, 176);
    for i in 1..ON_TIME_TO_FORGET {
        m.count_ticks(ticks + 4_400 * u64::from(i + 1), 100, 170);
        assert!(!has_room(&m, 175, 0.9), "window {i}: {:?}", m.lateness);
    }
    m.count_ticks(ticks + 4_400 * u64::from(ON_TIME_TO_FORGET + 1), 100, 170);
    assert!(has_room(&m, 176, 0.9), "{:?}", m.lateness);
}

#[test]
fn while_calls_economise_the_gate_counts_them_at_their_full_cost() {
    let t0 = Instant::now();
    let window = |i: u32| t0 + MEASURE_EVERY * i;
    let ns = |share: f64, i: u32| (MEASURE_EVERY.as_nanos() as f64 * share * f64::from(i)) as u64;
    let mut m = Measured::new(t0);
    // Unlearned, economy does not hold the prior: the first window with calls teaches it.
    m.update(window(1), 0, ns(0.6, 1), 100, true);
    let full = 0.01 * (1.0 - DEMAND_WEIGHT) + DEMAND_WEIGHT * 0.006;
    assert!((m.per_call - full).abs() < 1e-12);
    // Economised, the same 100 calls want 15 % less: the estimate holds.
    m.update(window(2), 0, ns(0.6, 1) + ns(0.51, 1), 100, true);
    assert!((m.per_call - full).abs() < 1e-12, "{}", m.per_call);
    assert!(
        (m.demand - 0.51).abs() < 1e-9,
        "the demand itself is still measured"
    );
    // Economy over: it learns again.
    m.update(
        window(3),
        0,
        ns(0.6, 1) + ns(0.51, 1) + ns(0.6, 1),
        100,
        false,
    );
    assert!(m.per_call < full, "{}", m.per_call);
}

#[test]
fn while_calls_economise_only_quiet_windows_lower_their_full_cost() {
    let t0 = Instant::now();
    let mut at = t0;
    let mut total = 0u64;
    // One more window in which the worker's calls wanted `share` of a core; `placed` new
    // calls were given to it during the window.
    let mut window = |m: &mut Measured, share: f64, placed: u32, economise: bool| {
        at += MEASURE_EVERY;
        total += (MEASURE_EVERY.as_nanos() as f64 * share) as u64;
        m.placed = placed;
        m.update(at, 0, total, 100, economise);
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let mut m = Measured::new(t0);
    // Learned during a burst of new calls: 0.9 of a core for 100 calls, set-up included.
    for _ in 0..40 {
        window(&mut m, 0.9, 50, false);
    }
    assert!(close(m.per_call, 0.009), "{}", m.per_call);
    // Economy on. A window with new calls says nothing: their set-up is in it.
    window(&mut m, 0.45, 10, true);
    assert!(close(m.per_call, 0.009), "{}", m.per_call);
    // Quiet windows: the 100 calls, set up, want 0.51 (0.6 at full cost). Three are not
    // enough; the fourth lowers the estimate to 0.6 for 100 calls at full cost.
    for _ in 0..3 {
        window(&mut m, 0.51, 0, true);
        assert!(close(m.per_call, 0.009), "{}", m.per_call);
    }
    window(&mut m, 0.51, 0, true);
    assert!(close(m.per_call, 0.006), "{}", m.per_call);
    // One window that reads low does not open the gate: the highest of the last four counts.
    window(&mut m, 0.3, 0, true);
    assert!(close(m.per_call, 0.006), "{}", m.per_call);
    // One that reads high closes it at once.
    window(&mut m, 0.68, 0, true);
    assert!(close(m.per_call, 0.008), "{}", m.per_call);
    // Economy over: quiet windows are forgotten and the estimate learns as before.
    window(&mut m, 0.5, 0, false);
    assert_eq!(m.quiet_seen, 0);
    assert!(
        close(m.per_call, 0.008 * 0.7 + 0.005 * 0.3),
        "{}",
        m.per_call
    );
}

#[test]
fn a_worker_threads_demand_is_its_run_and_wait_time() {
    let file = File::open("/proc/thread-self/schedstat").ok();
    let busy = 7;
    let first = demand_ns(file.as_ref(), busy);
    let spin = Instant::now();
    while spin.elapsed() < Duration::from_millis(20) {}
    let second = demand_ns(file.as_ref(), busy);
    if file.is_some() {
        assert!(second >= first + 15_000_000, "{first} then {second}");
    } else {
        assert_eq!((first, second), (busy, busy));
    }
    assert_eq!(demand_ns(None, busy), busy);
}

/// Wake-up times of a task on a worker that reads 60 datagrams sent 300 µs apart, while
/// `held` other calls sit idle on the same worker.
async fn reader_wakes(turn: Duration, held: usize) -> Vec<Instant> {
    let workers =
        MediaWorkers::start(&LoadMonitor::default(), 1, turn, Duration::ZERO, true, 0).unwrap();
    let (release, hold) = tokio::sync::watch::channel(false);
    for _ in 0..held {
        let mut hold = hold.clone();
        workers.spawn(async move {
            let _ = hold.wait_for(|r| *r).await;
        });
    }
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = receiver.local_addr().unwrap();
    receiver.set_nonblocking(true).unwrap();
    let (tx, rx) = oneshot::channel();
    workers.spawn(async move {
        let socket = tokio::net::UdpSocket::from_std(receiver).unwrap();
        let (mut wakes, mut got, mut buf) = (Vec::new(), 0, [0u8; 64]);
        while got < 60 {
            socket.readable().await.unwrap();
            wakes.push(Instant::now());
            while socket.try_recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        let _ = tx.send(wakes);
    });
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    tokio::task::spawn_blocking(move || {
        for _ in 0..60 {
            sender.send_to(b"rtp", to).unwrap();
            std::thread::sleep(Duration::from_micros(300));
        }
    })
    .await
    .unwrap();
    let wakes = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("every datagram read")
        .unwrap();
    release.send(true).unwrap();
    wakes
}

fn median_gap(wakes: &[Instant]) -> Duration {
    let mut gaps: Vec<Duration> = wakes.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    gaps.get(gaps.len() / 2).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_gathers_packets_into_turns() {
    let turn = Duration::from_millis(2);
    let wakes = reader_wakes(turn, PACED_FROM_CALLS).await;
    // A turn at least between two wake-ups (less the moment from waking to the read).
    assert!(
        median_gap(&wakes) >= turn * 3 / 4,
        "a paced worker woke {} times for 60 datagrams, median gap {:?}",
        wakes.len(),
        median_gap(&wakes)
    );
}

#[test]
fn a_worker_with_few_calls_or_no_turn_never_waits() {
    let turn = Duration::from_millis(300);
    let pace = |calls: usize, turn: Duration| {
        let pace = Pace::new(turn, Duration::ZERO);
        pace.calls.store(calls, Ordering::Relaxed);
        pace
    };
    let waited = |pace: Pace| {
        pace.after_unpark();
        let start = Instant::now();
        pace.before_park();
        start.elapsed()
    };
    assert!(waited(pace(PACED_FROM_CALLS - 1, turn)) < turn / 2);
    assert!(waited(pace(1000, Duration::ZERO)) < turn / 2);
    assert!(waited(pace(PACED_FROM_CALLS, turn)) >= turn / 2);
}

#[test]
fn a_paced_worker_waits_out_its_turn_in_naps_when_asked_and_in_one_sleep_otherwise() {
    let (turn, nap) = (Duration::from_millis(120), Duration::from_millis(20));
    let paced = |calls: usize, nap: Duration| {
        let pace = Pace::new(turn, nap);
        pace.calls.store(calls, Ordering::Relaxed);
        pace.after_unpark();
        let start = Instant::now();
        pace.before_park();
        (start.elapsed(), pace.sleeps.load(Ordering::Relaxed))
    };
    let (waited, sleeps) = paced(NAP_FROM_CALLS, Duration::ZERO);
    assert!(waited >= turn / 2, "{waited:?}");
    assert_eq!(sleeps, 1, "one sleep a turn");
    // Six naps' worth: however late each nap ends on a busy box, more than one is taken,
    // and the turn is still waited out.
    let (waited, sleeps) = paced(NAP_FROM_CALLS, nap);
    assert!(waited >= turn / 2, "{waited:?}");
    assert!(sleeps >= 2, "the turn was slept in {sleeps} piece(s)");
    assert!(sleeps <= 7, "no nap is taken after the turn: {sleeps}");
    // Paced, but with too few calls for the naps to keep more than they cost.
    let (waited, sleeps) = paced(NAP_FROM_CALLS - 1, nap);
    assert!(waited >= turn / 2, "{waited:?}");
    assert_eq!(
        sleeps, 1,
        "a worker of few calls sleeps its turn in one piece"
    );

    // Nothing left of the turn: no sleep at all.
    assert_eq!(sleep_in_naps(Duration::ZERO, nap), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_gauge_shows_its_ring_failing_while_it_runs_and_its_datagram_still_goes() {
    let workers = started(1);
    if workers.io_uring() != [true] {
        eprintln!("no io_uring here: the worker never had a ring to lose");
        return;
    }
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.connect(receiver.local_addr().unwrap()).unwrap();
    let sender = Arc::new(sender);
    let (tx, rx) = oneshot::channel();
    workers.spawn(async move {
        // A profile that lets the worker's thread keep its ring but no longer enter it, as
        // a seccomp profile tightened under a running gateway would.
        let refused =
            crate::media::outgoing::tests::refuse_on_this_thread(nix::libc::SYS_io_uring_enter);
        if refused {
            crate::media::outgoing::send(&sender, b"after", None).unwrap();
        }
        let _ = tx.send(refused);
    });
    if !rx.await.unwrap() {
        eprintln!("no seccomp filter for this test: the ring's failure is not tested");
        return;
    }
    let mut buf = [0u8; 16];
    let n = receiver
        .recv(&mut buf)
        .expect("the datagram held when the ring failed");
    assert_eq!(&buf[..n], b"after");
    for _ in 0..100 {
        if workers.io_uring() == [false] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the gauge still shows a ring the worker dropped: {:?}",
        workers.io_uring()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_counts_its_calls_ticks_for_its_gate_and_the_gateways_totals() {
    let load = Arc::new(LoadMonitor::default());
    load.configure(Duration::from_millis(20), 10);
    let workers =
        MediaWorkers::start(&load, 2, Duration::from_millis(2), Duration::ZERO, true, 0).unwrap();
    let (tx, rx) = oneshot::channel();
    let on_worker = load.clone();
    workers.spawn(async move {
        for late_ms in [1, 30, 2] {
            on_worker.handle_tick(Duration::from_millis(late_ms));
        }
        let _ = tx.send(());
    });
    rx.await.unwrap();
    // A tick off the workers (a tone caller's, say) goes to the shared counts: 30 and 40 ms
    // both fall in the 50 ms bucket.
    load.handle_tick(Duration::from_millis(40));
    let own: Vec<(u64, u64)> = workers.workers.iter().map(|w| w.ticks.ticks()).collect();
    assert_eq!(own, [(3, 1), (0, 0)], "the first worker ran the call");
    let counted = load.tick_lateness();
    assert_eq!((counted.ticks, counted.late), (4, 2));
    assert_eq!(counted.buckets, [1, 1, 0, 0, 0, 2, 0]);
    // The worker's gate reads its own window: one tick in three late.
    tokio::time::sleep(MEASURE_EVERY).await;
    let measured = workers.measure();
    assert!(
        (measured[0].late - 1.0 / 3.0).abs() < 1e-9,
        "{}",
        measured[0].late
    );
    assert_eq!(measured[1].late, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_while_a_worker_sends_its_turn_drops_that_turn_and_the_worker_goes_on() {
    let workers = started(1);
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    // A send held for the end of a turn, on the worker.
    let send = |payload: &'static [u8]| {
        let (sent, done) = oneshot::channel();
        workers.spawn(async move {
            let socket = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
            let _ = sent.send(crate::media::outgoing::send(&socket, payload, Some(to)).is_ok());
        });
        done
    };
    crate::fault::injection::panic_on_media_send_to(to);
    assert!(send(b"first").await.unwrap());
    let fired = Instant::now() + Duration::from_secs(5);
    while crate::fault::injection::media_send_fault_pending(to) && Instant::now() < fired {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!crate::fault::injection::media_send_fault_pending(to));
    assert!(send(b"second").await.unwrap());
    let got = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 16];
        let (n, _) = receiver
            .recv_from(&mut buf)
            .expect("the next turn's datagram");
        buf[..n].to_vec()
    })
    .await
    .unwrap();
    assert_eq!(got, b"second", "the faulted turn's datagram is dropped");
    assert_eq!(
        workers.io_uring(),
        [false],
        "and the worker sends without its ring"
    );
}
