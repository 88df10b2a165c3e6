//! Demo mode: the built-in SIP trunk answers `echo` and `tone`, so the whole path (WebRTC,
//! Opus, G.711, SIP) works with no carrier and no configuration.

use gateway::config::Config;
use gateway_tests::client::{CallOptions, run_call};

async fn demo_gateway() -> gateway::run::Gateway {
    let trunk = gateway::demo::start().await.unwrap();
    let mut config = Config::demo(trunk);
    // The real demo listens on 8080 and 10000; tests take free loopback ports.
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.webrtc_udp = "127.0.0.1:0".parse().unwrap();
    config.rtp.ip = "127.0.0.1".parse().unwrap();
    gateway::run::start(&config).await.unwrap()
}

fn call(to: &str, tone_hz: f64) -> CallOptions {
    CallOptions {
        tone_hz,
        ..CallOptions::new(to)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_echo_returns_the_callers_tone_and_demo_tone_plays_440_hz() {
    let gateway = demo_gateway().await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    let (echo_call, tone_call) = (call("echo", 1004.0), call("tone", 440.0));
    let (echo, tone) = tokio::join!(run_call(&url, &echo_call), run_call(&url, &tone_call));
    let (echo, tone) = (echo.unwrap(), tone.unwrap());
    eprintln!("echo: {echo:?}\ntone: {tone:?}");
    assert!(echo.tone_snr_db.unwrap_or(0.0) >= 20.0, "{echo:?}");
    // The tone target ignores what it hears and plays 440 Hz.
    assert!(tone.tone_snr_db.unwrap_or(0.0) >= 20.0, "{tone:?}");
    assert_eq!(echo.ended.unwrap()["reason"], "hangup");
    assert_eq!(tone.ended.unwrap()["reason"], "hangup");
}
