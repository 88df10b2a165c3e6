//! baresip (Debian's `baresip-core`) as an independent SIP peer where sipp 3.6 cannot be
//! one: SIP over TLS and SRTP keyed by SDES (RFC 4568) through libsrtp. As the trunk
//! answering our calls its `echo` module sends the decoded audio back re-encoded; as a
//! caller it plays a 1004 Hz tone from a file and records what it decodes.

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
        Self::start(dir, encryption, Role::Echo)
    }

    /// A peer in `dir/baresip` that calls out with [`Baresip::dial`], playing ten seconds
    /// of a [`TONE_HZ`] tone and recording what it decodes.
    pub fn caller(dir: &Path, encryption: MediaEncryption) -> Baresip {
        Self::start(dir, encryption, Role::Caller)
    }

    fn start(dir: &Path, encryption: MediaEncryption, role: Role) -> Baresip {
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
                write_tone_wav(&tone);
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
             module g711.so\nmodule aubridge.so\nmodule srtp.so\nmodule_app account.so\n\
             module_app echo.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\n\
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n",
            tls.display(),
            base + 2,
            base + 3
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

    /// The [`TONE_HZ`] tone in what a caller decoded from its call (after SRTP, PCMU).
    pub fn received_tone(&self) -> Option<ToneReport> {
        let entry = std::fs::read_dir(&self.recordings)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with("-dec.wav"))?;
        let pcm = wav_samples(&std::fs::read(entry.path()).ok()?)?;
        let mut detector = ToneDetector::new(TONE_HZ, 8000, 800);
        detector.push(&pcm);
        Some(detector.report())
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

/// Ten seconds of the tone, 8 kHz mono 16-bit PCM WAV.
fn write_tone_wav(path: &Path) {
    let mut pcm = vec![0i16; 80_000];
    ToneGenerator::new(TONE_HZ, 8000, 8000).fill(&mut pcm);
    crate::write_wav(path, 8000, &pcm);
}

/// The 16-bit samples of a RIFF WAV file's `data` chunk (libsndfile may write other
/// chunks before it).
fn wav_samples(file: &[u8]) -> Option<Vec<i16>> {
    let mut at = 12;
    while at + 8 <= file.len() {
        let id = &file[at..at + 4];
        let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().ok()?) as usize;
        let body = file.get(at + 8..(at + 8 + len).min(file.len()))?;
        if id == b"data" {
            return Some(
                body.chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            );
        }
        at += 8 + len + (len & 1);
    }
    None
}
