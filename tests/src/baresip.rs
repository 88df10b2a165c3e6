//! baresip (Debian's `baresip-core`) as an independent SIP peer where sipp 3.6 cannot be
//! one: SIP over TLS and SRTP keyed by SDES (RFC 4568), with its `echo` module answering
//! every call and sending the decoded audio back re-encoded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A running baresip answering calls on 127.0.0.1 over TLS.
pub struct Baresip {
    child: Child,
    /// Its TLS port.
    pub tls_port: u16,
    /// The PEM certificate the gateway must trust (`ca_file`), for IP 127.0.0.1.
    pub ca_file: PathBuf,
    log: PathBuf,
}

impl Baresip {
    /// Starts baresip with its files in `dir/baresip`, answering as `sip:echo@127.0.0.1`.
    pub fn echo(dir: &Path, encryption: MediaEncryption) -> Baresip {
        let home = dir.join("baresip");
        std::fs::create_dir_all(&home).expect("baresip folder");
        // Four ports of our own (see `ports`): SIP on the first (TLS on the next, as
        // baresip listens), RTP and RTCP on the two after.
        let (_, base) = crate::ports();
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
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{base}\nsip_certificate {}\n\
             audio_player aubridge,nil\naudio_source aubridge,nil\naudio_alert aubridge,nil\n\
             rtp_ports {}-{}\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\n\
             module aubridge.so\nmodule srtp.so\nmodule_app account.so\nmodule_app echo.so\n",
            tls.display(),
            base + 2,
            base + 3
        );
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
            .expect("baresip runs (Debian package baresip-core; scripts/test.sh installs it)");
        let peer = Baresip {
            child,
            tls_port: base + 1,
            ca_file,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", peer.tls_port)).is_err() {
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
