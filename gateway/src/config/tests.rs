//! The configuration file: good files load, every mistake is named with its place.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("gw.toml"), &|name| {
        (name == "CARRIER_PW").then(|| "s3cret".to_string())
    })
}

const GOOD: &str = r#"
[sip]
udp = "127.0.0.1:5060"

[rtp]
port_min = 30000
port_max = 30100

[trunks.carrier]
addresses = ["127.0.0.1:5080", "127.0.0.1:5081"]
username = "acme"
password_env = "CARRIER_PW"
codecs = ["PCMA", "PCMU"]
failover = ["backup"]

[trunks.backup]
addresses = ["pbx.example.com"]
transport = "tcp"

[targets.sales]
trunk = "carrier"
number = "+4930123456"
"#;

#[test]
fn a_good_file_loads_with_secrets_resolved() {
    let c = parse(GOOD).unwrap();
    let t = &c.trunks["carrier"];
    assert_eq!(t.codecs, vec![Codec::Pcma, Codec::Pcmu]);
    assert_eq!(t.credentials.as_ref().unwrap().password, "s3cret");
    assert_eq!(t.failover, vec!["backup"]);
    assert_eq!(c.trunks["backup"].transport, Transport::Tcp);
    assert_eq!(c.targets["sales"].number, "+4930123456");
    assert!(
        !format!("{t:?}").contains("s3cret"),
        "secrets never reach logs"
    );
}

#[test]
fn every_mistake_is_reported_with_line_and_field() {
    let bad = GOOD
        .replace("\"CARRIER_PW\"", "\"MISSING_PW\"")
        .replace("[\"PCMA\", \"PCMU\"]", "[\"PCMA\", \"G729\"]")
        .replace("failover = [\"backup\"]", "failover = [\"nowhere\"]")
        .replace("port_max = 30100", "port_max = 100");
    let err = parse(&bad).unwrap_err();
    let text = err.to_string();
    let fields: Vec<_> = err.issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "rtp.port_max",
            "trunks.carrier.password_env",
            "trunks.carrier.codecs",
            "trunks.carrier.failover"
        ],
        "{text}"
    );
    assert!(text.contains("gw.toml:7:12: rtp.port_max"), "{text}");
    assert!(text.contains("`MISSING_PW` is not set"), "{text}");
    assert!(text.contains("unknown codec `G729`"), "{text}");
}

#[test]
fn unknown_keys_and_syntax_errors_name_the_place() {
    let err = parse("[sip]\nudpp = \"1.2.3.4:5060\"\n").unwrap_err();
    assert_eq!(err.issues[0].line, 2);
    assert_eq!(err.issues[0].field, "udpp");
    let err = parse("[trunks.x]\naddresses = [\n").unwrap_err();
    assert_eq!(err.issues[0].field, "(syntax)");
    let err = parse("[trunks.x]\ntransport = \"udp\"\n").unwrap_err();
    assert!(err.to_string().contains("addresses"), "{err}");
}

#[test]
fn the_demo_configuration_is_valid() {
    let c = Config::demo("127.0.0.1:5999".parse().unwrap());
    assert!(c.http.anonymous);
    assert_eq!(c.targets["echo"].number, "echo");
    assert_eq!(c.trunks["demo"].addresses, ["127.0.0.1:5999"]);
}

#[test]
fn an_empty_file_is_a_valid_default_config() {
    let c = parse("").unwrap();
    assert_eq!(
        c.sip.udp,
        "0.0.0.0:5060".parse::<std::net::SocketAddr>().unwrap()
    );
    assert!(c.trunks.is_empty());
    assert_eq!(
        (c.media.opus_complexity, c.media.opus_complexity_under_loss),
        (1, 5)
    );
}

#[test]
fn opus_complexities_are_checked() {
    let err =
        parse("[media]\nopus_complexity = 11\nopus_complexity_under_loss = 12\n").unwrap_err();
    let fields: Vec<_> = err.issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        ["media.opus_complexity", "media.opus_complexity_under_loss"]
    );
    assert!(err.to_string().contains("from 0 to 10"), "{err}");
    let c = parse("[media]\nopus_complexity = 0\nopus_complexity_under_loss = 3\n").unwrap();
    assert_eq!(c.media.opus_complexity_under_loss, 3);
}

#[test]
fn media_workers_default_to_one_per_core_and_a_count_out_of_range_is_named() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(parse("").unwrap().media.workers, cores);
    assert_eq!(parse("[media]\nworkers = 3\n").unwrap().media.workers, 3);
    for bad in ["0", "257"] {
        let err = parse(&format!("[media]\nworkers = {bad}\n")).unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        assert_eq!(err.issues[0].field, "media.workers");
        assert!(err.to_string().contains("from 1 to 256"), "{err}");
    }
}

#[test]
fn transcoding_calls_tick_on_their_workers_clock_unless_told_not_to() {
    assert!(parse("").unwrap().media.worker_clock);
    assert!(
        !parse("[media]\nworker_clock = false\n")
            .unwrap()
            .media
            .worker_clock
    );
    let err = parse("[media]\nworker_clock = 1\n").unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert!(err.to_string().contains("expected a boolean"), "{err}");
    assert!(err.to_string().contains(":2:"), "the line is named: {err}");
}

#[test]
fn media_workers_send_through_io_uring_unless_told_not_to() {
    assert!(parse("").unwrap().media.io_uring);
    assert!(!parse("[media]\nio_uring = false\n").unwrap().media.io_uring);
    let err = parse("[media]\nio_uring = \"off\"\n").unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert!(err.to_string().contains("expected a boolean"), "{err}");
    assert!(err.to_string().contains(":2:"), "the line is named: {err}");
}

#[test]
fn a_media_turn_defaults_to_2_ms_and_a_long_one_is_named() {
    assert_eq!(parse("").unwrap().media.turn_ms, 2);
    assert_eq!(parse("[media]\nturn_ms = 0\n").unwrap().media.turn_ms, 0);
    assert_eq!(parse("[media]\nturn_ms = 5\n").unwrap().media.turn_ms, 5);
    let err = parse("[media]\nturn_ms = 6\n").unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].field, "media.turn_ms");
    assert!(
        err.to_string().contains("from 0 (wake per packet) to 5 ms"),
        "{err}"
    );
}

#[test]
fn a_media_worker_sleeps_in_one_piece_unless_naps_are_asked_for_and_a_long_nap_is_named() {
    assert_eq!(parse("").unwrap().media.nap_us, 0);
    assert_eq!(parse("[media]\nnap_us = 100\n").unwrap().media.nap_us, 100);
    assert_eq!(
        parse("[media]\nnap_us = 1000\n").unwrap().media.nap_us,
        1000
    );
    let err = parse("[media]\nnap_us = 1001\n").unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].field, "media.nap_us");
    assert!(err.issues[0].message.contains("1000 µs"), "{err}");
}

#[test]
fn media_workers_keep_the_gateways_nice_unless_told_and_a_nice_out_of_range_is_named() {
    assert_eq!(parse("").unwrap().media.nice, 0);
    assert_eq!(parse("[media]\nnice = -10\n").unwrap().media.nice, -10);
    assert_eq!(parse("[media]\nnice = -20\n").unwrap().media.nice, -20);
    assert_eq!(parse("[media]\nnice = 19\n").unwrap().media.nice, 19);
    for bad in [-21, 20, 1000] {
        let err = parse(&format!("[media]\nnice = {bad}\n")).unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        assert_eq!(err.issues[0].field, "media.nice");
        assert!(
            err.issues[0].message.contains("from -20 (first) to 19"),
            "{err}"
        );
    }
}

#[test]
fn token_keys_rotation_and_public_keys_load_and_bad_ones_are_named() {
    let dir = std::env::temp_dir().join(format!("gw-token-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = dir.join("idp.pem");
    std::fs::write(&pem, pair.public_key_pem()).unwrap();
    let old = dir.join("old-secret");
    std::fs::write(&old, "an old secret of 32 bytes, rotated").unwrap();
    let text = format!(
        "[http]\ntoken_secret_env = \"CARRIER_PW_LONG\"\ntoken_kid = \"2026-12\"\ntoken_audience = \"gateway\"\n\n\
         [[http.token_keys]]\nkid = \"2026-11\"\nsecret_file = \"{}\"\n\n\
         [[http.token_keys]]\nkid = \"idp\"\nalgorithm = \"ES256\"\npublic_key_file = \"{}\"\n",
        old.display(),
        pem.display()
    );
    let env = |name: &str| {
        (name == "CARRIER_PW_LONG").then(|| "a current secret, 32 bytes long".to_string())
    };
    let config = Config::parse(&text, Path::new("gw.toml"), &env).unwrap();
    let tokens = config.http.tokens.expect("tokens configured");
    let claims = crate::token::Claims {
        sub: "u".into(),
        exp: u64::MAX / 2,
        targets: vec![],
        numbers: false,
    };
    let old_token = crate::token::sign_with(
        &claims,
        b"an old secret of 32 bytes, rotated",
        Some("2026-11"),
    );
    // Signed with the old secret but without the configured audience: refused for that.
    assert_eq!(
        tokens.verify(&old_token, 1),
        Err(crate::token::TokenError::WrongAudience)
    );
    // A public key file that is not a key, and a key with no algorithm, are named.
    let bad = text
        .replace("algorithm = \"ES256\"\n", "")
        .replace(&old.display().to_string(), &pem.display().to_string());
    let err = Config::parse(&bad, Path::new("gw.toml"), &env).unwrap_err();
    let fields: Vec<_> = err.issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(fields, ["http.token_keys[1].algorithm"], "{err}");
    let bad = text.replace("algorithm = \"ES256\"", "algorithm = \"RS256\"");
    let err = Config::parse(&bad, Path::new("gw.toml"), &env).unwrap_err();
    assert!(err.to_string().contains("not a RS256 public key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_ring_timeout_is_checked_and_defaults_to_a_minute() {
    let err = parse("[limits]\nring_seconds = 0\n").unwrap_err();
    assert_eq!(err.issues[0].field, "limits.ring_seconds");
    assert_eq!(err.issues[0].line, 1, "{err}");
    assert_eq!(parse("").unwrap().limits.ring_seconds, 60);
    assert_eq!(
        parse("[limits]\nring_seconds = 20\n")
            .unwrap()
            .limits
            .ring_seconds,
        20
    );
}

#[test]
fn the_load_thresholds_are_checked() {
    let err = parse("[limits]\nshed_late_pct = 0\n").unwrap_err();
    assert_eq!(err.issues[0].field, "limits.shed_late_pct");
    let c = parse("").unwrap();
    assert_eq!((c.limits.late_tick_ms, c.limits.shed_late_pct), (20, 10));
    assert_eq!(
        (c.limits.media_load_pct, c.limits.economy_load_pct),
        (90, 80)
    );
    for field in ["media_load_pct", "economy_load_pct"] {
        for bad in ["0", "101"] {
            let err = parse(&format!("[limits]\n{field} = {bad}\n")).unwrap_err();
            assert_eq!(err.issues[0].field, format!("limits.{field}"));
            assert!(err.issues[0].message.contains("1 to 100"), "{err}");
        }
    }
}

#[test]
fn prack_is_supported_by_default_and_a_wrong_value_is_named() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.trunks["carrier"].prack, Prack::Supported);
    let c = parse(&GOOD.replace(
        "transport = \"tcp\"",
        "transport = \"tcp\"\nprack = \"required\"",
    ))
    .unwrap();
    assert_eq!(c.trunks["backup"].prack, Prack::Required);
    let err = parse(&GOOD.replace("transport = \"tcp\"", "prack = \"always\"")).unwrap_err();
    assert!(err.to_string().contains("always"), "{err}");
}

#[test]
fn session_expires_is_1800_by_default_and_below_90_is_refused_by_name() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.trunks["carrier"].session_expires, 1800);
    let c = parse(&GOOD.replace("transport = \"tcp\"", "session_expires = 0")).unwrap();
    assert_eq!(c.trunks["backup"].session_expires, 0);
    let err = parse(&GOOD.replace("transport = \"tcp\"", "session_expires = 30")).unwrap_err();
    assert!(
        err.issues
            .iter()
            .any(|i| i.field == "trunks.backup.session_expires" && i.message.contains("90")),
        "{err}"
    );
}

#[test]
fn identity_and_privacy_parse_and_default_to_from_and_none() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.trunks["carrier"].identity, Identity::From);
    assert_eq!(c.trunks["carrier"].privacy, Privacy::None);
    let c = parse(&GOOD.replace(
        "transport = \"tcp\"",
        "identity = \"both\"\nprivacy = \"id\"",
    ))
    .unwrap();
    assert_eq!(c.trunks["backup"].identity, Identity::Both);
    assert_eq!(c.trunks["backup"].privacy, Privacy::Id);
    assert!(parse(&GOOD.replace("transport = \"tcp\"", "identity = \"pay\"")).is_err());
}

#[test]
fn media_timeout_defaults_to_30_seconds_and_0_turns_it_off() {
    let c = parse(GOOD).unwrap();
    assert_eq!(
        c.trunks["carrier"].media_timeout,
        std::time::Duration::from_secs(30)
    );
    let c = parse(&GOOD.replace("transport = \"tcp\"", "media_timeout = 0")).unwrap();
    assert!(c.trunks["backup"].media_timeout.is_zero());
}

#[test]
fn srtp_needs_tls_unless_allowed_and_failover_trunks_must_match() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.trunks["carrier"].srtp, SrtpPolicy::Off);
    // backup (tcp) with SRTP: the keys would cross in clear text.
    let err = parse(&GOOD.replace("transport = \"tcp\"", "srtp = \"required\"")).unwrap_err();
    assert!(
        err.issues
            .iter()
            .any(|i| i.field == "trunks.backup.srtp" && i.message.contains("tls")),
        "{err}"
    );
    // Allowed explicitly, but the carrier fails over to it with another setting.
    let err = parse(&GOOD.replace(
        "transport = \"tcp\"",
        "srtp = \"optional\"\nsrtp_without_tls = true",
    ))
    .unwrap_err();
    assert!(
        err.issues
            .iter()
            .any(|i| i.field == "trunks.carrier.failover" && i.message.contains("srtp")),
        "{err}"
    );
    assert!(err.issues.iter().all(|i| i.field != "trunks.backup.srtp"));
    assert!(parse(&GOOD.replace("transport = \"tcp\"", "srtp = \"sometimes\"")).is_err());
}

#[test]
fn turn_servers_need_the_shared_secret_and_urls_are_checked() {
    let with = |webrtc: &str| format!("{GOOD}\n[webrtc]\n{webrtc}");
    let c = parse(&with("ice_servers = [\"stun:stun.example.com\"]\n")).unwrap();
    assert_eq!(
        c.ice_servers
            .for_client("x", std::time::SystemTime::now())
            .len(),
        1
    );
    let err = parse(&with("ice_servers = [\"turn:turn.example.com:3478\"]\n")).unwrap_err();
    assert!(
        err.issues
            .iter()
            .any(|i| i.field == "webrtc.ice_servers" && i.message.contains("turn_secret")),
        "{err}"
    );
    let err = parse(&with("ice_servers = [\"http://turn.example.com\"]\n")).unwrap_err();
    assert!(err.to_string().contains("not a stun:"), "{err}");
    let err = parse(&with(
        "ice_servers = [\"turn:t.example.com\"]\nturn_secret_env = \"TURN_SECRET\"\nturn_credential_seconds = 5\n",
    ))
    .unwrap_err();
    assert!(
        err.issues
            .iter()
            .any(|i| i.field == "webrtc.turn_credential_seconds"),
        "{err}"
    );
}

#[test]
fn a_cluster_needs_a_redis_url_and_a_node_id_fit_for_a_key() {
    let with = |cluster: &str| format!("{GOOD}\n[cluster]\n{cluster}");
    let c = parse(&with(
        "redis_url = \"redis://10.0.0.9:6379/0\"\nnode_id = \"gw-1\"\nredis_password_env = \"CARRIER_PW\"\npeers = [\"10.0.0.0/24\", \"10.0.1.7\"]\n",
    ))
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(
        (
            cluster.node_id.as_str(),
            cluster.lease_seconds,
            cluster.key_prefix.as_str()
        ),
        ("gw-1", 15, "gateway")
    );
    assert_eq!(cluster.redis_password.as_deref(), Some("s3cret"));
    assert!(cluster.peers[0].contains(&"10.0.0.42".parse::<std::net::IpAddr>().unwrap()));
    assert!(cluster.peers[1].contains(&"10.0.1.7".parse::<std::net::IpAddr>().unwrap()));
    assert!(!cluster.peers[1].contains(&"10.0.1.8".parse::<std::net::IpAddr>().unwrap()));
    assert!(
        parse(GOOD).unwrap().cluster.is_none(),
        "one node needs no Redis"
    );
    let err = parse(&with(
        "redis_url = \"http://10.0.0.9\"\nnode_id = \"gw 1\"\nlease_seconds = 1\nsip_address = \"10.0.0.11\"\nmax_calls = 0\npeers = [\"10.0.0.300\"]\n",
    ))
    .unwrap_err();
    for field in [
        "cluster.redis_url",
        "cluster.node_id",
        "cluster.lease_seconds",
        "cluster.sip_address",
        "cluster.max_calls",
        "cluster.peers",
    ] {
        assert!(
            err.issues.iter().any(|i| i.field == field),
            "{field}: {err}"
        );
    }
    let err = parse(&with("node_id = \"gw-1\"\n")).unwrap_err();
    assert!(err.to_string().contains("redis_url"), "{err}");
}

#[test]
fn a_plugins_http_allowlist_and_limits_are_checked() {
    let plugin =
        |extra: &str| format!("[[plugins]]\nname = \"crm\"\npath = \"/dev/null\"\n{extra}\n");
    let err = parse(&plugin(
        "allow_http = [\"https://crm.example/api/*\", \"crm.example/*\"]\nhttp_timeout_ms = 0\nhttp_max_concurrent = 5000\nhttp_ca_file = \"/no/such/ca.pem\"",
    ))
    .unwrap_err();
    let fields: Vec<&str> = err.issues.iter().map(|i| i.field.as_str()).collect();
    for field in [
        "plugins[0].allow_http",
        "plugins[0].http_timeout_ms",
        "plugins[0].http_max_concurrent",
        "plugins[0].http_ca_file",
    ] {
        assert!(fields.contains(&field), "{field} named: {err}");
    }
    assert!(
        err.to_string()
            .contains("`crm.example/*` is not an absolute URL"),
        "{err}"
    );
}
