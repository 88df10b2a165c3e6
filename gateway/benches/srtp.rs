//! One browser audio packet in: SRTP authenticated and decrypted, as the browser leg does for
//! each of the ~50 packets a second a call receives; and one audio packet out, encrypted and
//! authenticated, as for each packet a call sends. Each two ways, in the same run:
//!
//! - copying: `Context::decrypt_rtp`, as `rtc-srtp` 0.21.1 publishes it (parses an
//!   `rtp::Header`, copying out each header extension, and decrypts into a new buffer);
//! - in place: `Context::decrypt_rtp_in_place`, the vendored patch the gateway uses
//!   (vendor/README.md): reads the header's length, sequence number and SSRC off the bytes
//!   and decrypts where the packet lies.
//!
//! - copying encrypt: `Context::encrypt_rtp` as published (parses an `rtp::Header`, copies
//!   the packet into a new buffer, encrypts it there);
//! - in-place encrypt: `Context::encrypt_rtp_in_place` (vendored), encrypting where the
//!   packet was written and appending the tag.
//!
//! Decrypts start from a fresh copy of the ciphertext in a reused buffer, as a received
//! datagram would be; in-place encrypts from a fresh copy of the plaintext, as a packet just
//! written would be. The packet out is the gateway's: a plain 12-byte header and 60 bytes of
//! Opus. The packet is a browser's: Opus payload, and the audio level, absolute send
//! time, transport-wide sequence number and MID extensions (RFC 8285 one-byte form).
//! Run: `cargo bench -p gateway --bench srtp`.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

fn browser_packet() -> Vec<u8> {
    let mut p = vec![0x90, 111, 0x12, 0x34, 0, 1, 0xE2, 0x40, 0xAB, 0xCD, 0, 1];
    // Extension block: 4 elements in 11 bytes, padded to 3 words.
    p.extend_from_slice(&[0xBE, 0xDE, 0, 3]);
    p.extend_from_slice(&[0x10, 0xAA]); // ssrc-audio-level
    p.extend_from_slice(&[0x22, 1, 2, 3]); // abs-send-time
    p.extend_from_slice(&[0x31, 0, 7]); // transport-wide-cc
    p.extend_from_slice(&[0x40, b'0']); // mid
    p.push(0);
    // 20 ms of Opus at ~24 kbit/s.
    p.extend((0..60u8).map(|i| i.wrapping_mul(37)));
    p
}

fn gateway_packet() -> Vec<u8> {
    let mut p = vec![0x80, 111, 0x12, 0x34, 0, 1, 0xE2, 0x40, 0xAB, 0xCD, 0, 2];
    p.extend((0..60u8).map(|i| i.wrapping_mul(41)));
    p
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let provider = rtc::crypto::default_provider().expect("the ring provider");
    for profile in [
        ProtectionProfile::Aes128CmHmacSha1_80,
        ProtectionProfile::AeadAes128Gcm,
    ] {
        let key_salt: Vec<u8> = (0..profile.key_len() + profile.salt_len())
            .map(|i| i as u8)
            .collect();
        let (key, salt) = key_salt.split_at(profile.key_len());
        // No replay list: every round decrypts the same packet again.
        let new = || Context::new(key, salt, profile, None, None, provider.crypto()).unwrap();
        let sent = new().encrypt_rtp(&browser_packet()).unwrap().to_vec();
        let mut buf = vec![0u8; 1500];

        let mut copying = new();
        c.bench_function(&format!("{profile:?}: copying decrypt"), |b| {
            b.iter(|| {
                buf[..sent.len()].copy_from_slice(&sent);
                black_box(copying.decrypt_rtp(&buf[..sent.len()]).unwrap());
            })
        });
        let mut in_place = new();
        c.bench_function(&format!("{profile:?}: in-place decrypt"), |b| {
            b.iter(|| {
                buf[..sent.len()].copy_from_slice(&sent);
                black_box(
                    in_place
                        .decrypt_rtp_in_place(&mut buf[..sent.len()])
                        .unwrap(),
                );
            })
        });

        let plain = gateway_packet();
        let mut copying = new();
        c.bench_function(&format!("{profile:?}: copying encrypt"), |b| {
            b.iter(|| black_box(copying.encrypt_rtp(&plain).unwrap()))
        });
        let mut in_place = new();
        c.bench_function(&format!("{profile:?}: in-place encrypt"), |b| {
            b.iter(|| {
                buf[..plain.len()].copy_from_slice(&plain);
                black_box(
                    in_place
                        .encrypt_rtp_in_place(&mut buf, plain.len())
                        .unwrap(),
                );
            })
        });
    }
}
