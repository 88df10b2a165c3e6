//! What the plugin chain costs a call, on the example plugins built from source:
//! - per call: fresh instances from the cached `InstancePre` — of the snapshot taken after
//!   `init` where the plugin could be pre-initialised, else followed by `init` — + the
//!   call-start verdict, and dropping the instances at the end (p50 / p99);
//! - per event (`answered`) on a call's live instances;
//! - per 20 ms audio frame to the recorder (which writes the WAV file);
//! - per call with one HTTP callout: the crm-router asking a CRM on loopback (a keep-alive
//!   HTTP/1.1 server on a thread of its own) about the caller.
//!
//! Run: `cargo bench -p gateway-tests --bench plugin_hooks`. Prints one table.

use std::time::{Duration, Instant};

use gateway::config::{FailurePolicy, PluginConfig};
use gateway::plugin::{AudioFrame, CallInfo, Decision, Direction, Event, PluginChain};
use gateway_tests::build_plugin;

fn config(name: &str, json: &str, data_dir: Option<std::path::PathBuf>) -> PluginConfig {
    PluginConfig {
        name: name.into(),
        path: build_plugin(name),
        config_json: json.into(),
        policy: FailurePolicy::FailOpen,
        reject_code: 503,
        memory_bytes: 16 << 20,
        deadline: Duration::from_millis(20),
        max_instances: 1000,
        data_dir,
        data_quota_bytes: u64::MAX,
        http: Default::default(),
    }
}

fn call(i: u64) -> CallInfo {
    CallInfo {
        call_id: format!("c-bench-{i}"),
        direction: Direction::Outbound,
        caller: format!("user{}", i % 1000),
        destination: "030 1234567".into(),
        trunk: "carrier".into(),
        number: "030 1234567".into(),
        caller_id: String::new(),
        asserted: None,
        diverted_from: None,
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

fn row(what: &str, samples: Vec<Duration>) {
    let n = samples.len();
    let (p50, p99) = percentiles(samples);
    println!("| {what:<52} | {n:>6} | {p50:>8.1} | {p99:>8.1} |");
}

fn main() {
    // Hooks run as tasks on the gateway's tokio runtime; so do they here.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let router = r#"{"country_code":"49","routes":[{"prefix":"+4930","trunks":["berlin","de"]},{"prefix":"+49","trunk":"de"}]}"#;
    let compliance = r#"{"emergency":["112"],"deny":["+4930666"],"premium":["+49900"],"rate_limit":{"calls":1000000,"per_seconds":60}}"#;
    let dir = std::env::temp_dir().join(format!("plugin-bench-{}", std::process::id()));
    let chains = [
        ("router", vec![config("router", router, None)]),
        (
            "router + compliance",
            vec![
                config("router", router, None),
                config("compliance", compliance, None),
            ],
        ),
    ];
    println!("| measurement | runs | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|");
    for (label, configs) in chains {
        let chain = PluginChain::load(&configs, None)
            .await
            .expect("plugins load");
        chain.snapshots_settled().await;
        assert!(
            chain.pooling(),
            "expected the pooling allocator on this machine"
        );
        let samples = time_call_starts(&chain, 500, 20_000, |decision| {
            assert!(matches!(decision, Decision::Place { .. }))
        })
        .await;
        let init = if chain.preinitialised().iter().all(|(_, s)| *s) {
            "(snapshot after init)"
        } else {
            "+ init"
        };
        let (p50, _) = percentiles(samples.clone());
        row(
            &format!("instantiate {init} + verdict + drop: {label}"),
            samples,
        );
        row(
            &format!("pure computation as long (this machine's tail): {label}"),
            machine_tail(p50, 20_000),
        );
        let (_, mut instances) = chain.start_call(call(0)).await;
        let mut samples = Vec::with_capacity(50_000);
        for _ in 0..50_000 {
            let started = Instant::now();
            chain
                .event(&mut instances, "c-bench-0", &Event::Answered)
                .await;
            samples.push(started.elapsed());
        }
        row(&format!("event (answered): {label}"), samples);
    }
    let recorder = config(
        "recorder",
        r#"{"record":"all"}"#,
        Some(dir.join("recordings")),
    );
    let chain = PluginChain::load(&[recorder], None)
        .await
        .expect("recorder loads");
    let (_, mut instances) = chain.start_call(call(0)).await;
    let frame = AudioFrame {
        caller: (0..160).map(|i| (i * 97 % 2000) as i16).collect(),
        callee: (0..160).map(|i| (i * 31 % 2000) as i16).collect(),
    };
    let mut samples = Vec::with_capacity(30_000);
    for _ in 0..30_000 {
        let started = Instant::now();
        chain.audio(&mut instances, "c-bench-0", &frame).await;
        samples.push(started.elapsed());
    }
    row("audio frame (20 ms, both ways) to the recorder", samples);
    drop(instances);
    let _ = std::fs::remove_dir_all(&dir);

    let crm = crm_server();
    let mut crm_router = config(
        "crm-router",
        &format!(
            r#"{{"lookup_url":"http://{crm}/customers/{{caller}}","customer_trunk":"priority"}}"#
        ),
        None,
    );
    crm_router.deadline = Duration::from_millis(500);
    crm_router.http.allow =
        vec![gateway::config::UrlPattern::parse(&format!("http://{crm}/customers/*")).unwrap()];
    let chain = PluginChain::load(&[crm_router], None)
        .await
        .expect("crm-router loads");
    chain.snapshots_settled().await;
    let samples = time_call_starts(&chain, 200, 5_000, |decision| {
        assert!(
            matches!(decision, Decision::Place { trunk, .. } if trunk == "priority"),
            "the CRM was asked and answered: {decision:?}"
        )
    })
    .await;
    row(
        if chain.preinitialised()[0].1 {
            "instantiate (snapshot after init) + HTTP callout + verdict: crm-router"
        } else {
            "instantiate + init + HTTP callout + verdict: crm-router"
        },
        samples,
    );
}

/// This machine's own tail for work of a given length: a loop of arithmetic calibrated to
/// take `p50_us`, timed `runs` times (no wasm, no allocation, no system call). On a quiet
/// machine its p99 is close to its p50; on a shared VM it shows how much of a measured p99
/// the machine adds by itself (timer interrupts, the hypervisor, the other tenants).
fn machine_tail(p50_us: f64, runs: usize) -> Vec<Duration> {
    fn spin(n: u64) -> u64 {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..n {
            x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x1000_0000_01b3);
        }
        x
    }
    let calibration = 1_000_000;
    let started = Instant::now();
    std::hint::black_box(spin(calibration));
    let per_step = started.elapsed().as_secs_f64() / calibration as f64;
    let steps = ((p50_us * 1e-6) / per_step).max(1.0) as u64;
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(spin(steps));
            started.elapsed()
        })
        .collect()
}

/// Times `runs` call starts (instances dropped at once, as a call that ends), after `warm`
/// untimed ones, checking each decision with `check`.
async fn time_call_starts(
    chain: &PluginChain,
    warm: u64,
    runs: u64,
    check: impl Fn(&Decision),
) -> Vec<Duration> {
    for i in 0..warm {
        drop(chain.start_call(call(i)).await);
    }
    let mut samples = Vec::with_capacity(runs as usize);
    for i in 0..runs {
        let started = Instant::now();
        let (decision, instances) = chain.start_call(call(i)).await;
        drop(instances);
        samples.push(started.elapsed());
        check(&decision);
    }
    samples
}

/// A CRM on loopback that says every caller is a customer: HTTP/1.1 keep-alive, one thread
/// per connection, so its work is not on the measured thread.
fn crm_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the CRM");
    let addr = listener.local_addr().expect("the CRM's address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_nodelay(true);
                let body = r#"{"customer":true,"account":"A-1"}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if stream.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    addr
}
