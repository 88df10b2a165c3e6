//! SDES lines, SRTP round trips, and the vendored SRTP context's patches (vendor/README.md)
//! against the published code.

use super::*;

/// RFC 4568 §9.1's example line.
const RFC_LINE: &str =
    "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4";

#[test]
fn lines_parse_and_unusable_ones_say_why() {
    // The RFC's own example carries an MKI, which we do not implement.
    assert_eq!(SdesKey::parse(RFC_LINE), Err(CryptoLineError::Key));
    let line = "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20";
    let key = SdesKey::parse(line).unwrap();
    assert_eq!((key.tag, key.suite), (1, CryptoSuite::AesCm128HmacSha1_80));
    assert_eq!(&key.key_salt[..4], &[0x3d, 0x2d, 0x6e, 0x40]);
    assert_eq!(
        SdesKey::parse("2 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"),
        Err(CryptoLineError::Suite("F8_128_HMAC_SHA1_80".into()))
    );
    assert_eq!(
        SdesKey::parse("3 AES_CM_128_HMAC_SHA1_32 inline:c2hvcnQ="),
        Err(CryptoLineError::Key)
    );
    assert_eq!(
        SdesKey::parse(
            "4 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR UNENCRYPTED_SRTP"
        ),
        Err(CryptoLineError::SessionParameter("UNENCRYPTED_SRTP".into()))
    );
    assert_eq!(SdesKey::parse("x"), Err(CryptoLineError::Syntax));
}

#[test]
fn our_lines_read_back_and_keys_differ() {
    let local = LocalSrtp::new(SrtpPolicy::Optional);
    assert_eq!(local.keys.len(), 2);
    assert_ne!(local.keys[0].key_salt, local.keys[1].key_salt);
    for key in &local.keys {
        assert_eq!(SdesKey::parse(&key.attribute_value()).unwrap(), *key);
        assert!(!format!("{key:?}").contains(&BASE64.encode(key.key_salt)));
    }
    assert!(LocalSrtp::new(SrtpPolicy::Off).keys.is_empty());
}

fn rtp(sequence: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160];
    p[2..4].copy_from_slice(&sequence.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0x55; 160]);
    p
}

fn protect(session: &mut SrtpSession, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + MAX_SRTP_TAG, 0);
    let n = session.protect(&mut buf, plain.len()).unwrap();
    buf.truncate(n);
    buf
}

/// Two ends keyed for each other with `suite`: what one protects, the other unprotects.
fn pair(suite: CryptoSuite) -> (SrtpSession, SrtpSession) {
    let (a, b) = (SdesKey::generate(1, suite), SdesKey::generate(1, suite));
    let keys = |ours, theirs| SrtpKeys {
        secure_profile: true,
        ours,
        theirs,
    };
    let alice = SrtpSession::new(keys(a, b)).unwrap();
    (alice, SrtpSession::new(keys(b, a)).unwrap())
}

#[test]
fn a_packet_survives_the_round_trip_and_forgeries_and_replays_do_not() {
    for suite in CryptoSuite::ALL {
        let (mut alice, mut bob) = pair(suite);
        let plain = rtp(7, 0x1234);
        let sent = protect(&mut alice, &plain);
        let tag = if suite == CryptoSuite::AesCm128HmacSha1_80 {
            10
        } else {
            4
        };
        assert_eq!(sent.len(), plain.len() + tag);
        assert_ne!(
            &sent[12..plain.len()],
            &plain[12..],
            "the payload is encrypted"
        );
        let mut buf = sent.to_vec();
        let n = bob.unprotect(&mut buf).unwrap();
        assert_eq!(&buf[..n], &plain[..]);
        // Replayed: refused.
        let mut again = sent.to_vec();
        assert!(bob.unprotect(&mut again).is_err());
        // One bit flipped: refused.
        let mut forged = protect(&mut alice, &rtp(8, 0x1234));
        forged[20] ^= 1;
        assert!(bob.unprotect(&mut forged).is_err());
        // Plain RTP passed off as SRTP: refused.
        let mut plain8 = rtp(9, 0x1234);
        assert!(bob.unprotect(&mut plain8).is_err());
    }
}

/// Two streams through one context, their packets interleaved: each keeps its own
/// rollover count and replay list (RFC 3711 §3.2.3) although the context remembers the
/// SSRC it saw last (`vendor/README.md`).
#[test]
fn interleaved_streams_keep_their_own_state() {
    for suite in CryptoSuite::ALL {
        let (mut alice, mut bob) = pair(suite);
        // The second stream crosses a rollover (65535 → 0) while the first does not.
        let order = [
            (0x1111, 100),
            (0x2222, 65534),
            (0x1111, 101),
            (0x2222, 65535),
            (0x2222, 0),
            (0x1111, 102),
        ];
        let mut sent = Vec::new();
        for (ssrc, sequence) in order {
            let plain = rtp(sequence, ssrc);
            let packet = protect(&mut alice, &plain);
            let mut buf = packet.clone();
            let n = bob.unprotect(&mut buf).unwrap_or_else(|e| {
                panic!("{suite:?}: SSRC {ssrc:#x} sequence {sequence}: {e}");
            });
            assert_eq!(&buf[..n], &plain[..]);
            sent.push(packet);
        }
        // Every packet replayed, latest first: all refused.
        for packet in sent.iter().rev() {
            assert!(bob.unprotect(&mut packet.clone()).is_err(), "{suite:?}");
        }
    }
}

/// A browser's audio packet: a CSRC, and an RFC 8285 one-byte extension block (audio
/// level, transport sequence number) padded to whole words.
fn browser_rtp(sequence: u16) -> Vec<u8> {
    let mut p = vec![0x91, 111];
    p.extend_from_slice(&sequence.to_be_bytes());
    p.extend_from_slice(&[0, 0, 3, 192, 0xAB, 0xCD, 0, 1, 0, 0, 0, 9]);
    p.extend_from_slice(&[0xBE, 0xDE, 0, 2, 0x10, 0x7f, 0x31, 0x12, 0x34, 0, 0, 0]);
    p.extend_from_slice(&[0x5a; 60]);
    p
}

/// The profiles DTLS-SRTP may agree with a browser, each with a master key and salt
/// made from `seed`.
fn browser_profiles(seed: u8) -> Vec<(ProtectionProfile, Vec<u8>)> {
    [
        ProtectionProfile::Aes128CmHmacSha1_80,
        ProtectionProfile::Aes128CmHmacSha1_32,
        ProtectionProfile::AeadAes128Gcm,
    ]
    .into_iter()
    .map(|profile| {
        let len = profile.key_len() + profile.salt_len();
        (profile, (0..len).map(|i| i as u8 * seed).collect())
    })
    .collect()
}

#[test]
fn the_in_place_decrypt_agrees_with_the_copying_one_for_every_profile() {
    for (profile, key_salt) in browser_profiles(7) {
        let (key, salt) = key_salt.split_at(profile.key_len());
        let new = || {
            let replay = Some(srtp_replay_protection(64));
            Context::new(key, salt, profile, replay, None, provider().crypto()).unwrap()
        };
        let (mut sender, mut copying, mut in_place) = (new(), new(), new());
        for sequence in [65_534, 65_535, 0, 1] {
            let plain = browser_rtp(sequence);
            let sent = sender.encrypt_rtp(&plain).unwrap();
            let copied = copying.decrypt_rtp(&sent).unwrap();
            let mut buf = sent.to_vec();
            let n = in_place.decrypt_rtp_in_place(&mut buf).unwrap();
            assert_eq!(&buf[..n], &plain[..], "{profile:?} #{sequence}");
            assert_eq!(&buf[..n], &copied[..], "{profile:?} #{sequence}");
            let mut replayed = sent.to_vec();
            assert!(in_place.decrypt_rtp_in_place(&mut replayed).is_err());
        }
        let mut forged = sender.encrypt_rtp(&browser_rtp(2)).unwrap().to_vec();
        forged[40] ^= 1;
        assert!(
            in_place.decrypt_rtp_in_place(&mut forged).is_err(),
            "{profile:?}"
        );
        // An extension block longer than the packet, and a packet shorter than a header.
        let mut cut = sender.encrypt_rtp(&browser_rtp(3)).unwrap().to_vec();
        cut[19] = 200;
        assert!(
            in_place.decrypt_rtp_in_place(&mut cut).is_err(),
            "{profile:?}"
        );
        assert!(in_place.decrypt_rtp_in_place(&mut [0x80; 11]).is_err());
    }
}

#[test]
fn the_in_place_encrypt_agrees_with_the_copying_one_for_every_profile() {
    for (profile, key_salt) in browser_profiles(5) {
        let (key, salt) = key_salt.split_at(profile.key_len());
        let new = || Context::new(key, salt, profile, None, None, provider().crypto()).unwrap();
        let (mut copying, mut in_place, mut receiver) = (new(), new(), new());
        // Across a rollover (RFC 3711 §3.3.1), our own packets (no extensions) and a
        // browser's (CSRC, extension block).
        for sequence in [65_534, 65_535, 0, 1] {
            let ours = rtp(sequence, 0x1234);
            for plain in [ours, browser_rtp(sequence)] {
                let copied = copying.encrypt_rtp(&plain).unwrap();
                let mut buf = plain.clone();
                buf.resize(plain.len() + 16, 0xEE);
                let n = in_place
                    .encrypt_rtp_in_place(&mut buf, plain.len())
                    .unwrap();
                assert_eq!(&buf[..n], &copied[..], "{profile:?} #{sequence}");
                let back = receiver.decrypt_rtp(&buf[..n]).unwrap();
                assert_eq!(&back[..], &plain[..], "{profile:?} #{sequence}");
            }
        }
        // No room for the tag, and a header longer than the packet: errors, no panic.
        let plain = rtp(2, 0x1234);
        let mut tight = plain.clone();
        assert!(
            in_place
                .encrypt_rtp_in_place(&mut tight, plain.len())
                .is_err()
        );
        let mut cut = browser_rtp(3);
        cut[19] = 200;
        let len = cut.len();
        cut.resize(len + 16, 0);
        assert!(in_place.encrypt_rtp_in_place(&mut cut, len).is_err());
        assert!(in_place.encrypt_rtp_in_place(&mut [0x80; 30], 11).is_err());
        assert!(in_place.encrypt_rtp_in_place(&mut [0x80; 30], 40).is_err());
    }
}

#[test]
fn forged_ssrcs_cannot_grow_the_inbound_context_without_bound() {
    let (a, b) = (
        SdesKey::generate(1, CryptoSuite::AesCm128HmacSha1_80),
        SdesKey::generate(1, CryptoSuite::AesCm128HmacSha1_80),
    );
    let mut bob = SrtpSession::new(SrtpKeys {
        secure_profile: true,
        ours: b,
        theirs: a,
    })
    .unwrap();
    for ssrc in 0..1000u32 {
        let mut junk = rtp(1, ssrc);
        junk.extend_from_slice(&[0; 10]);
        assert!(bob.unprotect(&mut junk).is_err());
    }
    assert_eq!(bob.inbound_ssrcs.0.len(), MAX_INBOUND_SSRCS);
}

/// The vendored SRTP replay window (vendor/README.md) refuses exactly what it saw or what
/// is older than its window (RFC 3711 §3.3.2), and answers as the published one does at
/// the widths that one keeps whole (multiples of 64).
#[test]
fn the_replay_window_refuses_what_it_saw_and_what_is_too_old() {
    use rand::{Rng, SeedableRng};
    use rtc::shared::replay_detector::{ReplayDetector, WrappedSlidingWindowDetector};
    for window in [1, 2, 63, 64, 100, 128] {
        let mut ours = srtp_replay_protection(window)();
        let mut published = WrappedSlidingWindowDetector::new(window, 65535);
        // The model: the packet indexes seen (RFC 3711 §3.3.1), and the highest.
        let (mut seen, mut latest) = (std::collections::HashSet::new(), None::<i64>);
        let (mut seq, mut refused, mut rng) = (65000i64, 0, rand::rngs::StdRng::seed_from_u64(7));
        for step in 0..20_000 {
            let r: i64 = rng.random_range(0..1 << 30);
            seq = match r % 10 {
                0 => seq - r % 150,
                1 => seq + r % 3000,
                2 => seq,
                _ => seq + 1,
            }
            .rem_euclid(65536);
            let head = *latest.get_or_insert(seq - 1);
            let index = head + (seq - head.rem_euclid(65536) + 32767).rem_euclid(65536) - 32767;
            let fresh = index > head - window as i64 && !seen.contains(&index);
            let ok = ours.check(seq as u64);
            assert_eq!(ok, fresh, "window {window}, step {step}, {seq}");
            let theirs = published.check(seq as u64);
            assert!(
                window % 64 != 0 || ok == theirs,
                "window {window}, step {step}"
            );
            refused += usize::from(!ok);
            if r % 7 != 0 {
                // (Else it failed authentication: checked, never accepted.)
                ours.accept();
                published.accept();
                if fresh {
                    seen.insert(index);
                    latest = Some(head.max(index));
                }
            }
        }
        assert!(refused > 1000, "the walk replays and goes back: {refused}");
    }
}
