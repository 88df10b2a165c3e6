//! Calls arriving from the SIP side: only trunk addresses may call in.

use gateway::config::Config;
use gateway_tests::{Sipp, out_dir, ports, write_config};

#[tokio::test(flavor = "multi_thread")]
async fn invites_from_unknown_addresses_get_one_stateless_403_and_from_trunks_480() {
    let (trunk_port, _) = ports();
    let (gateway_port, _) = ports();
    let trunk_dir = out_dir("inbound_trunk");
    let stranger_dir = out_dir("inbound_stranger");
    let path = write_config(&trunk_dir, &[("carrier", trunk_port, "udp", &[])]);
    // Refusing rather than dropping (the default), so the stranger has something to see.
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "udp = \"127.0.0.1:0\"",
        &format!("udp = \"127.0.0.1:{gateway_port}\"\nunknown_sources = \"reject\""),
        1,
    );
    // The dialled number routes to a browser identity that nobody has registered.
    std::fs::write(
        &path,
        format!("{text}\n[inbound]\n\"+15550100\" = \"agent-7\"\n"),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let gateway = gateway::run::start(&config).await.unwrap();
    let target = gateway.endpoint.udp_addr();

    // 127.0.0.2 is loopback too, but no trunk lives there.
    let stranger = Sipp::uac("uac_invite.xml", "127.0.0.2", None, target, &stranger_dir);
    let mut stranger = stranger;
    let stranger = tokio::task::spawn_blocking(move || {
        let ok = stranger.wait();
        (ok, stranger)
    })
    .await
    .unwrap();
    assert!(stranger.0, "sipp did not get a final response");
    let seen = stranger.1.messages();
    assert!(seen.contains("SIP/2.0 403"), "{seen}");
    // Stateless: no 100 Trying first, no retransmission of the 403 after.
    assert!(!seen.contains("SIP/2.0 100"), "{seen}");
    assert_eq!(seen.matches("SIP/2.0 403").count(), 1, "{seen}");

    // The trunk's own address (sipp bound to the configured trunk port) is let in; with no
    // browser registered yet the call is refused as temporarily unavailable.
    let from_trunk = Sipp::uac(
        "uac_invite.xml",
        "127.0.0.1",
        Some(trunk_port),
        target,
        &trunk_dir,
    );
    let mut from_trunk = from_trunk;
    let from_trunk = tokio::task::spawn_blocking(move || {
        let ok = from_trunk.wait();
        (ok, from_trunk)
    })
    .await
    .unwrap();
    assert!(from_trunk.0);
    assert!(
        from_trunk.1.messages().contains("SIP/2.0 480"),
        "{}",
        from_trunk.1.messages()
    );
}
