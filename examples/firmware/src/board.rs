//! What depends on the board: the time driver, the network interface, the seed, panics.
//!
//! - Time: the SysTick driver of `systick.rs` (complete for any Cortex-M; set `CORE_HZ` to
//!   the board's core clock).
//! - Network: embassy-net talks to an `embassy-net-driver-channel` device; [`run_mac`] moves
//!   frames between that channel and the MAC. The MAC here is a placeholder that only
//!   brings the link up (it sends nothing and receives nothing): on a real board replace
//!   `run_mac` with the HAL's Ethernet or Wi-Fi driver (embassy-stm32's `eth::Ethernet`,
//!   cyw43, esp-wifi), which gives embassy-net its own `Driver` directly. The application,
//!   the network stack, the MQTT adapter and the device core above it stay as they are.
//!
//! A second board that really moves frames: `board/qemu_mps2.rs` (feature `qemu-mps2`), QEMU's
//! `mps2-an386` machine with a small LAN9118 driver; `run-qemu` runs that build against a real
//! hub (examples/README.md).
use embassy_net_driver_channel as ch;
use static_cell::StaticCell;

/// Core clock of the board after reset (STM32F4: the 16 MHz HSI).
const CORE_HZ: u32 = 16_000_000;
/// Ethernet MTU.
const MTU: usize = 1514;

/// The network device embassy-net drives.
pub type NetDevice = ch::Device<'static, MTU>;
/// The MAC side of that device.
pub type MacRunner = ch::Runner<'static, MTU>;

/// Starts the time driver.
pub fn init_clock() {
    crate::systick::start(CORE_HZ);
}

/// A per-device seed (jitter, clientTokens, TCP ports). A board takes it from its RNG or its
/// unique id; here the SysTick counter at start-up is mixed with a constant.
pub fn seed() -> u32 {
    cortex_m::peripheral::SYST::get_current() ^ 0x9e37_79b9
}

/// The network device and its MAC side.
pub fn net_device() -> (NetDevice, MacRunner) {
    static STATE: StaticCell<ch::State<MTU, 4, 4>> = StaticCell::new();
    let mac_addr = [0x02, 0x00, 0x00, 0x12, 0x34, 0x56];
    let (runner, device) = ch::new(
        STATE.init(ch::State::new()),
        ch::driver::HardwareAddress::Ethernet(mac_addr),
    );
    (device, runner)
}

/// The MAC placeholder: reports the link up and hands transmitted frames back as sent. See the
/// module docs for what a board puts here.
pub async fn run_mac(runner: MacRunner) -> ! {
    let (state, _rx, mut tx) = runner.split();
    state.set_link_state(ch::driver::LinkState::Up);
    loop {
        let _frame = tx.tx_buf().await;
        tx.tx_done();
    }
}

/// What a panic does: stop here (a board would log and reset).
pub fn on_panic() -> ! {
    loop {
        cortex_m::asm::bkpt();
    }
}
