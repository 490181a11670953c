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
use trussed_core::types::{Bytes, Location};
use trussed::{
    pipe::TrussedChannel,
    virt::{Runner, Store, StoreConfig, UserInterface},
    ClientImplementation,
};

const APDU_LEN: usize = 7609;
const SHORT_PIV_AID: [u8; 5] = [0xa0, 0x00, 0x00, 0x03, 0x08];
const FULL_PIV_AID: [u8; 11] = [
    0xa0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];
const INS_YK_GET_SERIAL: u8 = 0xf8;
const INS_YK_GET_VERSION: u8 = 0xfd;

type VirtClient<'a> = ClientImplementation<'a, trussed::virt::Syscall, dispatch::Dispatch>;

struct Config {
    host: Ipv4Addr,
    port: u16,
    serial: u32,
    version: [u8; 3],
    connect_timeout: Duration,
}

fn usage() -> &'static str {
    "usage: sequester-virtual-piv [--port N (default 35963)] [--serial N] \
     [--version MAJOR.MINOR.PATCH (default 5.4.3)] [--connect-timeout SECONDS]"
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config {
        host: Ipv4Addr::LOCALHOST,
        port: vpicc::DEFAULT_PORT,
        serial: 5_437_251,
        version: [5, 4, 3],
        connect_timeout: Duration::from_secs(20),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => config.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--serial" => {
                config.serial = value()?.parse().map_err(|e| format!("--serial: {e}"))?
            }
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
        let dispatch = dispatch::Dispatch::with_hw_key(Bytes::try_from(&b"virtual-piv"[..]).expect("short key"));
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
    };
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
}

impl VirtualCard<'_> {
    fn handle(&mut self, apdu: &[u8]) -> Vec<u8> {
        if apdu.len() >= 2 && apdu[0] & 0x10 == 0 {
            match apdu[1] {
                INS_YK_GET_SERIAL => return with_status(&self.serial.to_be_bytes(), Status::Success),
                INS_YK_GET_VERSION => return with_status(&self.version, Status::Success),
                _ => {}
            }
        }
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
        let n = if expected == 0 { remaining.min(256) } else { remaining.min(expected) };
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
    apdu.len() >= 10 && apdu[..4] == [0x00, 0xa4, 0x04, 0x00] && apdu[4] == 5 && apdu[5..10] == SHORT_PIV_AID
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

fn with_status(data: &[u8], status: Status) -> Vec<u8> {
    let sw: [u8; 2] = status.into();
    let mut out = Vec::with_capacity(data.len() + 2);
    out.extend_from_slice(data);
    out.extend_from_slice(&sw);
    out
}
