//! The TURN credentials the gateway mints, against a real coturn (`use-auth-secret`) and its
//! own test client (`turnutils_uclient`): accepted while fresh, refused once expired.

use std::process::Command;
use std::time::{Duration, SystemTime};

use gateway::rtc::ice_servers::IceServers;
use gateway_tests::coturn::Coturn;
use gateway_tests::out_dir;

/// Whether coturn at `port` grants `server`'s credentials an allocation (and relays a
/// packet to a loopback peer).
fn allocates(port: u16, server: &gateway::rtc::ice_servers::IceServer) -> bool {
    let output = Command::new("turnutils_uclient")
        .args(["-u", server.username.as_deref().unwrap()])
        .args(["-w", server.credential.as_deref().unwrap()])
        .args([
            "-p",
            &port.to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            "9",
            "-n",
            "1",
            "-c",
            "-y",
        ])
        .arg("127.0.0.1")
        .output()
        .expect("turnutils_uclient runs (Debian package coturn)");
    output.status.success()
}

#[test]
fn coturn_accepts_fresh_credentials_and_refuses_expired_ones() {
    let dir = out_dir("turn_credentials");
    let secret = "turn-shared-secret-0123456789";
    let coturn = Coturn::start(&dir, secret);
    let lifetime = Duration::from_secs(60);
    let servers = IceServers::new(
        &[format!("turn:127.0.0.1:{}?transport=udp", coturn.port)],
        secret.as_bytes().to_vec(),
        lifetime,
    );
    let fresh = servers.for_client("agent-7", SystemTime::now());
    assert!(allocates(coturn.port, &fresh[0]), "{}", coturn.log());
    // Minted more than a lifetime ago: expired now.
    let old = servers.for_client("agent-7", SystemTime::now() - 2 * lifetime);
    assert!(!allocates(coturn.port, &old[0]), "{}", coturn.log());
    // And credentials under another secret are refused outright.
    let forged = IceServers::new(
        &[format!("turn:127.0.0.1:{}", coturn.port)],
        b"not-the-shared-secret".to_vec(),
        lifetime,
    )
    .for_client("agent-7", SystemTime::now());
    assert!(!allocates(coturn.port, &forged[0]), "{}", coturn.log());
}
