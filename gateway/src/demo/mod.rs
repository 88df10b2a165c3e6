//! The built-in demo trunk: a real SIP/RTP peer inside the process, on loopback, so that
//! `gateway run` with no configuration exercises the whole path (WebRTC, transcoding, SIP,
//! G.711) and a newcomer hears audio with no carrier. Number `echo` returns what it hears
//! (DTMF included); number `tone` plays a 440 Hz tone.

use std::net::SocketAddr;
use std::time::Duration;

use rsip::Method;
use rsip::prelude::*;

use crate::media::codec::Codec;
use crate::media::session::{FRAME_SAMPLES, Received, RtpStream};
use crate::media::tone::ToneGenerator;
use crate::sip::endpoint::{Endpoint, EndpointConfig, IncomingRequest};
use crate::sip::message::{self, random_token, response_to};
use crate::sip::sdp::{self, LocalMedia};
use crate::sip::transaction::Timers;

/// Starts the demo trunk on 127.0.0.1 and returns its SIP address.
pub async fn start() -> std::io::Result<SocketAddr> {
    let (endpoint, mut inbound) = Endpoint::start(EndpointConfig {
        udp: "127.0.0.1:0".parse().expect("literal address"),
        tcp: None,
        tls: None,
        public_ip: None,
        user_agent: "gateway-demo-trunk".into(),
        timers: Timers::default(),
        // On loopback, reached by the gateway alone.
        edge: Default::default(),
    })
    .await?;
    let addr = endpoint.udp_addr();
    tokio::spawn(async move {
        while let Some(request) = inbound.recv().await {
            if request.request.method == Method::Invite {
                tokio::spawn(answer(endpoint.clone(), *request));
            } else if let Some(r) = &request.responder {
                r.respond(response_to(&request.request, 405, Some(&random_token())));
            }
        }
    });
    Ok(addr)
}

async fn answer(endpoint: Endpoint, invite: IncomingRequest) {
    let Some(responder) = invite.responder.clone() else {
        return;
    };
    let request = &invite.request;
    let tag = random_token();
    let number = message::uri_user(&request.uri).unwrap_or_default();
    let echo = match number.as_str() {
        "echo" => true,
        "tone" => false,
        _ => return responder.respond(response_to(request, 404, Some(&tag))),
    };
    let codecs = vec![Codec::Pcmu, Codec::Pcma];
    let remote = match sdp::parse_remote(&request.body, &codecs, &Default::default(), false) {
        Ok(r) => r,
        Err(_) => return responder.respond(response_to(request, 488, Some(&tag))),
    };
    let Ok(mut rtp) = RtpStream::bind("127.0.0.1".parse().expect("literal address"), 47000, 48999)
    else {
        return responder.respond(response_to(request, 503, Some(&tag)));
    };
    rtp.set_remote(remote);
    let local = LocalMedia {
        ip: "127.0.0.1".parse().expect("literal address"),
        port: rtp.local_port(),
        codecs,
        session_id: 1,
        srtp: Default::default(),
    };
    let Some(call_id) = message::call_id(request) else {
        return;
    };
    let mut dialog = endpoint.register_dialog(&call_id);
    let mut ok = response_to(request, 200, Some(&tag));
    ok.headers
        .push(rsip::Header::Contact(rsip::headers::Contact::new(format!(
            "<sip:{number}@{}>",
            endpoint.udp_addr()
        ))));
    ok.headers
        .push(rsip::Header::ContentType(rsip::headers::ContentType::new(
            "application/sdp",
        )));
    ok.body = sdp::answer(&local, 1, &remote).into_bytes();
    responder.respond(ok);

    let mut tone = ToneGenerator::new(440.0, 8000, 6000);
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut pcm = [0i16; 1500];
    let mut buf = [0u8; 1500];
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    // A demo call never outlives an hour, whatever the caller does.
    let limit = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(limit);
    loop {
        tokio::select! {
            _ = ticker.tick(), if !echo => {
                tone.fill(&mut frame);
                rtp.send_frame(&frame);
            }
            received = rtp.recv(&mut buf) => {
                let Ok((n, source)) = received else { continue };
                match rtp.handle_datagram(&mut buf[..n], source, std::time::Instant::now(), &mut pcm) {
                    // Echo frame by frame; packets of other sizes are cut to 20 ms frames.
                    Received::Audio { samples, .. } if echo => {
                        for chunk in pcm[..samples].chunks_exact(FRAME_SAMPLES) {
                            rtp.send_frame(chunk);
                        }
                    }
                    // Digits are echoed too, as RFC 4733 events.
                    Received::Digit(d) if echo => rtp.send_digits(&d.to_string()),
                    _ => {}
                }
            }
            incoming = dialog.recv() => {
                let Some(incoming) = incoming else { break };
                if let Some(r) = &incoming.responder {
                    r.respond(response_to(&incoming.request, 200, None));
                }
                if incoming.request.method == Method::Bye {
                    break;
                }
            }
            _ = &mut limit => break,
        }
    }
    endpoint.forget_dialog(&call_id);
}
