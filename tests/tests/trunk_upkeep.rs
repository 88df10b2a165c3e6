//! Keeping trunks usable: REGISTER against a real registrar (sipp), and OPTIONS health
//! checks over TCP and TLS against a live SIP endpoint, with calls skipping dead addresses.

use std::time::Duration;

use gateway::config::{Config, Transport, TrunkConfig};
use gateway::media::codec::Codec;
use gateway::sip::endpoint::{Endpoint, EndpointConfig};
use gateway::sip::monitor::{spawn_health_checks, spawn_registrations};
use gateway::sip::registration::RegistrationState;
use gateway::sip::transaction::Timers;
use gateway::sip::trunks::Trunks;
use gateway_tests::{Sipp, out_dir, ports, write_config};

fn endpoint_config() -> EndpointConfig {
    EndpointConfig {
        udp: "127.0.0.1:0".parse().unwrap(),
        tcp: None,
        tls: None,
        public_ip: None,
        user_agent: "gateway-test".into(),
        timers: Timers::default(),
        edge: Default::default(),
    }
}

fn trunk(
    name: &str,
    addresses: Vec<String>,
    transport: Transport,
    ca_file: Option<std::path::PathBuf>,
) -> TrunkConfig {
    TrunkConfig {
        name: name.into(),
        addresses,
        transport,
        credentials: None,
        from_user: "gw".into(),
        from_domain: None,
        codecs: vec![Codec::Pcmu],
        register: false,
        register_expires: 600,
        options_interval: 1,
        max_channels: None,
        failover: vec![],
        ca_file,
        rtp_source: Default::default(),
        prack: Default::default(),
        media_timeout: std::time::Duration::from_secs(30),
        session_expires: 1800,
        identity: Default::default(),
        privacy: Default::default(),
        srtp: Default::default(),
    }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..100 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_answers_the_challenge_and_refreshes_before_expiry() {
    let dir = out_dir("register");
    let sipp = Sipp::uas("registrar.xml", "u1", &dir);
    let path = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "failover = []",
        "failover = []\nregister = true\nregister_expires = 120",
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let trunks = Trunks::new(config.trunks.values().cloned()).unwrap();
    let (endpoint, _inbound) = Endpoint::start(endpoint_config()).await.unwrap();
    let mut states = spawn_registrations(&endpoint, &trunks);
    // First grant (2 s), then the refresh at 80 % (1.6 s) is granted 60 s.
    let registered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut grants = 0;
        loop {
            states.changed().await.unwrap();
            if let Some(RegistrationState::Registered { until }) = states.borrow().get("carrier") {
                grants += 1;
                if grants == 2 {
                    return *until;
                }
            }
        }
    })
    .await
    .expect("registered twice within 10 s");
    assert!(
        registered > std::time::Instant::now() + Duration::from_secs(50),
        "the refresh got the 60 s grant"
    );
    assert!(
        sipp.finished().await,
        "sipp refused a digest or missed the refresh"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn options_probes_mark_dead_addresses_down_over_tcp() {
    let mut peer_config = endpoint_config();
    peer_config.tcp = Some("127.0.0.1:0".parse().unwrap());
    let (peer, _peer_inbound) = Endpoint::start(peer_config).await.unwrap();
    let (dead, _) = ports();
    let live = format!("127.0.0.1:{}", peer.tcp_addr().unwrap().port());
    let dead = format!("127.0.0.1:{dead}");
    let trunks = Trunks::new([trunk(
        "pbx",
        vec![dead.clone(), live.clone()],
        Transport::Tcp,
        None,
    )])
    .unwrap();
    let (endpoint, _inbound) = Endpoint::start(endpoint_config()).await.unwrap();
    spawn_health_checks(&endpoint, &trunks);
    let t = trunks.clone();
    wait_for("the refused address to be marked down", move || {
        t.is_down("pbx", &dead)
    })
    .await;
    let t = trunks.clone();
    let l = live.clone();
    wait_for("the live address to answer OPTIONS", move || {
        t.health("pbx", &l) == Some(true)
    })
    .await;
    assert!(!trunks.is_down("pbx", &live));
}

#[tokio::test(flavor = "multi_thread")]
async fn options_over_tls_verifies_the_peer_certificate() {
    let dir = out_dir("tls");
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ca.signing_key.serialize_pem()).unwrap();
    let server =
        gateway::sip::transport::tls_server_config(&dir.join("cert.pem"), &dir.join("key.pem"))
            .unwrap();
    let mut peer_config = endpoint_config();
    peer_config.tls = Some(("127.0.0.1:0".parse().unwrap(), server));
    let (peer, _peer_inbound) = Endpoint::start(peer_config).await.unwrap();
    let port = peer.tls_addr().unwrap().port();

    // Trusting the peer's certificate: the probe succeeds.
    let trusted = Trunks::new([trunk(
        "pbx",
        vec![format!("localhost:{port}")],
        Transport::Tls,
        Some(dir.join("cert.pem")),
    )])
    .unwrap();
    // Trusting only the public roots: the handshake must fail and the address go down.
    let untrusted = Trunks::new([trunk(
        "pbx",
        vec![format!("localhost:{port}")],
        Transport::Tls,
        None,
    )])
    .unwrap();
    // Separate endpoints: an endpoint reuses an established connection to the same address.
    let (endpoint_a, _inbound_a) = Endpoint::start(endpoint_config()).await.unwrap();
    let (endpoint_b, _inbound_b) = Endpoint::start(endpoint_config()).await.unwrap();
    spawn_health_checks(&endpoint_a, &trusted);
    spawn_health_checks(&endpoint_b, &untrusted);
    let address = format!("localhost:{port}");
    let (t, a) = (trusted.clone(), address.clone());
    wait_for("OPTIONS over TLS to succeed", move || {
        t.health("pbx", &a) == Some(true)
    })
    .await;
    let (u, a) = (untrusted.clone(), address.clone());
    wait_for("an untrusted certificate to fail", move || {
        u.health("pbx", &a) == Some(false)
    })
    .await;
}
