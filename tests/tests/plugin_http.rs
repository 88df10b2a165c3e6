//! Plugins asking the outside world: the `crm-router` example plugin (built from source)
//! against a CRM over real HTTP started by the test, two sipp trunks, and WebRTC callers with
//! tokens (their identity is what the CRM is asked about).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::config::Config;
use gateway_tests::client::{CallOptions, CallReport, run_call, token_for};
use gateway_tests::{Sipp, build_plugin, http_get, out_dir, plugin_in, write_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "plugin-http-test-secret-0123456789";

/// A CRM on loopback: `/customers/alice` is a customer (account A-17), `/customers/hang-…`
/// never answers, anything else is 404. Remembers the paths asked for, and whether a
/// request that was left hanging has been given up by the gateway.
struct Crm {
    port: u16,
    paths: Arc<Mutex<Vec<String>>>,
    hanging: Arc<AtomicBool>,
    given_up: Arc<AtomicBool>,
}

impl Crm {
    async fn start() -> Crm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let hanging = Arc::new(AtomicBool::new(false));
        let given_up = Arc::new(AtomicBool::new(false));
        let (seen, hang, gone) = (paths.clone(), hanging.clone(), given_up.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (seen, hang, gone) = (seen.clone(), hang.clone(), gone.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request).to_string();
                    let path = text.split(' ').nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap().push(path.clone());
                    if path.starts_with("/customers/hang-") {
                        hang.store(true, Ordering::SeqCst);
                        // Never answer; the gateway's timeout closes the connection.
                        while !matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {}
                        gone.store(true, Ordering::SeqCst);
                        return;
                    }
                    let (status, body) = if path == "/customers/alice" {
                        ("200 OK", r#"{"customer":true,"account":"A-17"}"#)
                    } else {
                        ("404 Not Found", r#"{"customer":false}"#)
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Crm {
            port,
            paths,
            hanging,
            given_up,
        }
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// The crm-router's `lookup_url` for this CRM.
    fn lookup_url(&self) -> String {
        format!("http://127.0.0.1:{}/customers/{{caller}}", self.port)
    }

    /// The `allow_http` entry that lets the crm-router ask this CRM.
    fn allowed(&self) -> String {
        format!("http://127.0.0.1:{}/customers/*", self.port)
    }

    /// Waits, up to `limit`, until a request is left hanging here.
    async fn wait_until_hanging(&self, limit: Duration) {
        let until = std::time::Instant::now() + limit;
        while !self.hanging.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < until,
                "the hanging lookup reached the CRM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A gateway with trunks `first` and `second` (sipp at those ports), target `sales` on
/// `first`, tokens signed with [`SECRET`], and the crm-router with `settings`.
async fn gateway(
    dir: &std::path::Path,
    first: u16,
    second: u16,
    settings: &str,
    lookup_url: &str,
) -> gateway::run::Gateway {
    let path = write_config(
        dir,
        &[("first", first, "udp", &[]), ("second", second, "udp", &[])],
    );
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[http]\n",
        &format!(
            "[http]\ntoken_secret_file = \"{}\"\n",
            dir.join("secret").display()
        ),
    );
    let plugin = plugin_in(
        "crm",
        &build_plugin("crm-router"),
        "fail-closed",
        settings,
        &format!(
            "lookup_url = \"{lookup_url}\"\ncustomer_trunk = \"second\"\non_error = \"continue\""
        ),
    );
    std::fs::write(
        &path,
        format!("{text}\n[targets.sales]\ntrunk = \"first\"\nnumber = \"100\"\n{plugin}"),
    )
    .unwrap();
    gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap()
}

/// sipp as the trunks `first` (answering `calls` calls) and `second` (one), echoing RTP,
/// each logging in a folder of its own.
fn trunks(dir: &std::path::Path, calls: u32) -> (Sipp, Sipp) {
    for name in ["first", "second"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
    }
    (
        Sipp::uas_calls("echo.xml", "u1", &dir.join("first"), calls),
        Sipp::uas("echo.xml", "u1", &dir.join("second")),
    )
}

/// A browser whose token names `identity` and allows calling `sales`.
fn caller(identity: &str, seconds: f64) -> CallOptions {
    CallOptions {
        token: Some(token_for(identity, SECRET, &["sales"])),
        seconds,
        ..CallOptions::new("sales")
    }
}

async fn call(gateway: &gateway::run::Gateway, identity: &str, seconds: f64) -> CallReport {
    run_call(
        &format!("ws://{}/ws", gateway.http_addr),
        &caller(identity, seconds),
    )
    .await
    .unwrap()
}

/// The `gateway_plugin_http_requests_total` line for `outcome`, or "" if none.
async fn callouts(gateway: &gateway::run::Gateway, outcome: &str) -> String {
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    let prefix =
        format!("gateway_plugin_http_requests_total{{plugin=\"crm\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or("")
        .to_string()
}

fn counter(gateway: &gateway::run::Gateway, name: &str) -> u64 {
    gateway_tests::plugin_counter(gateway, "crm", name)
}

fn heard(report: &CallReport) -> bool {
    report.tone_snr_db.unwrap_or(0.0) >= 20.0
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crm_sends_a_customer_to_the_second_trunk_and_a_stranger_to_the_first() {
    let dir = out_dir("plugin_http_route");
    let crm = Crm::start().await;
    let (first, second) = trunks(&dir, 1);
    let settings = format!(
        "deadline_ms = 2000\nallow_http = [\"{}\"]\nhttp_timeout_ms = 1000",
        crm.allowed()
    );
    let url = crm.lookup_url();
    let gateway = gateway(&dir, first.port, second.port, &settings, &url).await;

    let customer = call(&gateway, "alice", 1.5).await;
    let stranger = call(&gateway, "bob", 1.5).await;
    assert!(heard(&customer), "{customer:?}");
    assert!(heard(&stranger), "{stranger:?}");
    let second_log = second.messages();
    assert!(
        second_log.contains("INVITE sip:100@") && second_log.contains("X-CRM-Account: A-17"),
        "the customer's call went out on the second trunk with the account: {second_log}"
    );
    assert_eq!(second_log.matches("INVITE sip:").count(), 1, "{second_log}");
    let first_log = first.messages();
    assert_eq!(
        first_log.matches("INVITE sip:").count(),
        1,
        "the stranger's call went out on the first trunk: {first_log}"
    );
    assert!(!first_log.contains("X-CRM-Account"), "{first_log}");
    assert_eq!(crm.paths(), ["/customers/alice", "/customers/bob"]);
    assert_eq!(callouts(&gateway, "ok").await, "2");
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert!(
        metrics.contains("gateway_plugin_http_seconds_count{plugin=\"crm\"} 2")
            && metrics.contains("gateway_plugin_http_seconds_bucket{plugin=\"crm\",le=\"+Inf\"} 2"),
        "the callouts' durations are on /metrics: {metrics}"
    );
    assert_eq!(
        (
            counter(&gateway, "customers"),
            counter(&gateway, "strangers")
        ),
        (1, 1)
    );
    assert!(first.finished().await);
    assert!(second.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_outside_allow_http_is_refused_inside_the_plugin() {
    let dir = out_dir("plugin_http_denied");
    let crm = Crm::start().await;
    let (first, second) = trunks(&dir, 1);
    // The plugin asks /customers/…; the operator allowed only /accounts/….
    let settings = format!(
        "deadline_ms = 2000\nallow_http = [\"http://127.0.0.1:{}/accounts/*\"]",
        crm.port
    );
    let url = crm.lookup_url();
    let gateway = gateway(&dir, first.port, second.port, &settings, &url).await;

    let report = call(&gateway, "alice", 1.0).await;
    assert!(
        heard(&report),
        "on_error = continue: the call kept its route: {report:?}"
    );
    assert!(
        crm.paths().is_empty(),
        "nothing reached the CRM: {:?}",
        crm.paths()
    );
    assert_eq!(callouts(&gateway, "denied").await, "1");
    assert_eq!(counter(&gateway, "lookup_failed"), 1);
    assert!(
        !second.messages().contains("INVITE"),
        "the customer was not recognised, so not routed: {}",
        second.messages()
    );
    assert!(first.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_calls_connect_while_one_calls_crm_hangs_and_that_call_goes_on_at_the_timeout() {
    let dir = out_dir("plugin_http_hang");
    let crm = Crm::start().await;
    let (first, second) = trunks(&dir, 11);
    let settings = format!(
        "deadline_ms = 12000\nallow_http = [\"{}\"]\nhttp_timeout_ms = 10000\nhttp_max_concurrent = 11",
        crm.allowed()
    );
    let url = crm.lookup_url();
    let gateway = Arc::new(gateway(&dir, first.port, second.port, &settings, &url).await);

    let slow = tokio::spawn({
        let gateway = gateway.clone();
        async move { call(&gateway, "hang-carol", 1.0).await }
    });
    crm.wait_until_hanging(Duration::from_secs(10)).await;
    let others: Vec<_> = (0..10)
        .map(|i| {
            let gateway = gateway.clone();
            tokio::spawn(async move { call(&gateway, &format!("user{i}"), 1.0).await })
        })
        .collect();
    for other in others {
        let report = other.await.unwrap();
        assert!(
            heard(&report) && report.packets_lost == 0,
            "a call beside the hanging lookup set up and carried its tone: {report:?}"
        );
    }
    assert!(
        !crm.given_up.load(Ordering::SeqCst) && !slow.is_finished(),
        "all ten connected while the first call's plugin was still waiting on its CRM"
    );
    let slow = slow.await.unwrap();
    assert!(
        crm.given_up.load(Ordering::SeqCst),
        "the gateway gave the request up"
    );
    assert!(
        heard(&slow),
        "cut at http_timeout_ms, the plugin's on_error = continue let the call go on: {slow:?}"
    );
    assert!(slow.setup_ms.unwrap_or(0.0) >= 10_000.0, "{slow:?}");
    assert_eq!(callouts(&gateway, "timeout").await, "1");
    assert_eq!(callouts(&gateway, "ok").await, "10");
    assert_eq!(callouts(&gateway, "busy").await, "0");
    assert_eq!(counter(&gateway, "lookup_failed"), 1);
    assert!(first.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_that_outruns_its_deadline_waiting_on_the_crm_gets_the_failure_policy() {
    let dir = out_dir("plugin_http_deadline");
    let crm = Crm::start().await;
    let (first, second) = trunks(&dir, 1);
    // The callout may take 5 s, the hook only 300 ms: the hook's deadline wins, and the
    // plugin is fail-closed (503).
    let settings = format!(
        "deadline_ms = 300\nallow_http = [\"{}\"]\nhttp_timeout_ms = 5000",
        crm.allowed()
    );
    let url = crm.lookup_url();
    let gateway = gateway(&dir, first.port, second.port, &settings, &url).await;

    let report = call(&gateway, "hang-dave", 1.0).await;
    let ended = report.ended.clone().expect("ended");
    assert_eq!(
        (ended["reason"].as_str(), ended["sip_code"].as_u64()),
        (Some("rejected"), Some(503)),
        "{report:?}"
    );
    assert!(!first.messages().contains("INVITE"), "no INVITE went out");
    assert!(!second.messages().contains("INVITE"), "no INVITE went out");
    assert_eq!(counter(&gateway, "failures"), 1);
    assert_eq!(callouts(&gateway, "timeout").await, "1");
}

/// The decisive form of "a waiting hook holds no thread": one thread only (a current-thread
/// runtime), one call's plugin waiting on a CRM that never answers, and another call's
/// plugins decide meanwhile. A hook that blocked its thread would stall the second call
/// until the first timed out.
#[tokio::test(flavor = "current_thread")]
async fn on_one_thread_a_call_is_decided_while_another_calls_plugin_waits_on_its_crm() {
    use gateway::plugin::{CallInfo, Decision, Direction, PluginChain};
    let crm = Crm::start().await;
    let config = gateway::config::PluginConfig {
        name: "crm".into(),
        path: build_plugin("crm-router"),
        config_json: format!(
            r#"{{"lookup_url":"{}","customer_trunk":"second"}}"#,
            crm.lookup_url()
        ),
        policy: gateway::config::FailurePolicy::FailOpen,
        reject_code: 503,
        memory_bytes: 16 << 20,
        deadline: Duration::from_secs(5),
        max_instances: 10,
        data_dir: None,
        data_quota_bytes: u64::MAX,
        http: gateway::config::HttpPolicy {
            allow: vec![gateway::config::UrlPattern::parse(&crm.allowed()).unwrap()],
            timeout: Duration::from_secs(3),
            ..Default::default()
        },
    };
    let chain = Arc::new(PluginChain::load(&[config], None).await.unwrap());
    let call = |caller: &str| CallInfo {
        call_id: format!("c-{caller}"),
        direction: Direction::Outbound,
        caller: caller.into(),
        destination: "sales".into(),
        trunk: "first".into(),
        number: "100".into(),
        caller_id: String::new(),
        asserted: None,
        diverted_from: None,
    };
    let waiting = tokio::spawn({
        let chain = chain.clone();
        let call = call("hang-erin");
        async move { chain.start_call(call).await.0 }
    });
    crm.wait_until_hanging(Duration::from_secs(5)).await;
    let (decision, _) = chain.start_call(call("alice")).await;
    assert!(
        matches!(&decision, Decision::Place { trunk, .. } if trunk == "second"),
        "{decision:?}"
    );
    assert!(
        !waiting.is_finished(),
        "decided while the other call's plugin still waited on its CRM"
    );
    let first = waiting.await.unwrap();
    assert!(
        matches!(&first, Decision::Place { trunk, .. } if trunk == "first"),
        "the waiting call timed out and kept its route: {first:?}"
    );
}
