pub mod cipher_aead_aes_gcm;
pub mod cipher_aes_cm_hmac_sha1;

use bytes::BytesMut;
use crypto::{CryptoError, RTCCrypto};

use shared::error::{Error, Result};

/// What decrypting an RTP packet needs of its header, read off the packet's bytes without
/// parsing its extensions into an `rtp::Header` (which allocates for each of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtpHeaderFields {
    /// The header's length as sent: fixed part, CSRCs and extension block (RFC 3550 §5.3.1).
    pub len: usize,
    pub sequence_number: u16,
    pub ssrc: u32,
}

impl RtpHeaderFields {
    /// The fields of the RTP packet `packet`, or an error when it is no whole RTP header.
    pub(crate) fn read(packet: &[u8]) -> Result<RtpHeaderFields> {
        if packet.len() < 12 {
            return Err(Error::ErrHeaderSizeInsufficient);
        }
        if packet[0] >> 6 != 2 {
            return Err(Error::BadVersion);
        }
        let mut len = 12 + 4 * usize::from(packet[0] & 0x0f);
        if packet[0] & 0x10 != 0 {
            let Some(words) = packet.get(len + 2..len + 4) else {
                return Err(Error::ErrHeaderSizeInsufficientForExtension);
            };
            len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
        }
        if packet.len() < len {
            return Err(Error::ErrHeaderSizeInsufficientForExtension);
        }
        Ok(RtpHeaderFields {
            len,
            sequence_number: u16::from_be_bytes([packet[2], packet[3]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        })
    }
}

type Kdf = fn(&dyn RTCCrypto, u8, &[u8], &[u8], usize, usize) -> Result<Vec<u8>>;

pub(crate) fn crypto_error(error: CryptoError) -> Error {
    Error::Crypto(error.to_string())
}

///NOTE: Auth tag and AEAD auth tag are placed at the different position in SRTCP
///
///In non-AEAD cipher, the authentication tag is placed *after* the ESRTCP word
///(Encrypted-flag and SRTCP index).
///
///> AES_128_CM_HMAC_SHA1_80
///> | RTCP Header | Encrypted payload |E| SRTCP Index | Auth tag |
///>                                   ^               |----------|
///>                                   |                ^
///>                                   |                authTagLen=10
///>                                   aeadAuthTagLen=0
///
///In AEAD cipher, the AEAD authentication tag is embedded in the ciphertext.
///It is *before* the ESRTCP word (Encrypted-flag and SRTCP index).
///
///> AEAD_AES_128_GCM
///> | RTCP Header | Encrypted payload | AEAD auth tag |E| SRTCP Index |
///>                                   |---------------|               ^
///>                                    ^                              authTagLen=0
///>                                    aeadAuthTagLen=16
///
///See https://tools.ietf.org/html/rfc7714 for the full specifications.
///
/// Cipher represents a implementation of one
/// of the SRTP Specific ciphers.
pub(crate) trait Cipher: Send {
    /// Get RTP authenticated tag length.
    fn rtp_auth_tag_len(&self) -> usize;

    /// Get RTCP authenticated tag length.
    fn rtcp_auth_tag_len(&self) -> usize;

    /// Get AEAD auth key length of the cipher.
    fn aead_auth_tag_len(&self) -> usize;

    /// Retrieved RTCP index.
    fn get_rtcp_index(&self, input: &[u8]) -> usize;

    /// Encrypt RTP payload.
    fn encrypt_rtp(&mut self, payload: &[u8], header: &rtp::Header, roc: u32) -> Result<BytesMut>;

    /// Decrypt RTP payload.
    fn decrypt_rtp(&mut self, payload: &[u8], header: &rtp::Header, roc: u32) -> Result<BytesMut>;

    /// Encrypts the RTP packet in `buf[..plain_len]` in place, given its header's length and
    /// fields, and writes its authentication tag after it; returns the length of the SRTP
    /// packet now at the start of `buf`, which must have room for the tag.
    fn encrypt_rtp_in_place(
        &mut self,
        buf: &mut [u8],
        plain_len: usize,
        header: &RtpHeaderFields,
        roc: u32,
    ) -> Result<usize>;

    /// Authenticates and decrypts the SRTP packet in `packet` in place, given its header's
    /// length and fields; returns the length of the plaintext packet (header included) now at
    /// its start.
    fn decrypt_rtp_in_place(
        &mut self,
        packet: &mut [u8],
        header: &RtpHeaderFields,
        roc: u32,
    ) -> Result<usize>;

    /// Encrypt RTCP payload.
    fn encrypt_rtcp(&mut self, payload: &[u8], srtcp_index: usize, ssrc: u32) -> Result<BytesMut>;

    /// Decrypt RTCP payload.
    fn decrypt_rtcp(&mut self, payload: &[u8], srtcp_index: usize, ssrc: u32) -> Result<BytesMut>;
}
