//! A virtual PIV smart card for tests: the `piv-authenticator` applet running on a software
//! trussed platform, attached to pcscd through the vsmartcard `vpcd` driver.
//!
//! Adaptations so that the `yubikey` crate (and ykcs11) accept it like a YubiKey:
//! * the 5-byte short PIV AID that the `yubikey` crate selects is expanded to the full AID
//!   (the applet only matches >= 9 bytes);
//! * the SELECT reply is returned whole with 9000 (the crate does not follow 61xx on SELECT);
//! * GET VERSION reports a 5.x firmware and GET SERIAL a configurable serial (the crate only
//!   reads the serial for 4.x/5.x firmware; a per-card serial lets tests open cards by serial).
//!
//! The card state lives in RAM: every process is a factory-fresh card (PIN 123456,
//! PUK 12345678, 3DES management key 010203040506070801020304050607080102030405060708).
//! Keys are generated from an RNG seeded by the operating system.

mod dispatch;

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use iso7816::{command::FromSliceError, Command, Instruction, Status};
use piv_authenticator::{Authenticator, Options};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use trussed::{
    pipe::TrussedChannel,
    virt::{Runner, Store, StoreConfig, UserInterface},
    ClientImplementation,
};
use trussed_core::types::{Bytes, Location};

const APDU_LEN: usize = 7609;
const SHORT_PIV_AID: [u8; 5] = [0xa0, 0x00, 0x00, 0x03, 0x08];
const FULL_PIV_AID: [u8; 11] = [
    0xa0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];
const INS_YK_GET_SERIAL: u8 = 0xf8;
const INS_YK_GET_VERSION: u8 = 0xfd;
const INS_YK_GET_METADATA: u8 = 0xf7;
const INS_YK_SET_MGM_KEY: u8 = 0xff;
const SLOT_MANAGEMENT: u8 = 0x9b;
const ALG_3DES: u8 = 0x03;
const ALG_AES256: u8 = 0x0c;
const DEFAULT_3DES_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

type VirtClient<'a> = ClientImplementation<'a, trussed::virt::Syscall, dispatch::Dispatch>;

struct Config {
    host: Ipv4Addr,
    port: u16,
    serial: u32,
    version: [u8; 3],
    connect_timeout: Duration,
    /// `--aes256-management-key HEX`: replace the default 3DES management key at start.
    aes256_management_key: Option<Vec<u8>>,
}

fn usage() -> &'static str {
    "usage: sequester-virtual-piv [--port N (default 35963)] [--serial N] \
     [--version MAJOR.MINOR.PATCH (default 5.4.3)] [--connect-timeout SECONDS] \
     [--aes256-management-key HEX]"
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config {
        host: Ipv4Addr::LOCALHOST,
        port: vpicc::DEFAULT_PORT,
        serial: 5_437_251,
        version: [5, 4, 3],
        connect_timeout: Duration::from_secs(20),
        aes256_management_key: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => config.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--serial" => config.serial = value()?.parse().map_err(|e| format!("--serial: {e}"))?,
            "--version" => {
                let text = value()?;
                let parts: Vec<u8> = text
                    .split('.')
                    .map(|p| p.parse::<u8>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--version: {e}"))?;
                config.version = parts
                    .try_into()
                    .map_err(|_| "--version: expected MAJOR.MINOR.PATCH".to_string())?;
            }
            "--connect-timeout" => {
                let secs: u64 = value()?
                    .parse()
                    .map_err(|e| format!("--connect-timeout: {e}"))?;
                config.connect_timeout = Duration::from_secs(secs);
            }
            "--aes256-management-key" => {
                let key = hex_decode(&value()?).ok_or("--aes256-management-key: not hex")?;
                if key.len() != 32 {
                    return Err("--aes256-management-key: 32 bytes expected".into());
                }
                config.aes256_management_key = Some(key);
            }
            "-h" | "--help" => return Err(usage().to_string()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    Ok(config)
}

/// A trussed platform like `trussed::virt::Platform`, but with an OS-seeded RNG (the virt one
/// uses a constant seed, which would give every virtual card the same keys).
struct VirtualPlatform<'a> {
    rng: ChaCha8Rng,
    store: Store<'a>,
    ui: UserInterface,
}

impl<'a> trussed::platform::Platform for VirtualPlatform<'a> {
    type R = ChaCha8Rng;
    type S = Store<'a>;
    type UI = UserInterface;

    fn rng(&mut self) -> &mut Self::R {
        &mut self.rng
    }
    fn store(&self) -> Self::S {
        self.store
    }
    fn user_interface(&mut self) -> &mut Self::UI {
        &mut self.ui
    }
}

fn main() -> ExitCode {
    env_logger::init();
    let config = match parse_args() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut store = StoreConfig::ram();
    store.with_store(|store| {
        let platform = VirtualPlatform {
            rng: ChaCha8Rng::from_entropy(),
            store,
            ui: UserInterface::new(),
        };
        let channel = TrussedChannel::new();
        let (requester, responder) = channel.split().expect("fresh channel splits");
        let mut runner = Runner::new();
        runner.add_endpoint(responder, "piv", dispatch::BACKENDS);
        let client: VirtClient<'_> = ClientImplementation::new(requester, runner.syscall(), None);
        let dispatch = dispatch::Dispatch::with_hw_key(
            Bytes::try_from(&b"virtual-piv"[..]).expect("short key"),
        );
        runner.run(platform, dispatch, || serve(&config, client))
    })
}

fn serve(config: &Config, client: VirtClient<'_>) -> ExitCode {
    let options = Options::new()
        .storage(Location::External)
        .label(b"Sequester virtual PIV");
    let mut card = VirtualCard {
        card: Authenticator::new(client, options),
        chained: None,
        response: Vec::new(),
        offset: 0,
        serial: config.serial,
        version: config.version,
        management_algorithm: ALG_3DES,
    };
    if let Some(key) = &config.aes256_management_key {
        if let Err(status) = card.set_aes256_management_key(key) {
            eprintln!("virtual-piv: cannot set the AES-256 management key: {status:?}");
            return ExitCode::from(1);
        }
    }
    let address = SocketAddr::new(config.host.into(), config.port);
    let deadline = Instant::now() + config.connect_timeout;
    let connection = loop {
        match vpicc::connect_socket(address) {
            Ok(connection) => break connection,
            Err(err) if Instant::now() < deadline => {
                log::debug!("vpcd at {address} not ready: {err}");
                thread::sleep(Duration::from_millis(200));
            }
            Err(err) => {
                eprintln!("virtual-piv: cannot connect to vpcd at {address}: {err}");
                return ExitCode::from(1);
            }
        }
    };
    eprintln!(
        "virtual-piv: card serial {} firmware {}.{}.{} attached to vpcd at {address}",
        config.serial, config.version[0], config.version[1], config.version[2]
    );
    // Runs until pcscd/vpcd closes the connection.
    match connection.run(&mut card) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("virtual-piv: vpcd connection ended: {err}");
            ExitCode::SUCCESS
        }
    }
}

struct VirtualCard<'a> {
    card: Authenticator<VirtClient<'a>>,
    /// Command being assembled from a chain (CLA bit 0x10).
    chained: Option<Command<APDU_LEN>>,
    /// Pending response for GET RESPONSE.
    response: Vec<u8>,
    offset: usize,
    serial: u32,
    version: [u8; 3],
    /// Algorithm of the management key, for GET METADATA 9B (the applet does not answer it).
    management_algorithm: u8,
}

impl VirtualCard<'_> {
    /// Sends one APDU to the applet directly; returns the reply data.
    fn internal(&mut self, apdu: &[u8]) -> Result<Vec<u8>, Status> {
        let command = Command::<APDU_LEN>::try_from(apdu).map_err(|_| Status::WrongLength)?;
        let mut reply = heapless::Vec::<u8, APDU_LEN>::new();
        self.card.respond(command.as_view(), reply.as_mut_view())?;
        Ok(reply.to_vec())
    }

    /// Authenticates with the default 3DES key and installs an AES-256 management key, as
    /// `ykman piv access change-management-key -a AES256` would.
    fn set_aes256_management_key(&mut self, key: &[u8]) -> Result<(), Status> {
        use des::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
        let tdes = des::TdesEde3::new(GenericArray::from_slice(&DEFAULT_3DES_KEY));
        self.internal(&full_piv_select())?;
        let witness = self.internal(&[
            0x00,
            0x87,
            ALG_3DES,
            SLOT_MANAGEMENT,
            0x04,
            0x7c,
            0x02,
            0x80,
            0x00,
        ])?;
        let mut block =
            GenericArray::clone_from_slice(witness.get(4..12).ok_or(Status::WrongLength)?);
        tdes.decrypt_block(&mut block);
        let challenge = [0x5au8; 8];
        let mut apdu = vec![
            0x00,
            0x87,
            ALG_3DES,
            SLOT_MANAGEMENT,
            0x16,
            0x7c,
            0x14,
            0x80,
            0x08,
        ];
        apdu.extend_from_slice(&block);
        apdu.extend_from_slice(&[0x81, 0x08]);
        apdu.extend_from_slice(&challenge);
        let answer = self.internal(&apdu)?;
        let mut expected = GenericArray::clone_from_slice(&challenge);
        tdes.encrypt_block(&mut expected);
        if answer.get(4..12) != Some(&expected[..]) {
            return Err(Status::SecurityStatusNotSatisfied);
        }
        let mut apdu = vec![
            0x00,
            INS_YK_SET_MGM_KEY,
            0xff,
            0xff,
            35,
            ALG_AES256,
            SLOT_MANAGEMENT,
            32,
        ];
        apdu.extend_from_slice(key);
        self.internal(&apdu)?;
        self.management_algorithm = ALG_AES256;
        self.logout();
        Ok(())
    }

    fn handle(&mut self, apdu: &[u8]) -> Vec<u8> {
        if apdu.len() >= 2 && apdu[0] & 0x10 == 0 {
            match apdu[1] {
                INS_YK_GET_SERIAL => {
                    return with_status(&self.serial.to_be_bytes(), Status::Success)
                }
                INS_YK_GET_VERSION => return with_status(&self.version, Status::Success),
                INS_YK_GET_METADATA if apdu.get(3) == Some(&SLOT_MANAGEMENT) => {
                    return with_status(&[0x01, 0x01, self.management_algorithm], Status::Success)
                }
                INS_YK_SET_MGM_KEY => {
                    let response = self.forward(apdu);
                    if response.ends_with(&[0x90, 0x00]) {
                        if let Some(alg) = apdu.get(5) {
                            self.management_algorithm = *alg;
                        }
                    }
                    return response;
                }
                _ => {}
            }
        }
        self.forward(apdu)
    }

    /// Hands an APDU to the applet (chaining, SELECT and GET RESPONSE handled here).
    fn forward(&mut self, apdu: &[u8]) -> Vec<u8> {
        let expanded;
        let apdu = if is_short_piv_select(apdu) {
            expanded = full_piv_select();
            &expanded[..]
        } else {
            apdu
        };
        let command = match Command::<APDU_LEN>::try_from(apdu) {
            Ok(command) => command,
            Err(err) => return with_status(&[], parse_error_status(err)),
        };
        if command.instruction() == Instruction::GetResponse {
            return self.next_chunk(command.expected());
        }
        let command = match self.chained.take() {
            Some(mut first) => {
                if first.extend_from_command(&command).is_err() {
                    return with_status(&[], Status::WrongLength);
                }
                first
            }
            None => command,
        };
        if !command.class().chain().last_or_only() {
            self.chained = Some(command);
            return with_status(&[], Status::Success);
        }
        let mut reply = heapless::Vec::<u8, APDU_LEN>::new();
        self.response.clear();
        self.offset = 0;
        if let Err(status) = self.card.respond(command.as_view(), reply.as_mut_view()) {
            return with_status(&[], status);
        }
        if command.instruction() == Instruction::Select {
            // Like a YubiKey, (re-)selecting the applet clears the PIN status; the yubikey
            // crate relies on it to read the retry counter.
            self.logout();
            // The yubikey crate expects the whole SELECT answer with 9000.
            return with_status(&reply, Status::Success);
        }
        self.response.extend_from_slice(&reply);
        self.next_chunk(command.expected())
    }

    fn next_chunk(&mut self, expected: usize) -> Vec<u8> {
        let remaining = self.response.len() - self.offset;
        let n = if expected == 0 {
            remaining.min(256)
        } else {
            remaining.min(expected)
        };
        let chunk = self.response[self.offset..self.offset + n].to_vec();
        self.offset += n;
        let rest = self.response.len() - self.offset;
        let status = if rest == 0 {
            Status::Success
        } else {
            Status::MoreAvailable(u8::try_from(rest).unwrap_or(0))
        };
        with_status(&chunk, status)
    }
}

impl VirtualCard<'_> {
    /// VERIFY with P1=FF (PIV "reset security status" of the application PIN). The applet's
    /// `deselect` is a no-op, so a card reset would otherwise keep the PIN verified forever.
    fn logout(&mut self) {
        let logout = Command::<APDU_LEN>::try_from(&[0x00, 0x20, 0xff, 0x80][..])
            .expect("well-formed logout APDU");
        let mut reply = heapless::Vec::<u8, APDU_LEN>::new();
        let _ = self.card.respond(logout.as_view(), reply.as_mut_view());
    }
}

impl vpicc::VSmartCard for VirtualCard<'_> {
    fn power_off(&mut self) {
        self.card.deselect();
        self.logout();
        self.chained = None;
    }
    fn reset(&mut self) {
        self.card.deselect();
        self.logout();
        self.chained = None;
    }
    fn execute(&mut self, request: &[u8]) -> Vec<u8> {
        log::trace!("APDU {request:02x?}");
        let response = self.handle(request);
        log::trace!("-> {response:02x?}");
        response
    }
}

fn is_short_piv_select(apdu: &[u8]) -> bool {
    apdu.len() >= 10
        && apdu[..4] == [0x00, 0xa4, 0x04, 0x00]
        && apdu[4] == 5
        && apdu[5..10] == SHORT_PIV_AID
}

fn full_piv_select() -> Vec<u8> {
    let mut apdu = vec![0x00, 0xa4, 0x04, 0x00, FULL_PIV_AID.len() as u8];
    apdu.extend_from_slice(&FULL_PIV_AID);
    apdu.push(0x00);
    apdu
}

fn parse_error_status(err: FromSliceError) -> Status {
    match err {
        FromSliceError::InvalidClass => Status::ClassNotSupported,
        FromSliceError::InvalidFirstBodyByteForExtended => Status::UnspecifiedCheckingError,
        _ => Status::WrongLength,
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn with_status(data: &[u8], status: Status) -> Vec<u8> {
    let sw: [u8; 2] = status.into();
    let mut out = Vec::with_capacity(data.len() + 2);
    out.extend_from_slice(data);
    out.extend_from_slice(&sw);
    out
}
