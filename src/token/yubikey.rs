//! YubiKey PIV backend: `yubikey:serial=…;slot=9d`.
//!
//! PIV only does raw RSA: signing sends an EMSA-PSS block encoded on the host, decryption
//! returns the padded block, which the host decodes (constant-time EME-OAEP). Both paddings
//! live in the crate-internal `crypto::rsa_padding`. Keys are generated on the card; a self-signed
//! certificate is written to the slot so the public key can be found again (and so OpenSC /
//! ykcs11 expose the key over PKCS#11). Attestation (slot certificate signed by the card's f9
//! key) is checked by [`attestation`].
//!
//! The PIN is verified when a key is opened and again right before every private-key
//! operation, so keys with PIN policy `always` work and a second handle on the same card (whose
//! release resets the card) cannot leave this one unauthenticated.

pub mod attestation;
mod card;
mod raw;
pub mod uri;

use std::path::Path;
use std::sync::Mutex;

use ::yubikey::{piv, PinPolicy, TouchPolicy};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde::Serialize;
use zeroize::Zeroizing;

use super::interaction::{Interaction, PinKind, PinRequest};
use super::{
    KeyHandle, KeyInfo, KeySpec, MechanismPath, Provenance, ProvenanceVerdict, Role,
    TokenDescription, TokenError,
};
use crate::crypto::rsa_padding;
use crate::parsec::spki;
use card::Card;
pub use card::MgmKeyKind;
use uri::{PinPolicyOpt, TouchPolicyOpt, YubikeyUri};

const BACKEND: &str = "yubikey";
/// Subject CNs of the slot certificates this tool writes; they record the key's role.
const AUTHORITY_CN: &str = "Parsec sequester authority key";
const SERVICE_CN: &str = "Parsec sequester service key";

fn backend_err(operation: &str, reason: impl ToString) -> TokenError {
    TokenError::Backend {
        backend: BACKEND,
        operation: operation.to_string(),
        reason: reason.to_string(),
    }
}

fn slot_id(slot: u8) -> Result<piv::SlotId, TokenError> {
    piv::SlotId::try_from(slot).map_err(|_| TokenError::BadUri {
        uri: format!("yubikey:slot={slot:02x}"),
        reason: "not a PIV key slot".into(),
    })
}

fn algorithm_for_bits(bits: usize) -> Option<piv::AlgorithmId> {
    match bits {
        1024 => Some(piv::AlgorithmId::Rsa1024),
        2048 => Some(piv::AlgorithmId::Rsa2048),
        _ => None,
    }
}

/// How RSA operations reach the card: through the `yubikey` crate (1024/2048) or through our
/// own PIV commands (3072/4096, firmware 5.7+; see the `raw` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PivAlgorithm {
    Crate(piv::AlgorithmId),
    Raw(u8),
}

/// Normalises any RSA SPKI to rsaEncryption + NULL (docs/formats.md §1.5) and returns it with its
/// size.
fn normalise_spki(der: &[u8]) -> Result<(Vec<u8>, usize), TokenError> {
    let key = spki::parse_spki_der_lenient(der)
        .map_err(|_| TokenError::UnsupportedKey("the slot does not hold an RSA key".into()))?;
    let bits = key.n().bits();
    let der = spki::spki_der_from_components(&key.n().to_bytes_be(), &key.e().to_bytes_be())
        .map_err(|e| backend_err("encoding the public key", e))?;
    Ok((der, bits))
}

fn role_from_subject(subject: Option<&str>, slot: u8) -> Option<Role> {
    match subject {
        Some(s) if s.contains(AUTHORITY_CN) => Some(Role::Authority),
        Some(s) if s.contains(SERVICE_CN) => Some(Role::Service),
        _ => uri::role_of_slot(slot),
    }
}

/// The role of the key in `slot`. In 9c (PIV digital signature) and 9d (key management) the slot
/// decides: a certificate claiming the other role (whoever holds the management key can rewrite
/// it) is refused. Elsewhere the certificate written at generation decides.
fn checked_role(subject: Option<&str>, slot: u8, serial: u32) -> Result<Option<Role>, TokenError> {
    let claimed = role_from_subject(subject, slot);
    match (slot, claimed) {
        (0x9c, Some(Role::Service)) | (0x9d, Some(Role::Authority)) => {
            Err(TokenError::Refused(format!(
                "the certificate in slot {slot:02x} of YubiKey {serial} claims the {} role, but \
                 slot {slot:02x} holds the {} key: the certificate was rewritten (management key)",
                claimed.map(|r| r.to_string()).unwrap_or_default(),
                if slot == 0x9c { "authority" } else { "service" }
            )))
        }
        _ => Ok(claimed),
    }
}

/// On firmware 5.3+: the key the slot really holds (GET METADATA) must be the one its
/// certificate names. Returns evidence lines for the provenance.
fn check_slot_metadata(
    card: &mut Card,
    slot: u8,
    certificate_spki: &[u8],
) -> Result<Vec<String>, TokenError> {
    if card.version < (5, 3, 0) {
        return Ok(vec![format!(
            "firmware {} has no key metadata: the slot certificate is the only record of the key",
            card.version_string()
        )]);
    }
    let Some(meta) = card::slot_metadata(card, slot_id(slot)?) else {
        return Ok(vec![
            "the card did not answer GET METADATA for this slot: public key not checked \
             against the card"
                .into(),
        ]);
    };
    let mut evidence = Vec::new();
    match meta.spki.as_deref().map(normalise_spki) {
        Some(Ok((spki, _))) if spki == certificate_spki => {
            evidence.push("key metadata: the slot holds the certificate's public key".into())
        }
        Some(Ok(_)) => {
            return Err(TokenError::Refused(format!(
                "slot {slot:02x} of YubiKey {} holds another key than its certificate names: \
                 the certificate was rewritten (management key); not used",
                card.serial
            )))
        }
        _ => evidence.push("key metadata carries no RSA public key".into()),
    }
    if let Some(generated) = meta.generated {
        evidence.push(format!(
            "key metadata: {}",
            if generated {
                "generated on the card"
            } else {
                "IMPORTED into the card"
            }
        ));
    }
    if let Some(p) = meta.policies {
        evidence.push(format!("key metadata: {p}"));
    }
    Ok(evidence)
}

/// One RSA key in a PIV slot.
pub struct YubikeyKey {
    card: Mutex<Card>,
    serial: u32,
    version: (u8, u8, u8),
    reader: String,
    slot: u8,
    spki: Vec<u8>,
    bits: usize,
    role: Option<Role>,
    label: String,
    /// Kept (zeroized on drop) to re-verify right before each private-key operation; never
    /// presented again once the card rejected it (see [`card::verify_pin`]).
    pin: Option<Zeroizing<String>>,
    /// The first fatal error of an operation (PIN rejected, card removed, ...): no later
    /// operation touches the card.
    fatal: Mutex<Option<String>>,
    /// What the card's key metadata said when the key was opened.
    metadata_evidence: Vec<String>,
}

impl YubikeyKey {
    pub fn slot(&self) -> u8 {
        self.slot
    }
    pub fn firmware(&self) -> (u8, u8, u8) {
        self.version
    }

    fn k(&self) -> usize {
        self.bits.div_ceil(8)
    }

    fn with_card<T>(
        &self,
        operation: &str,
        f: impl FnOnce(&mut Card) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        if let Some(first) = &*self.fatal.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(TokenError::Refused(format!(
                "no further {operation} with YubiKey {} in this run after: {first}",
                self.serial
            )));
        }
        let mut card = self
            .card
            .lock()
            .map_err(|_| backend_err(operation, "card handle poisoned by an earlier panic"))?;
        let result = match &self.pin {
            Some(pin) => card::verify_pin(&mut card, pin),
            None => Ok(()),
        }
        .and_then(|()| f(&mut card));
        if let Err(e) = &result {
            if e.is_fatal() {
                let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
                fatal.get_or_insert_with(|| e.to_string());
            }
        }
        result
    }

    fn algorithm(&self) -> Result<PivAlgorithm, TokenError> {
        if let Some(alg) = algorithm_for_bits(self.bits) {
            return Ok(PivAlgorithm::Crate(alg));
        }
        raw::algorithm(self.bits)
            .map(PivAlgorithm::Raw)
            .ok_or_else(|| {
                TokenError::UnsupportedKey(format!("RSA-{} is not a PIV key size", self.bits))
            })
    }

    /// Raw RSA with the slot key, after a fresh PIN verification.
    fn raw_rsa(&self, operation: &str, input: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        let slot = slot_id(self.slot)?;
        let algorithm = self.algorithm()?;
        let decipher = operation == "decryption";
        self.with_card(operation, |card| match algorithm {
            PivAlgorithm::Crate(alg) => {
                let out = if decipher {
                    piv::decrypt_data(&mut card.yk, input, alg, slot)
                } else {
                    piv::sign_data(&mut card.yk, input, alg, slot)
                };
                out.map(|buf| Zeroizing::new(buf.to_vec()))
                    .map_err(|e| op_error(card, operation, e))
            }
            PivAlgorithm::Raw(alg) => {
                raw::RawPiv::connect(&card.reader)?.raw_rsa(self.slot, alg, input)
            }
        })
    }

    fn check_role(&self, wanted: Role, operation: &str) -> Result<(), TokenError> {
        match self.role {
            Some(role) if role != wanted => Err(TokenError::NotPermitted {
                operation: operation.into(),
                reason: format!(
                    "the key in slot {:02x} is a {role} key; a sequester key serves one role only",
                    self.slot
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Fetches the slot attestation and the f9 certificate and checks them (`roots`: Yubico's
    /// PIV CA and optionally intermediates, as DER).
    pub fn attest(
        &self,
        roots: Option<&[Vec<u8>]>,
    ) -> Result<attestation::AttestationReport, TokenError> {
        let slot = slot_id(self.slot)?;
        let mut card = self
            .card
            .lock()
            .map_err(|_| backend_err("attestation", "card handle poisoned"))?;
        let slot_cert = piv::attest(&mut card.yk, slot).map_err(|e| match e {
            ::yubikey::Error::NotSupported | ::yubikey::Error::GenericError => {
                TokenError::UnsupportedKey(format!(
                    "YubiKey {} (firmware {}) returns no attestation for slot {:02x}: attestation \
                     needs a genuine YubiKey 4.3+ and a key generated on it (imported keys and \
                     emulated cards cannot be attested)",
                    self.serial,
                    card.version_string(),
                    self.slot
                ))
            }
            other => card::pcsc_error("attestation", &other),
        })?;
        let device_cert = ::yubikey::Certificate::read(&mut card.yk, piv::SlotId::Attestation)
            .map_err(|e| backend_err("reading the f9 attestation certificate", e))?;
        let device_der = der::Encode::to_der(&device_cert.cert)
            .map_err(|e| backend_err("encoding the f9 certificate", e))?;
        drop(card);
        attestation::verify(
            &slot_cert,
            &device_der,
            roots,
            &attestation::Expected {
                spki_der: &self.spki,
                serial: Some(self.serial),
                firmware: Some(self.version),
                slot: self.slot,
            },
        )
        .map_err(|e| backend_err("checking the attestation", e))
    }
}

impl KeyHandle for YubikeyKey {
    fn public_key_spki(&self) -> &[u8] {
        &self.spki
    }

    fn sign_pss_sha256(&self, message: &[u8]) -> Result<(Vec<u8>, MechanismPath), TokenError> {
        self.check_role(Role::Authority, "sign")?;
        let m_hash = crate::crypto::sha256(message);
        let em = rsa_padding::pss_sha256_encode_random_salt(&m_hash, self.bits)
            .map_err(|e| TokenError::UnsupportedKey(e.to_string()))?;
        let raw = self.raw_rsa("signing", &em)?;
        let sig = rsa_padding::left_pad(&raw, self.k())
            .ok_or_else(|| backend_err("signing", "the card returned more than k bytes"))?;
        // A faulty RSA-CRT computation can leak the key through the signature: check it here.
        let public = rsa::RsaPublicKey::from_public_key_der(&self.spki)
            .map_err(|e| backend_err("signing", e))?;
        public
            .verify(
                rsa::Pss::new_with_salt::<sha2::Sha256>(rsa_padding::PSS_SALT_LEN),
                &m_hash,
                &sig,
            )
            .map_err(|_| backend_err("signing", "the card's signature does not verify"))?;
        Ok((sig, MechanismPath::RawRsaHostPss))
    }

    fn decrypt_oaep_sha256(
        &self,
        block: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, MechanismPath), TokenError> {
        self.check_role(Role::Service, "decrypt")?;
        if block.len() != self.k() {
            return Err(TokenError::DecryptionFailed);
        }
        let raw = self.raw_rsa("decryption", block)?;
        let em = Zeroizing::new(
            rsa_padding::left_pad(&raw, self.k()).ok_or(TokenError::DecryptionFailed)?,
        );
        let message =
            rsa_padding::oaep_sha256_decode(&em).map_err(|_| TokenError::DecryptionFailed)?;
        Ok((message, MechanismPath::RawRsaHostOaep))
    }

    fn provenance(&self) -> Result<Provenance, TokenError> {
        let mut evidence =
            vec!["PIV has no command to read a private key out of a slot".to_string()];
        evidence.extend(self.metadata_evidence.iter().cloned());
        let verdict = match self.attest(None) {
            Ok(report) if report.generated_on_device => {
                evidence.push(report.summary());
                ProvenanceVerdict::GeneratedOnToken
            }
            Ok(report) => {
                evidence.push(report.summary());
                ProvenanceVerdict::Unknown
            }
            Err(e) => {
                evidence.push(format!("attestation unavailable: {e}"));
                ProvenanceVerdict::Unknown
            }
        };
        Ok(Provenance {
            local: (verdict == ProvenanceVerdict::GeneratedOnToken).then_some(true),
            never_extractable: Some(true),
            always_sensitive: Some(true),
            extractable: Some(false),
            sensitive: Some(true),
            modifiable: None,
            copyable: None,
            sign_recover: None,
            allowed_mechanisms: None,
            weaknesses: Vec::new(),
            verdict,
            evidence,
        })
    }

    fn token(&self) -> TokenDescription {
        TokenDescription {
            backend: BACKEND.into(),
            manufacturer: "Yubico".into(),
            model: format!(
                "YubiKey PIV, firmware {}.{}.{} (reader `{}`)",
                self.version.0, self.version.1, self.version.2, self.reader
            ),
            serial: self.serial.to_string(),
            label: format!("YubiKey {}", self.serial),
        }
    }

    fn info(&self) -> Result<KeyInfo, TokenError> {
        Ok(KeyInfo {
            uri: YubikeyUri::key_uri(self.serial, self.slot),
            label: self.label.clone(),
            id: format!("{:02x}", self.slot),
            role: self.role,
            bits: self.bits,
            spki_der: self.spki.clone(),
            fingerprint: crate::crypto::sha256_hex(&self.spki),
            can_sign: self.role != Some(Role::Service),
            can_decrypt: self.role != Some(Role::Authority),
            provenance: self.provenance()?,
        })
    }
}

/// Errors of a private-key operation: PIN state, card gone, or card refusal.
fn op_error(card: &Card, operation: &str, err: ::yubikey::Error) -> TokenError {
    match err {
        ::yubikey::Error::AuthenticationError => TokenError::NotPermitted {
            operation: operation.into(),
            reason: format!(
                "YubiKey {} refused: the PIN is not verified or the touch was not given in time",
                card.serial
            ),
        },
        e @ ::yubikey::Error::PcscError { .. } => card::pcsc_error(operation, &e),
        other => backend_err(operation, other),
    }
}

/// Opens the key a `yubikey:` URI designates and verifies the PIN (from `pin-source`,
/// `SEQUESTER_CUSTODY_PIN` or `interaction`). A wrong PIN is reported with the retries left.
pub fn open_key(
    uri: &str,
    interaction: &dyn Interaction,
) -> Result<Box<dyn KeyHandle>, TokenError> {
    Ok(Box::new(open_yubikey_key(uri, Some(interaction))?))
}

/// [`open_key`] returning the concrete type (attestation, serial); `login = None` opens for
/// reading only (public key, attestation), without a PIN.
pub(crate) fn open_yubikey_key(
    uri: &str,
    login: Option<&dyn Interaction>,
) -> Result<YubikeyKey, TokenError> {
    let parsed = YubikeyUri::parse(uri)?;
    let slot = parsed.slot.ok_or_else(|| TokenError::BadUri {
        uri: uri.to_string(),
        reason: "a key URI needs `slot=` (9c authority, 9d service, 82..95 more services)".into(),
    })?;
    let mut card = card::open(parsed.serial)?;
    let (spki, subject) =
        card::read_slot_public_key(&mut card, slot_id(slot)?)?.ok_or_else(|| {
            TokenError::NoSuchKey(format!(
            "slot {slot:02x} of YubiKey {} holds no key certificate (keys generated by this tool \
             carry one; generate with `key generate --token yubikey:serial={}`)",
            card.serial, card.serial
        ))
        })?;
    let (spki, bits) = normalise_spki(&spki)?;
    let role = checked_role(subject.as_deref(), slot, card.serial)?;
    let metadata_evidence = check_slot_metadata(&mut card, slot, &spki)?;
    let pin = if let Some(interaction) = login {
        let pin = resolve_card_pin(&mut card, parsed.pin_source.as_deref(), interaction)?;
        card::verify_pin(&mut card, &pin)?;
        Some(pin)
    } else {
        None
    };
    Ok(YubikeyKey {
        serial: card.serial,
        version: card.version,
        reader: card.reader.clone(),
        slot,
        role,
        label: subject.unwrap_or_else(|| format!("PIV slot {slot:02x}")),
        spki,
        bits,
        pin,
        fatal: Mutex::new(None),
        metadata_evidence,
        card: Mutex::new(card),
    })
}

/// Checks that a YubiKey can generate `bits`-bit RSA; explains why not.
pub(crate) fn check_generation_size(
    bits: usize,
    firmware: (u8, u8, u8),
) -> Result<PivAlgorithm, TokenError> {
    if let Some(alg) = algorithm_for_bits(bits) {
        return Ok(PivAlgorithm::Crate(alg));
    }
    let v = format!("{}.{}.{}", firmware.0, firmware.1, firmware.2);
    match raw::algorithm(bits) {
        Some(_) if firmware < (5, 7, 0) => Err(TokenError::Refused(format!(
            "RSA-{bits} needs YubiKey firmware 5.7 or later; this card runs {v}: use \
             `--bits 2048` (PIV on this card does RSA 1024/2048 only)"
        ))),
        Some(alg) => Ok(PivAlgorithm::Raw(alg)),
        None => Err(TokenError::Refused(format!(
            "RSA-{bits} is not a PIV key size"
        ))),
    }
}

/// What a key generation produced, besides the handle.
pub struct Generated {
    pub key: YubikeyKey,
    pub mgm_key: MgmKeyKind,
    pub pin_policy: PinPolicyOpt,
    pub touch_policy: TouchPolicyOpt,
}

/// Generates `spec` on the card `token_uri` designates (`yubikey:serial=…[;slot=…]` with
/// optional `pin-policy`, `touch-policy`, `mgm-key-source`). Slot by role unless given:
/// authority 9c, service 9d (further services: give a retired slot 82..95). Refuses to
/// overwrite a slot that already holds a key.
pub fn generate(
    token_uri: &str,
    spec: &KeySpec,
    interaction: &dyn Interaction,
) -> Result<Generated, TokenError> {
    let parsed = YubikeyUri::parse(token_uri)?;
    super::check_key_size(spec.bits, spec.allow_insecure_test_size)?;
    let slot = parsed.slot.unwrap_or_else(|| uri::default_slot(spec.role));
    if slot == 0x9e {
        return Err(TokenError::Refused(
            "slot 9e (card authentication) never asks for the PIN: not for sequester keys".into(),
        ));
    }
    if matches!(
        (slot, spec.role),
        (0x9c, Role::Service) | (0x9d, Role::Authority)
    ) {
        return Err(TokenError::Refused(format!(
            "slot {slot:02x} holds the {} key: a {} key goes to {}",
            if slot == 0x9c { "authority" } else { "service" },
            spec.role,
            if spec.role == Role::Authority {
                "9c (or 9a, or a retired slot 82..95)"
            } else {
                "9d (or a retired slot 82..95)"
            }
        )));
    }
    let slot_id = slot_id(slot)?;
    let mut card = card::open(parsed.serial)?;
    let algorithm = check_generation_size(spec.bits, card.version)?;
    if card::read_slot_public_key(&mut card, slot_id)?.is_some() {
        return Err(TokenError::Refused(format!(
            "slot {slot:02x} of YubiKey {} already holds a key; refusing to overwrite it (choose \
             another slot with `slot=`, e.g. a retired slot 82..95 for a further service key)",
            card.serial
        )));
    }
    let pin = resolve_card_pin(&mut card, parsed.pin_source.as_deref(), interaction)?;
    card::verify_pin(&mut card, &pin)?;
    let mgm_key =
        card::authenticate_admin(&mut card, parsed.mgm_key_source.as_deref(), interaction)?;

    let (default_pin, default_touch) = default_policies(spec.role);
    let pin_policy = parsed.pin_policy.unwrap_or(default_pin);
    let touch_policy = parsed.touch_policy.unwrap_or(default_touch);
    let policy_byte = match pin_policy {
        PinPolicyOpt::Never => 1,
        PinPolicyOpt::Once => 2,
        PinPolicyOpt::Always => 3,
    };
    let touch_byte = match touch_policy {
        TouchPolicyOpt::Never => 1,
        TouchPolicyOpt::Always => 2,
        TouchPolicyOpt::Cached => 3,
    };
    let spki_der = match algorithm {
        PivAlgorithm::Crate(alg) => {
            let spki = piv::generate(
                &mut card.yk,
                slot_id,
                alg,
                PinPolicy::try_from(policy_byte).unwrap_or(PinPolicy::Once),
                TouchPolicy::try_from(touch_byte).unwrap_or(TouchPolicy::Never),
            )
            .map_err(|e| match e {
                ::yubikey::Error::AlgorithmError => TokenError::Refused(format!(
                    "YubiKey {} refused RSA-{} with pin-policy/touch-policy as given",
                    card.serial, spec.bits
                )),
                other => op_error(&card, "key generation", other),
            })?;
            der::Encode::to_der(&spki).map_err(|e| backend_err("key generation", e))?
        }
        PivAlgorithm::Raw(alg) => {
            raw::RawPiv::connect(&card.reader)?.generate_rsa(slot, alg, policy_byte, touch_byte)?
        }
    };
    let (spki_der, bits) = normalise_spki(&spki_der)?;

    // Right before the signature, as PIN policy `always` (and slot 9c on some cards) demands.
    card::verify_pin(&mut card, &pin)?;
    if touch_policy != TouchPolicyOpt::Never {
        interaction.touch_needed(&card.label(), "its slot certificate is being signed");
    }
    let cn = match spec.role {
        Role::Authority => AUTHORITY_CN,
        Role::Service => SERVICE_CN,
    };
    let subject = format!(
        "CN={cn},OU={},O=sequester-custody",
        sanitize_rdn(&spec.label)
    );
    match algorithm {
        PivAlgorithm::Crate(_) => {
            write_slot_certificate(&mut card, slot_id, &subject, &spki_der, bits)?
        }
        PivAlgorithm::Raw(alg) => {
            write_slot_certificate_raw(&mut card, slot, alg, &subject, &spki_der, &pin)?
        }
    }

    let key = YubikeyKey {
        serial: card.serial,
        version: card.version,
        reader: card.reader.clone(),
        slot,
        spki: spki_der,
        bits,
        role: Some(spec.role),
        label: subject,
        pin: Some(pin),
        fatal: Mutex::new(None),
        metadata_evidence: Vec::new(),
        card: Mutex::new(card),
    };
    Ok(Generated {
        key,
        mgm_key,
        pin_policy,
        touch_policy,
    })
}

/// Slot policies when the URI names none. Authority: PIN always and touch always, because it
/// signs rarely (a service or revocation certificate) and each signature should be a deliberate
/// act of a person at the card. Service: PIN once and touch never, because an export reads many
/// access rows in one session and would otherwise ask for a PIN and a touch per row.
pub(crate) fn default_policies(role: Role) -> (PinPolicyOpt, TouchPolicyOpt) {
    match role {
        Role::Authority => (PinPolicyOpt::Always, TouchPolicyOpt::Always),
        Role::Service => (PinPolicyOpt::Once, TouchPolicyOpt::Never),
    }
}

/// The card's PIN from `pin_source`, the environment or `interaction` (told the retries left).
fn resolve_card_pin(
    card: &mut Card,
    pin_source: Option<&str>,
    interaction: &dyn Interaction,
) -> Result<Zeroizing<String>, TokenError> {
    let retries_left = if pin_source.is_none() {
        card::pin_retries(card).ok().map(u32::from)
    } else {
        None
    };
    let label = card.label();
    let request = PinRequest {
        token_label: &label,
        kind: PinKind::User,
        retries_left,
    };
    Ok(super::pin::resolve_pin(pin_source, &request, interaction)?.0)
}

fn sanitize_rdn(label: &str) -> String {
    let clean: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " -_.".contains(*c))
        .take(64)
        .collect();
    if clean.is_empty() {
        "unlabelled".into()
    } else {
        clean
    }
}

/// A self-signed certificate (PKCS#1 v1.5 SHA-256, signed by the slot key) recording the key
/// and its role, stored in the slot's certificate object.
fn write_slot_certificate(
    card: &mut Card,
    slot: piv::SlotId,
    subject: &str,
    spki_der: &[u8],
    bits: usize,
) -> Result<(), TokenError> {
    use std::str::FromStr;
    use x509_cert::{name::Name, serial_number::SerialNumber, time::Validity};
    let err = |e: &dyn std::fmt::Display| backend_err("writing the slot certificate", e);
    let name = Name::from_str(subject).map_err(|e| err(&e))?;
    let spki = <x509_cert::spki::SubjectPublicKeyInfoOwned as der::Decode>::from_der(spki_der)
        .map_err(|e| err(&e))?;
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let serial = SerialNumber::new(&serial).map_err(|e| err(&e))?;
    let validity = Validity::from_now(std::time::Duration::from_secs(20 * 365 * 86_400))
        .map_err(|e| err(&e))?;
    let result = match bits {
        2048 => ::yubikey::Certificate::generate_self_signed::<
            _,
            ::yubikey::certificate::yubikey_signer::YubiRsa<
                ::yubikey::certificate::yubikey_signer::Rsa2048,
            >,
        >(&mut card.yk, slot, serial, validity, name, spki, |_| Ok(())),
        1024 => ::yubikey::Certificate::generate_self_signed::<
            _,
            ::yubikey::certificate::yubikey_signer::YubiRsa<
                ::yubikey::certificate::yubikey_signer::Rsa1024,
            >,
        >(&mut card.yk, slot, serial, validity, name, spki, |_| Ok(())),
        other => return Err(err(&format!("no certificate signer for RSA-{other}"))),
    };
    result
        .map(|_| ())
        .map_err(|e| op_error(card, "writing the slot certificate", e))
}

/// [`write_slot_certificate`] for RSA 3072/4096: the certificate is assembled here and signed
/// with PKCS#1 v1.5 (SHA-256) encoded on the host and raw RSA on the card.
fn write_slot_certificate_raw(
    card: &mut Card,
    slot: u8,
    algorithm: u8,
    subject: &str,
    spki_der: &[u8],
    pin: &Zeroizing<String>,
) -> Result<(), TokenError> {
    use der::{asn1::BitString, Any, Decode, Encode};
    use rsa::signature::Verifier;
    use std::str::FromStr;
    use x509_cert::{
        certificate::{Certificate, TbsCertificate, Version},
        name::Name,
        serial_number::SerialNumber,
        spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned},
        time::Validity,
    };
    let err = |e: &dyn std::fmt::Display| backend_err("writing the slot certificate", e);
    let object = raw::certificate_object(slot).ok_or_else(|| err(&"no certificate object"))?;
    let alg = AlgorithmIdentifierOwned {
        oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11"),
        parameters: Some(Any::null()),
    };
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    let name = Name::from_str(subject).map_err(|e| err(&e))?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(|e| err(&e))?,
        signature: alg.clone(),
        issuer: name.clone(),
        validity: Validity::from_now(std::time::Duration::from_secs(20 * 365 * 86_400))
            .map_err(|e| err(&e))?,
        subject: name,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki_der)
            .map_err(|e| err(&e))?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: None,
    };
    let tbs_der = tbs.to_der().map_err(|e| err(&e))?;
    let public = rsa::RsaPublicKey::from_public_key_der(spki_der).map_err(|e| err(&e))?;
    let k = public.size();
    // EMSA-PKCS1-v1_5 with SHA-256 (RFC 8017 9.2): 00 01 FF.. 00 DigestInfo.
    const SHA256_DIGEST_INFO: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    let digest = crate::crypto::sha256(&tbs_der);
    let mut em = vec![0xffu8; k];
    em[0] = 0x00;
    em[1] = 0x01;
    let t_start = k - SHA256_DIGEST_INFO.len() - digest.len();
    em[t_start - 1] = 0x00;
    em[t_start..t_start + SHA256_DIGEST_INFO.len()].copy_from_slice(&SHA256_DIGEST_INFO);
    em[k - digest.len()..].copy_from_slice(&digest);

    card::verify_pin(card, pin)?;
    let mut session = raw::RawPiv::connect(&card.reader)?;
    let sig = session.raw_rsa(slot, algorithm, &em)?;
    let sig = rsa_padding::left_pad(&sig, k).ok_or_else(|| err(&"signature longer than k"))?;
    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public)
        .verify(
            &tbs_der,
            &rsa::pkcs1v15::Signature::try_from(&sig[..]).map_err(|e| err(&e))?,
        )
        .map_err(|_| err(&"the card's certificate signature does not verify"))?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&sig).map_err(|e| err(&e))?,
    };
    session.put_certificate(object, &cert.to_der().map_err(|e| err(&e))?)
}

/// Lists the RSA keys on the card `token_uri` designates (no PIN needed).
pub fn list_keys(token_uri: &str) -> Result<Vec<KeyInfo>, TokenError> {
    let parsed = YubikeyUri::parse(token_uri)?;
    let mut card = card::open(parsed.serial)?;
    let mut out = Vec::new();
    let slots: Vec<u8> = [0x9a, 0x9c, 0x9d, 0x9e]
        .into_iter()
        .chain(0x82..=0x95)
        .collect();
    for slot in slots {
        let Some((spki, subject)) = card::read_slot_public_key(&mut card, slot_id(slot)?)? else {
            continue;
        };
        let Ok((spki, bits)) = normalise_spki(&spki) else {
            continue; // EC keys are not sequester keys
        };
        // A certificate contradicting its slot is listed without a role (opening it is refused).
        let role = checked_role(subject.as_deref(), slot, card.serial).unwrap_or(None);
        out.push(KeyInfo {
            uri: YubikeyUri::key_uri(card.serial, slot),
            label: subject.unwrap_or_else(|| format!("PIV slot {slot:02x}")),
            id: format!("{slot:02x}"),
            role,
            bits,
            fingerprint: crate::crypto::sha256_hex(&spki),
            spki_der: spki,
            can_sign: role != Some(Role::Service),
            can_decrypt: role != Some(Role::Authority),
            provenance: Provenance {
                local: None,
                never_extractable: Some(true),
                always_sensitive: Some(true),
                extractable: Some(false),
                sensitive: Some(true),
                modifiable: None,
                copyable: None,
                sign_recover: None,
                allowed_mechanisms: None,
                weaknesses: Vec::new(),
                verdict: ProvenanceVerdict::Unknown,
                evidence: vec!["not attested in a listing; use `key show`".into()],
            },
        });
    }
    Ok(out)
}

/// `key show` for a YubiKey key: the attestation report, with the chain checked to the roots
/// in `attestation_root` (PEM or DER; Yubico's PIV CA and intermediates) when given.
pub fn attestation_report(
    key_uri: &str,
    attestation_root: Option<&Path>,
) -> Result<attestation::AttestationReport, TokenError> {
    let roots = attestation_root
        .map(attestation::load_roots)
        .transpose()
        .map_err(|e| TokenError::Refused(e.to_string()))?;
    let key = open_yubikey_key(key_uri, None)?;
    key.attest(roots.as_deref())
}

/// Card facts for `token list` / `token info`.
#[derive(Debug, Clone, Serialize)]
pub struct CardInfo {
    pub serial: u32,
    pub firmware: String,
    pub reader: String,
    pub pin_retries: u8,
    /// A URI selecting this card again (`yubikey:serial=…`).
    pub uri: String,
}

fn describe_card(card: &mut card::Card) -> Result<CardInfo, TokenError> {
    Ok(CardInfo {
        serial: card.serial,
        firmware: card.version_string(),
        reader: card.reader.clone(),
        pin_retries: card::pin_retries(card)?,
        uri: format!("yubikey:serial={}", card.serial),
    })
}

/// Serial, firmware, reader and PIN retries of the card `token_uri` designates.
pub fn card_info(token_uri: &str) -> Result<CardInfo, TokenError> {
    let parsed = YubikeyUri::parse(token_uri)?;
    let mut card = card::open(parsed.serial)?;
    let info = describe_card(&mut card);
    card::release(card);
    info
}

/// A reader whose card could not be described.
#[derive(Debug, Clone, Serialize)]
pub struct UnreadableCard {
    pub reader: String,
    pub error: String,
}

/// Every YubiKey (PIV card) reachable over PC/SC, for `token list`.
#[derive(Debug, Clone, Serialize)]
pub struct CardListing {
    pub cards: Vec<CardInfo>,
    /// Readers whose card another program holds, or whose card did not answer.
    pub unreadable: Vec<UnreadableCard>,
    /// Smart-card readers seen (with or without a card).
    pub readers: usize,
}

/// Lists the PIV cards reachable over PC/SC (no PIN needed). Fails only when PC/SC itself is
/// unreachable (pcscd not running).
pub fn list_cards() -> Result<CardListing, TokenError> {
    let walk = card::open_all()?;
    let mut listing = CardListing {
        cards: Vec::new(),
        unreadable: walk
            .busy
            .iter()
            .map(|(reader, e)| UnreadableCard {
                reader: reader.clone(),
                error: card::pcsc_error("opening the card", e).to_string(),
            })
            .collect(),
        readers: walk.readers,
    };
    for mut card in walk.cards {
        match describe_card(&mut card) {
            Ok(info) => listing.cards.push(info),
            Err(e) => listing.unreadable.push(UnreadableCard {
                reader: card.reader.clone(),
                error: e.to_string(),
            }),
        }
        card::release(card);
    }
    Ok(listing)
}
