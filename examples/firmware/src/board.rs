//! What depends on the board: the time driver, the network interface, the seed, panics.
//!
//! - Time: SysTick at 1 kHz drives embassy-time (a complete driver for any Cortex-M; set
//!   `CORE_HZ` to the board's core clock).
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
#![allow(unsafe_code)] // cortex-m-rt's exception handler and the SysTick setup

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_net_driver_channel as ch;
use embassy_time_queue_utils::Queue;
use static_cell::StaticCell;

/// Core clock of the board after reset (STM32F4: the 16 MHz HSI).
const CORE_HZ: u32 = 16_000_000;
/// Ethernet MTU.
const MTU: usize = 1514;

/// The network device embassy-net drives.
pub type NetDevice = ch::Device<'static, MTU>;
/// The MAC side of that device.
pub type MacRunner = ch::Runner<'static, MTU>;

struct SysTickDriver {
    ticks: Mutex<Cell<u64>>,
    queue: Mutex<RefCell<Queue>>,
}

impl embassy_time_driver::Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.ticks.borrow(cs).get())
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let _ = self.queue.borrow_ref_mut(cs).schedule_wake(at, waker);
        });
    }
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
    ticks: Mutex::new(Cell::new(0)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let cell = DRIVER.ticks.borrow(cs);
        let now = cell.get().wrapping_add(1);
        cell.set(now);
        // Wakes every timer that expired; the returned next expiry is the next tick anyway.
        let _ = DRIVER.queue.borrow_ref_mut(cs).next_expiration(now);
    });
}

/// Starts SysTick at 1 kHz.
pub fn init_clock() {
    let Some(mut p) = cortex_m::Peripherals::take() else {
        return;
    };
    p.SYST.set_clock_source(SystClkSource::Core);
    p.SYST.set_reload(CORE_HZ / 1_000 - 1);
    p.SYST.clear_current();
    p.SYST.enable_interrupt();
    p.SYST.enable_counter();
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
