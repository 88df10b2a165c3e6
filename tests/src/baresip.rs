//! baresip (Debian's `baresip-core`) as an independent SIP peer where sipp 3.6 cannot be
//! one: SIP over TLS and SRTP keyed by SDES (RFC 4568) through libsrtp. As the trunk
//! answering our calls its `echo` module sends the decoded audio back re-encoded; as a
//! caller it plays a 1004 Hz tone from a file and records what it decodes. It speaks G.711,
//! or G.722 through SpanDSP's coder: a G.722 peer that is not the gateway's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway::media::tone::{ToneDetector, ToneGenerator, ToneReport};

/// How the peer wants its media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEncryption {
    /// SRTP or no call (`mediaenc=srtp-mand`: a plain offer is refused).
    SrtpMandatory,
    /// SRTP when offered, plain RTP otherwise (`mediaenc=srtp`).
    SrtpBestEffort,
    /// Plain RTP only.
    None,
}

/// The audio codec the peer speaks: the one codec module it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCodec {
    /// G.711 (`g711.so`: PCMU and PCMA), 8 kHz.
    G711,
    /// G.722 (`g722.so`, SpanDSP's coder), 16 kHz.
    G722,
}

impl PeerCodec {
    fn module(self) -> &'static str {
        match self {
            PeerCodec::G711 => "g711.so",
            PeerCodec::G722 => "g722.so",
        }
    }

    /// The rate of the audio it codes, and so of the tone file a caller plays (baresip's
    /// `aufile` refuses a file of another rate).
    fn rate(self) -> u32 {
        match self {
            PeerCodec::G711 => 8000,
            PeerCodec::G722 => 16_000,
        }
    }
}

/// The number a caller dials at the gateway ([`Baresip::gateway_taking_calls`]), the browser
/// it reaches, and the secret that browser's tokens are signed with.
const INBOUND_NUMBER: &str = "+15550100";
const INBOUND_AGENT: &str = "agent-7";
const AGENT_SECRET: &str = "agent-secret-0123456789abcdef";

/// What the peer does with a call's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Answers every call and loops its audio back (`echo` over `aubridge`).
    Echo,
    /// Places calls (see [`Baresip::dial`]) playing a tone, recording what it hears.
    Caller,
}

/// A running baresip on 127.0.0.1 with SIP over TLS.
pub struct Baresip {
    child: Child,
    /// Its TLS port.
    pub tls_port: u16,
    /// The PEM certificate the gateway must trust (`ca_file`), for IP 127.0.0.1.
    pub ca_file: PathBuf,
    /// Its control port (`ctrl_tcp`: netstring JSON commands).
    ctrl_port: u16,
    /// Where a caller's decoded audio is written (`sndfile`).
    recordings: PathBuf,
    log: PathBuf,
}

/// The tone a caller plays, Hz (the one the WebRTC test client measures).
pub const TONE_HZ: f64 = 1004.0;

impl Baresip {
    /// A peer in `dir/baresip` answering every call as `sip:echo@127.0.0.1` with its audio.
    pub fn echo(dir: &Path, encryption: MediaEncryption) -> Baresip {
        Self::start(dir, encryption, Role::Echo, PeerCodec::G711)
    }

    /// A peer in `dir/baresip` that calls out with [`Baresip::dial`], playing ten seconds
    /// of a [`TONE_HZ`] tone and recording what it decodes.
    pub fn caller(dir: &Path, encryption: MediaEncryption) -> Baresip {
        Self::start(dir, encryption, Role::Caller, PeerCodec::G711)
    }

    /// A caller as [`Baresip::caller`] that offers and speaks `codec` only.
    pub fn caller_speaking(dir: &Path, encryption: MediaEncryption, codec: PeerCodec) -> Baresip {
        Self::start(dir, encryption, Role::Caller, codec)
    }

    fn start(dir: &Path, encryption: MediaEncryption, role: Role, codec: PeerCodec) -> Baresip {
        let home = dir.join("baresip");
        let recordings = home.join("received");
        std::fs::create_dir_all(&recordings).expect("baresip folder");
        // Four ports of our own (see `ports`): SIP on the first (TLS on the next, as
        // baresip listens), RTP and RTCP on the two after; and one for control.
        let (_, base) = crate::ports();
        let (ctrl_port, _) = crate::ports();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .expect("a self-signed certificate");
        let ca_file = home.join("ca.pem");
        std::fs::write(&ca_file, cert.cert.pem()).expect("write ca.pem");
        let tls = home.join("tls.pem");
        std::fs::write(
            &tls,
            format!("{}{}", cert.cert.pem(), cert.signing_key.serialize_pem()),
        )
        .expect("write tls.pem");
        // The echo module names each call's devices after the call, so the loop is an
        // `aubridge` pair; a caller plays a file and dumps what it decodes (`sndfile`).
        let audio = match role {
            Role::Echo => "audio_player aubridge,nil\naudio_source aubridge,nil\n".to_string(),
            Role::Caller => {
                let tone = home.join("tone.wav");
                write_tone_wav(&tone, codec.rate());
                format!(
                    "audio_player aubridge,nil\naudio_source aufile,{}\nmodule aufile.so\n\
                     module sndfile.so\nsnd_path {}\n",
                    tone.display(),
                    recordings.display()
                )
            }
        };
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{base}\nsip_certificate {}\n{audio}\
             audio_alert aubridge,alert\nrtp_ports {}-{}\nmodule_path /usr/lib/baresip/modules\n\
             module {}\nmodule aubridge.so\nmodule srtp.so\nmodule_app account.so\n\
             module_app echo.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\n\
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n",
            tls.display(),
            base + 2,
            base + 3,
            codec.module()
        );
        let config = match role {
            Role::Echo => config,
            // A caller answers nothing.
            Role::Caller => config.replace("module_app echo.so\n", ""),
        };
        std::fs::write(home.join("config"), config).expect("write baresip config");
        let mediaenc = match encryption {
            MediaEncryption::SrtpMandatory => ";mediaenc=srtp-mand",
            MediaEncryption::SrtpBestEffort => ";mediaenc=srtp",
            MediaEncryption::None => "",
        };
        std::fs::write(
            home.join("accounts"),
            format!("<sip:echo@127.0.0.1;transport=tls>;regint=0{mediaenc}\n"),
        )
        .expect("write baresip accounts");
        let log = home.join("baresip.log");
        let out = std::fs::File::create(&log).expect("baresip log");
        let child = Command::new("baresip")
            .arg("-v")
            .arg("-f")
            .arg(&home)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect(
                "baresip runs (Debian package baresip-core; scripts/install-deps.sh installs it)",
            );
        let peer = Baresip {
            child,
            tls_port: base + 1,
            ca_file,
            ctrl_port,
            recordings,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", peer.tls_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", peer.ctrl_port)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "baresip did not listen on {}: {}",
                peer.tls_port,
                peer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        peer
    }

    /// Places a call to `uri` over TLS (the account's transport).
    pub fn dial(&self, uri: &str) {
        use std::io::Write;
        let command = format!(r#"{{"command":"dial","params":"{uri}","token":"dial"}}"#);
        let mut ctrl = std::net::TcpStream::connect(("127.0.0.1", self.ctrl_port))
            .expect("baresip's control port");
        // ctrl_tcp frames each command as a netstring; its answer comes once the call is
        // placed (read, so the connection closes only after).
        write!(ctrl, "{}:{command},", command.len()).expect("send the dial command");
        let _ = ctrl.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = std::io::Read::read(&mut ctrl, &mut [0u8; 512]);
    }

    /// The [`TONE_HZ`] tone in what a caller decoded from its call (after SRTP, its codec),
    /// at the rate it decoded (`sndfile` writes what the decoder gave), and that rate.
    pub fn received_tone(&self) -> Option<(ToneReport, u32)> {
        let entry = std::fs::read_dir(&self.recordings)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with("-dec.wav"))?;
        let (rate, pcm) = wav_samples(&std::fs::read(entry.path()).ok()?)?;
        // Blocks of 100 ms.
        let mut detector = ToneDetector::new(TONE_HZ, rate, rate as usize / 10);
        detector.push(&pcm);
        Some((detector.report(), rate))
    }

    /// Waits for the peer to log its call's end; returns its log. libre reports a BYE
    /// received as ECONNRESET ("Connection reset by peer"), whatever the transport did.
    pub async fn wait_for_hangup(&self) -> String {
        for _ in 0..100 {
            let log = self.log();
            if log.contains(" terminated (duration") {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("baresip never saw the call end: {}", self.log());
    }

    /// Calls [`INBOUND_NUMBER`] at `gateway` (one from [`Baresip::gateway_taking_calls`])
    /// once the browser [`INBOUND_AGENT`], answering for `seconds`, has registered; returns
    /// the browser's report and the peer's log once it saw the call end.
    pub async fn call_in(
        &self,
        gateway: &gateway::run::Gateway,
        seconds: f64,
    ) -> (crate::client::CallReport, String) {
        let url = format!("ws://{}/ws", gateway.http_addr);
        let options = crate::client::CallOptions::answering(INBOUND_AGENT, AGENT_SECRET, seconds);
        let browser = crate::client::spawn_call(&url, options);
        // The call is placed only once the browser is registered, not after a fixed pause.
        crate::wait_for_registered(gateway.http_addr, 1).await;
        let tls = gateway.endpoint.tls_addr().expect("a TLS listener");
        self.dial(&format!("sip:{INBOUND_NUMBER}@{tls}"));
        let report = browser.await.expect("the browser's call");
        let log = self.wait_for_hangup().await;
        eprintln!("{}\n{log}", serde_json::to_string_pretty(&report).unwrap());
        (report, log)
    }

    /// A gateway whose trunk `carrier` is this peer over TLS, its table extended with
    /// `settings`, listening for SIP over TLS itself (with a certificate of its own), and
    /// sending calls for [`INBOUND_NUMBER`] to the browser [`INBOUND_AGENT`], whose tokens
    /// are signed with [`AGENT_SECRET`]; CDRs in `dir/cdr.jsonl`, whose path comes back too.
    pub async fn gateway_taking_calls(
        &self,
        dir: &Path,
        settings: &str,
    ) -> (gateway::run::Gateway, PathBuf) {
        let own = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        std::fs::write(dir.join("gw-cert.pem"), own.cert.pem()).unwrap();
        std::fs::write(dir.join("gw-key.pem"), own.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("secret"), AGENT_SECRET).unwrap();
        let edit = |text: String| {
            let text = text
                .replace(
                    "[sip]\n",
                    &format!(
                        "[sip]\ntls = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                        dir.join("gw-cert.pem").display(),
                        dir.join("gw-key.pem").display()
                    ),
                )
                .replace(
                    "[http]\n",
                    &format!(
                        "[http]\ntoken_secret_file = \"{}\"\n",
                        dir.join("secret").display()
                    ),
                );
            format!("{text}\n[inbound]\n\"{INBOUND_NUMBER}\" = \"{INBOUND_AGENT}\"\n")
        };
        crate::gateway_to(dir, (self.tls_port, "tls"), settings, edit).await
    }

    /// What baresip printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ten seconds of the tone at `rate`, mono 16-bit PCM WAV.
fn write_tone_wav(path: &Path, rate: u32) {
    let mut pcm = vec![0i16; 10 * rate as usize];
    ToneGenerator::new(TONE_HZ, rate, 8000).fill(&mut pcm);
    crate::write_wav(path, rate, &pcm);
}

/// The sample rate of a RIFF WAV file (its `fmt ` chunk) and the 16-bit samples of its
/// `data` chunk (libsndfile may write other chunks between them).
fn wav_samples(file: &[u8]) -> Option<(u32, Vec<i16>)> {
    let mut rate = None;
    let mut at = 12;
    while at + 8 <= file.len() {
        let id = &file[at..at + 4];
        let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().ok()?) as usize;
        let body = file.get(at + 8..(at + 8 + len).min(file.len()))?;
        if id == b"fmt " {
            rate = Some(u32::from_le_bytes(body.get(4..8)?.try_into().ok()?));
        }
        if id == b"data" {
            let samples = body
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            return Some((rate?, samples));
        }
        at += 8 + len + (len & 1);
    }
    None
}
