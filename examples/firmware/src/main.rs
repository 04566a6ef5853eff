//! The thermostat firmware: embassy-executor on a Cortex-M4F, embassy-net for TCP/IP (DHCP),
//! the minimq adapter of `iothub-sdk-nostd`, and the application of `iothub-firmware-app` (the
//! same code the `firmware_host` binary runs on Linux in the end-to-end test).
//!
//! With feature `tls` the MQTT connection runs over TLS 1.3 (the SDK's `TlsTransport` over the
//! same socket; the CA, server name and optional client certificate are fixed at build time,
//! see build.rs).
//!
//! Every buffer is a `StaticCell`; nothing is allocated. Board-specific parts are in `board`:
//! the SysTick time driver and the network interface's frame channel (the board's Ethernet or
//! Wi-Fi driver feeds it).
#![no_std]
#![no_main]

#[cfg_attr(feature = "qemu-mps2", path = "board/qemu_mps2.rs")]
mod board;
mod systick;

use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Ipv4Address, Stack, StackResources};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_time::{Duration, Timer};
use iothub_firmware_app::{AppClient, AppResources, AppState, Thermostat, device_config};
use iothub_sdk_nostd::Device;
use iothub_sdk_nostd::minimq::{MqttConfig, Runner, TcpTransport};
use static_cell::StaticCell;
#[cfg(feature = "tls")]
use {
    iothub_sdk_nostd::minimq::tls::READ_RECORD_HUB,
    iothub_sdk_nostd::minimq::{ClientIdentity, TlsConfig, TlsResources, TlsTransport},
    rand_chacha::ChaCha20Rng,
    rand_chacha::rand_core::SeedableRng as _,
    static_cell::ConstStaticCell,
};

/// The thing's credentials and the hub's address, fixed at build time.
const THING_ID: &str = match option_env!("IOTHUB_THING_ID") {
    Some(id) => id,
    None => "thermostat-fw-1",
};
const THING_SECRET: &str = match option_env!("IOTHUB_THING_SECRET") {
    Some(s) => s,
    None => "change-me",
};
/// `IOTHUB_HUB_ADDR` as `a.b.c.d:port` (checked when the firmware is built).
const HUB: (Ipv4Address, u16) = match option_env!("IOTHUB_HUB_ADDR") {
    Some(addr) => parse_hub_addr(addr.as_bytes()),
    None => (Ipv4Address::new(192, 168, 1, 10), 1883),
};

/// The hub's DNS name in its certificate (`IOTHUB_TLS_SERVER_NAME`).
#[cfg(feature = "tls")]
const TLS_SERVER_NAME: &str = match option_env!("IOTHUB_TLS_SERVER_NAME") {
    Some(name) => name,
    None => "localhost",
};
/// The CA certificate the hub's certificate must chain to (DER, from `IOTHUB_TLS_CA`).
#[cfg(feature = "tls")]
static TLS_CA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tls_ca.der"));
/// The thing's client certificate and its key's scalar (`IOTHUB_TLS_CERT`, `IOTHUB_TLS_KEY`).
#[cfg(all(feature = "tls", tls_client))]
static TLS_CLIENT: (&[u8], &[u8; 32]) = (
    include_bytes!(concat!(env!("OUT_DIR"), "/tls_client.der")),
    include_bytes!(concat!(env!("OUT_DIR"), "/tls_client.key")),
);
/// TLS buffers: whole records of the reference hub in (D-91), records of 1 KiB out.
#[cfg(feature = "tls")]
type TlsBuffers = TlsResources<READ_RECORD_HUB, 1024>;

/// Parses `a.b.c.d:port`; anything else stops the build (a panic in const evaluation).
const fn parse_hub_addr(s: &[u8]) -> (Ipv4Address, u16) {
    // The four octets, then the port.
    let mut parts = [0u32; 5];
    let (mut n, mut digits, mut i) = (0, 0, 0);
    while i < s.len() {
        let c = s[i];
        if c.is_ascii_digit() && digits < 5 {
            parts[n] = parts[n] * 10 + (c - b'0') as u32;
            digits += 1;
        } else if digits > 0 && ((c == b'.' && n < 3) || (c == b':' && n == 3)) {
            n += 1;
            digits = 0;
        } else {
            panic!("IOTHUB_HUB_ADDR must be a.b.c.d:port");
        }
        i += 1;
    }
    let [a, b, c, d, port] = parts;
    if n != 4
        || digits == 0
        || a > 255
        || b > 255
        || c > 255
        || d > 255
        || port == 0
        || port > 65535
    {
        panic!("IOTHUB_HUB_ADDR must be a.b.c.d:port");
    }
    (
        Ipv4Address::new(a as u8, b as u8, c as u8, d as u8),
        port as u16,
    )
}

/// The runner and the application run on the same (thread-mode) executor: no locking needed,
/// and the application's closures never run with interrupts disabled.
type Mutex = NoopRawMutex;
#[cfg(not(feature = "tls"))]
type MqttTransport = TcpTransport<'static>;
#[cfg(feature = "tls")]
type MqttTransport = TlsTransport<'static, 'static, TcpTransport<'static>, ChaCha20Rng>;
type MqttRunner = Runner<
    'static,
    'static,
    'static,
    MqttTransport,
    Mutex,
    { iothub_firmware_app::N_SHADOWS },
    { iothub_firmware_app::IN_FLIGHT },
    { iothub_firmware_app::QUEUE },
    { iothub_firmware_app::INBOX },
>;

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, board::NetDevice>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn mac_task(runner: board::MacRunner) -> ! {
    board::run_mac(runner).await
}

#[embassy_executor::task]
async fn mqtt_task(runner: MqttRunner) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn app_task(client: AppClient<'static, 'static, Mutex>) -> ! {
    static THERMOSTAT: StaticCell<Thermostat> = StaticCell::new();
    let thermostat = THERMOSTAT.init(Thermostat::new(env!("CARGO_PKG_VERSION"), 1));
    iothub_firmware_app::run(client, thermostat, Duration::from_secs(5)).await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    board::init_clock();
    let seed = board::seed();

    // Network: embassy-net over the board's interface, DHCP.
    let (device, mac) = board::net_device();
    static STACK: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, net_runner) = embassy_net::new(
        device,
        embassy_net::Config::dhcpv4(Default::default()),
        STACK.init(StackResources::new()),
        u64::from(seed),
    );
    spawner.spawn(mac_task(mac).expect("mac task"));
    spawner.spawn(net_task(net_runner).expect("net task"));
    wait_for_address(stack).await;
    #[cfg(feature = "qemu-mps2")]
    board::on_address(stack.config_v4());

    // One TCP socket, reused for every reconnect.
    static SOCKET_RX: StaticCell<[u8; 2048]> = StaticCell::new();
    static SOCKET_TX: StaticCell<[u8; 1024]> = StaticCell::new();
    let socket = TcpSocket::new(stack, SOCKET_RX.init([0; 2048]), SOCKET_TX.init([0; 1024]));
    let transport = TcpTransport::new(socket, HUB.into());
    #[cfg(feature = "tls")]
    let transport = {
        static TLS: ConstStaticCell<TlsBuffers> = ConstStaticCell::new(TlsBuffers::new());
        // The TLS RNG (ECDHE keys, randoms). QEMU's mps2-an386 has no true RNG and the board's
        // seed is 32 bits of timer values: fine for this demo, NOT for a product. A real board
        // seeds ChaCha20 with 32 bytes from its TRNG (the STM32F429's RNG peripheral).
        let rng = ChaCha20Rng::seed_from_u64(u64::from(seed) << 32 | u64::from(board::seed()));
        let config = TlsConfig {
            server_name: TLS_SERVER_NAME,
            ca_der: TLS_CA,
            client: client_identity(),
        };
        match TlsTransport::new(transport, TLS.take().buffers(), config, rng) {
            Ok(tls) => tls,
            // Buffers or build-time settings that cannot work: wait for a new image.
            Err(_) => loop {
                Timer::after_secs(3600).await;
            },
        }
    };

    // The device core, the shared state and the runner's buffers.
    static QUEUE: StaticCell<[u8; iothub_firmware_app::QUEUE_BYTES]> = StaticCell::new();
    static STATE: StaticCell<AppState<'static, Mutex>> = StaticCell::new();
    static RESOURCES: StaticCell<AppResources> = StaticCell::new();
    let queue = QUEUE.init([0; iothub_firmware_app::QUEUE_BYTES]);
    let Ok(device) = Device::new(device_config(THING_ID, seed), queue) else {
        // A bad build-time thing id: nothing to do but wait for a new image.
        loop {
            Timer::after_secs(3600).await;
        }
    };
    let state = STATE.init(AppState::new(device));
    let mut mqtt = MqttConfig::new(THING_ID, THING_SECRET.as_bytes());
    mqtt.jitter_seed = seed;
    let Ok((client, runner)) = Runner::new(
        state,
        transport,
        RESOURCES.init(AppResources::new()).buffers(),
        mqtt,
    ) else {
        loop {
            Timer::after_secs(3600).await;
        }
    };
    spawner.spawn(mqtt_task(runner).expect("mqtt task"));
    spawner.spawn(app_task(client).expect("app task"));
}

/// The client certificate built in, if any.
#[cfg(feature = "tls")]
fn client_identity() -> Option<ClientIdentity<'static>> {
    #[cfg(tls_client)]
    let identity = ClientIdentity::new(TLS_CLIENT.0, TLS_CLIENT.1).ok();
    #[cfg(not(tls_client))]
    let identity = None;
    identity
}

async fn wait_for_address(stack: Stack<'static>) {
    while stack.config_v4().is_none() {
        Timer::after_millis(100).await;
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    #[cfg(feature = "qemu-mps2")]
    board::log_panic(_info);
    board::on_panic()
}
