//! RSA 3072/4096 on firmware 5.7+, which the `yubikey` crate 0.8 does not implement: the few
//! PIV commands needed (GENERATE ASYMMETRIC, GENERAL AUTHENTICATE, PUT DATA), sent on a second
//! shared PC/SC handle to the same card.
//!
//! The applet stays selected and the PIN / management-key status is the card's, not the
//! handle's: the caller verifies the PIN and authenticates with the `yubikey` crate on its
//! handle, then issues the command here, without a SELECT in between (a SELECT would clear the
//! PIN status). Each command runs inside a PC/SC transaction so no other program interleaves.

use std::ffi::CString;

use super::super::TokenError;

const BACKEND: &str = "yubikey";
/// PIV algorithm references (SP 800-78 / Yubico).
pub(super) const ALG_RSA3072: u8 = 0x05;
pub(super) const ALG_RSA4096: u8 = 0x16;

fn err(operation: &str, reason: impl ToString) -> TokenError {
    TokenError::Backend {
        backend: BACKEND,
        operation: operation.into(),
        reason: reason.to_string(),
    }
}

/// Algorithm reference for an RSA size this module handles.
pub(super) fn algorithm(bits: usize) -> Option<u8> {
    match bits {
        3072 => Some(ALG_RSA3072),
        4096 => Some(ALG_RSA4096),
        _ => None,
    }
}

pub(super) struct RawPiv {
    /// `None` only while dropping.
    card: Option<pcsc::Card>,
    _context: pcsc::Context,
}

impl Drop for RawPiv {
    /// Leave the card as it is: the pcsc default (reset) would clear the PIN status of the
    /// `yubikey` crate's handle too.
    fn drop(&mut self) {
        if let Some(card) = self.card.take() {
            let _ = card.disconnect(pcsc::Disposition::LeaveCard);
        }
    }
}

/// BER-TLV length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

fn tlv(tag: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = tag.to_vec();
    push_len(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

/// Parses one BER-TLV at the start of `data` (tags of one or two bytes); returns
/// `(tag, value, rest)`.
fn parse_tlv(data: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    let (tag, rest) = match *data.first()? {
        t if t & 0x1f == 0x1f => (u16::from_be_bytes([t, *data.get(1)?]), &data[2..]),
        t => (u16::from(t), &data[1..]),
    };
    let (len, rest) = match *rest.first()? {
        l if l < 0x80 => (usize::from(l), &rest[1..]),
        0x81 => (usize::from(*rest.get(1)?), &rest[2..]),
        0x82 => (
            usize::from(u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?])),
            &rest[3..],
        ),
        _ => return None,
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

impl RawPiv {
    /// A second shared handle on the card in `reader`.
    pub(super) fn connect(reader: &str) -> Result<Self, TokenError> {
        let context =
            pcsc::Context::establish(pcsc::Scope::System).map_err(|e| err("opening PC/SC", e))?;
        let name = CString::new(reader).map_err(|e| err("opening the reader", e))?;
        let card = context
            .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::T1)
            .map_err(|e| err("opening the reader", e))?;
        Ok(RawPiv {
            card: Some(card),
            _context: context,
        })
    }

    /// Sends one command (chained in 255-byte pieces) and collects the answer (61xx GET
    /// RESPONSE). Returns the data and the final status word.
    fn command(&mut self, header: [u8; 4], data: &[u8]) -> Result<(Vec<u8>, u16), TokenError> {
        let tx = self
            .card
            .as_mut()
            .ok_or_else(|| err("sending a PIV command", "handle closed"))?
            .transaction()
            .map_err(|e| err("starting a PC/SC transaction", e))?;
        let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE];
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[][..]]
        } else {
            data.chunks(255).collect()
        };
        let mut answer = Vec::new();
        let mut sw = 0u16;
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut apdu = vec![
                if last { header[0] } else { header[0] | 0x10 },
                header[1],
                header[2],
                header[3],
            ];
            if !chunk.is_empty() {
                apdu.push(chunk.len() as u8);
                apdu.extend_from_slice(chunk);
            }
            if last {
                apdu.push(0x00);
            }
            let resp = tx
                .transmit(&apdu, &mut buf)
                .map_err(|e| err("sending a PIV command", e))?;
            if resp.len() < 2 {
                return Err(err("sending a PIV command", "short answer"));
            }
            sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
            answer.extend_from_slice(&resp[..resp.len() - 2]);
            if !last && sw != 0x9000 {
                return Ok((answer, sw));
            }
        }
        while sw >> 8 == 0x61 {
            let resp = tx
                .transmit(&[0x00, 0xc0, 0x00, 0x00, 0x00], &mut buf)
                .map_err(|e| err("reading a PIV answer", e))?;
            if resp.len() < 2 {
                return Err(err("reading a PIV answer", "short answer"));
            }
            sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
            answer.extend_from_slice(&resp[..resp.len() - 2]);
        }
        let _ = tx.end(pcsc::Disposition::LeaveCard);
        Ok((answer, sw))
    }

    /// GENERATE ASYMMETRIC KEY PAIR; returns the public key as SubjectPublicKeyInfo DER.
    /// Needs the management key authenticated.
    pub(super) fn generate_rsa(
        &mut self,
        slot: u8,
        algorithm: u8,
        pin_policy: u8,
        touch_policy: u8,
    ) -> Result<Vec<u8>, TokenError> {
        let mut template = vec![0x80, 0x01, algorithm];
        template.extend_from_slice(&[0xaa, 0x01, pin_policy, 0xab, 0x01, touch_policy]);
        let (answer, sw) = self.command([0x00, 0x47, 0x00, slot], &tlv(&[0xac], &template))?;
        match sw {
            0x9000 => {}
            0x6982 => {
                return Err(TokenError::NotPermitted {
                    operation: "generate a key".into(),
                    reason: "the card wants the management key (security status not satisfied)"
                        .into(),
                })
            }
            0x6a80 | 0x6a86 => {
                return Err(TokenError::Refused(format!(
                    "the card refused RSA algorithm {algorithm:#04x} or the policies (SW {sw:04x})"
                )))
            }
            other => return Err(err("key generation", format!("card answered {other:04x}"))),
        }
        let (tag, body, _) =
            parse_tlv(&answer).ok_or_else(|| err("key generation", "malformed answer"))?;
        if tag != 0x7f49 {
            return Err(err("key generation", format!("unexpected tag {tag:04x}")));
        }
        let (mut modulus, mut exponent) = (None, None);
        let mut rest = body;
        while !rest.is_empty() {
            let (tag, value, next) =
                parse_tlv(rest).ok_or_else(|| err("key generation", "malformed key TLV"))?;
            match tag {
                0x81 => modulus = Some(value),
                0x82 => exponent = Some(value),
                _ => {}
            }
            rest = next;
        }
        let (n, e) = modulus
            .zip(exponent)
            .ok_or_else(|| err("key generation", "no modulus/exponent in the answer"))?;
        let key = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(n),
            rsa::BigUint::from_bytes_be(e),
        )
        .map_err(|e| err("key generation", e))?;
        use rsa::pkcs8::EncodePublicKey;
        Ok(key
            .to_public_key_der()
            .map_err(|e| err("key generation", e))?
            .into_vec())
    }

    /// Raw RSA with the key in `slot` (GENERAL AUTHENTICATE, challenge tag 0x81). Needs the
    /// PIN verified right before (policy `always`) or in this session.
    pub(super) fn raw_rsa(
        &mut self,
        slot: u8,
        algorithm: u8,
        input: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, TokenError> {
        let mut inner = vec![0x82, 0x00];
        inner.extend_from_slice(&tlv(&[0x81], input));
        let (answer, sw) = self.command([0x00, 0x87, algorithm, slot], &tlv(&[0x7c], &inner))?;
        let answer = zeroize::Zeroizing::new(answer);
        match sw {
            0x9000 => {}
            0x6982 => {
                return Err(TokenError::NotPermitted {
                    operation: "use the key".into(),
                    reason: "the card refused: PIN not verified or touch not given in time".into(),
                })
            }
            other => return Err(err("RSA operation", format!("card answered {other:04x}"))),
        }
        let (tag, body, _) =
            parse_tlv(&answer).ok_or_else(|| err("RSA operation", "malformed answer"))?;
        let (tag2, value, _) =
            parse_tlv(body).ok_or_else(|| err("RSA operation", "malformed answer"))?;
        if tag != 0x7c || tag2 != 0x82 {
            return Err(err("RSA operation", "unexpected answer tags"));
        }
        Ok(zeroize::Zeroizing::new(value.to_vec()))
    }

    /// PUT DATA of a slot certificate object (5FC1xx), uncompressed. Needs the management key.
    pub(super) fn put_certificate(
        &mut self,
        object_id: u32,
        cert_der: &[u8],
    ) -> Result<(), TokenError> {
        let mut inner = tlv(&[0x70], cert_der);
        inner.extend_from_slice(&[0x71, 0x01, 0x00, 0xfe, 0x00]);
        let id = object_id.to_be_bytes();
        let mut data = tlv(&[0x5c], &id[1..]);
        data.extend_from_slice(&tlv(&[0x53], &inner));
        let (_, sw) = self.command([0x00, 0xdb, 0x3f, 0xff], &data)?;
        if sw != 0x9000 {
            return Err(err(
                "writing the slot certificate",
                format!("card answered {sw:04x}"),
            ));
        }
        Ok(())
    }
}

/// Management key algorithms (GET METADATA tag 01 of slot 9B).
pub(super) const MGM_3DES: u8 = 0x03;
pub(super) const MGM_AES128: u8 = 0x08;
pub(super) const MGM_AES192: u8 = 0x0a;
pub(super) const MGM_AES256: u8 = 0x0c;

/// Key length of a management key algorithm.
pub(super) fn management_key_len(algorithm: u8) -> Option<usize> {
    match algorithm {
        MGM_3DES | MGM_AES192 => Some(24),
        MGM_AES128 => Some(16),
        MGM_AES256 => Some(32),
        _ => None,
    }
}

pub(super) fn management_algorithm_name(algorithm: u8) -> String {
    match algorithm {
        MGM_3DES => "3DES".into(),
        MGM_AES128 => "AES-128".into(),
        MGM_AES192 => "AES-192".into(),
        MGM_AES256 => "AES-256".into(),
        other => format!("algorithm {other:#04x}"),
    }
}

/// One-block ECB encryption/decryption with a management key.
fn mgm_block(algorithm: u8, key: &[u8], block: &mut [u8], decrypt: bool) -> Option<()> {
    use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
    macro_rules! run {
        ($cipher:ty) => {{
            let cipher = <$cipher>::new_from_slice(key).ok()?;
            let block = GenericArray::from_mut_slice(block);
            if decrypt {
                cipher.decrypt_block(block)
            } else {
                cipher.encrypt_block(block)
            }
        }};
    }
    match algorithm {
        MGM_3DES => run!(des::TdesEde3),
        MGM_AES128 => run!(aes::Aes128),
        MGM_AES192 => run!(aes::Aes192),
        MGM_AES256 => run!(aes::Aes256),
        _ => return None,
    }
    Some(())
}

impl RawPiv {
    /// The management key's algorithm from GET METADATA (firmware 5.3+); `None` if the card
    /// does not say.
    pub(super) fn management_key_algorithm(&mut self) -> Option<u8> {
        let (answer, sw) = self.command([0x00, 0xf7, 0x00, 0x9b], &[]).ok()?;
        if sw != 0x9000 {
            return None;
        }
        let mut rest = &answer[..];
        while let Some((tag, value, next)) = parse_tlv(rest) {
            if tag == 0x01 {
                return value.first().copied();
            }
            rest = next;
        }
        None
    }

    /// Mutual challenge-response with the management key (3DES or AES), as the `yubikey`
    /// crate does for 3DES only. Returns `Ok(false)` when the card refuses the key.
    pub(super) fn authenticate_management_key(
        &mut self,
        algorithm: u8,
        key: &[u8],
    ) -> Result<bool, TokenError> {
        use subtle::ConstantTimeEq;
        let block_len = if algorithm == MGM_3DES { 8 } else { 16 };
        let header = [0x00, 0x87, algorithm, 0x9b];
        let (answer, sw) = self.command(header, &[0x7c, 0x02, 0x80, 0x00])?;
        if sw != 0x9000 {
            return Ok(false);
        }
        let witness = parse_tlv(&answer)
            .and_then(|(_, body, _)| parse_tlv(body))
            .filter(|(tag, value, _)| *tag == 0x80 && value.len() == block_len)
            .map(|(_, value, _)| value.to_vec())
            .ok_or_else(|| err("management key authentication", "malformed witness"))?;
        let mut witness = zeroize::Zeroizing::new(witness);
        mgm_block(algorithm, key, &mut witness, true)
            .ok_or_else(|| err("management key authentication", "bad key length"))?;
        let mut challenge = vec![0u8; block_len];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut challenge);
        let mut inner = tlv(&[0x80], &witness);
        inner.extend_from_slice(&tlv(&[0x81], &challenge));
        let (answer, sw) = self.command(header, &tlv(&[0x7c], &inner))?;
        if sw != 0x9000 {
            return Ok(false);
        }
        let response = parse_tlv(&answer)
            .and_then(|(_, body, _)| parse_tlv(body))
            .filter(|(tag, _, _)| *tag == 0x82)
            .map(|(_, value, _)| value.to_vec())
            .ok_or_else(|| err("management key authentication", "malformed response"))?;
        mgm_block(algorithm, key, &mut challenge, false)
            .ok_or_else(|| err("management key authentication", "bad key length"))?;
        // The card proved it knows the key too (mutual authentication).
        Ok(bool::from(response.ct_eq(&challenge)))
    }
}

/// The certificate object of a key slot (SP 800-73 / Yubico retired slots).
pub(super) fn certificate_object(slot: u8) -> Option<u32> {
    Some(match slot {
        0x9a => 0x5fc105,
        0x9c => 0x5fc10a,
        0x9d => 0x5fc10b,
        0x9e => 0x5fc101,
        0x82..=0x95 => 0x5fc10d + u32::from(slot - 0x82),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_round_trip_and_objects() {
        for len in [0usize, 5, 0x7f, 0x80, 0xff, 0x100, 600] {
            let value = vec![0xab; len];
            let encoded = tlv(&[0x81], &value);
            let (tag, v, rest) = parse_tlv(&encoded).unwrap();
            assert_eq!((tag, v, rest.len()), (0x81, &value[..], 0));
        }
        let two_byte = tlv(&[0x7f, 0x49], &[1, 2]);
        assert_eq!(parse_tlv(&two_byte).unwrap().0, 0x7f49);
        assert!(parse_tlv(&[0x81, 0x05, 1]).is_none());
        assert_eq!(certificate_object(0x9c), Some(0x5fc10a));
        assert_eq!(certificate_object(0x82), Some(0x5fc10d));
        assert_eq!(certificate_object(0x95), Some(0x5fc120));
        assert_eq!(certificate_object(0xf9), None);
    }
}
