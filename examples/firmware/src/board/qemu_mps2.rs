//! The board `qemu-mps2`: QEMU's `mps2-an386` machine (Arm MPS2 with the AN386 Cortex-M4
//! image), so the same firmware runs end to end against a real hub on a PC (`run-qemu`).
//!
//! - Time: the SysTick driver of `systick.rs` on the 25 MHz system clock.
//! - Network: the machine's SMSC LAN9118-compatible controller at `0x4020_0000`, driven by the
//!   small polling driver below ([`run_mac`]). No crates.io crate drives a LAN9118 for
//!   embassy-net (embassy has drivers for W5500, ENC28J60, ADIN1110 and on-chip MACs only), and
//!   the controller is simple: frames go through two FIFOs with a status word each. The
//!   driver polls (no interrupt): it sends a frame as soon as embassy-net queues one and looks
//!   for received frames every millisecond.
//! - Logs: a few lines on UART0 (CMSDK APB UART at `0x4000_4000`; QEMU's `-nographic`
//!   prints them), the panic message too.
//!
//! What QEMU's model leaves out and real LAN9118 silicon needs is noted where it matters (PHY
//! auto-negotiation, EEPROM-less MAC addresses).
#![allow(unsafe_code)] // the MMIO registers of the UART and the Ethernet controller

use core::fmt::Write as _;
use core::future::{Future as _, poll_fn};
use core::pin::pin;
use core::ptr::{read_volatile, write_volatile};
use core::task::Poll;

use embassy_net_driver_channel as ch;
use embassy_time::Timer;
use static_cell::StaticCell;

/// The machine's system (and SysTick) clock.
const CORE_HZ: u32 = 25_000_000;
/// Ethernet MTU.
const MTU: usize = 1514;

/// The network device embassy-net drives.
pub type NetDevice = ch::Device<'static, MTU>;
/// The MAC side of that device.
pub type MacRunner = ch::Runner<'static, MTU>;

/// Starts the time driver and UART0 for the logs.
pub fn init_clock() {
    uart_init();
    crate::systick::start(CORE_HZ);
}

/// A per-device seed: the LAN9118's free-running 25 MHz counter (QEMU: virtual time since the
/// controller's reset) mixed with SysTick and a constant, so every boot picks new TCP ports.
pub fn seed() -> u32 {
    reg_read(FREE_RUN) ^ cortex_m::peripheral::SYST::get_current() ^ 0x9e37_79b9
}

/// The network device and its MAC side. The controller is reset and set up here, so the
/// device is created with the controller's MAC address.
pub fn net_device() -> (NetDevice, MacRunner) {
    static STATE: StaticCell<ch::State<MTU, 4, 4>> = StaticCell::new();
    let mac_addr = lan9118_init();
    let (runner, device) = ch::new(
        STATE.init(ch::State::new()),
        ch::driver::HardwareAddress::Ethernet(mac_addr),
    );
    (device, runner)
}

/// Logs the address DHCP gave (called once by `main`).
pub fn on_address(config: Option<embassy_net::StaticConfigV4>) {
    if let Some(c) = config {
        log(format_args!("qemu-mps2: dhcp address {}", c.address));
    }
}

/// Prints a panic's message on UART0 (called by the panic handler before [`on_panic`]).
pub fn log_panic(info: &core::panic::PanicInfo) {
    log(format_args!("qemu-mps2: panic: {info}"));
}

/// What a panic does after [`log_panic`]: stop.
pub fn on_panic() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

// ---------------------------------------------------------------------------------------------
// UART0: a CMSDK APB UART (DATA, STATE bit 0 = TX full, CTRL bit 0 = TX enable, BAUDDIV).

const UART0: usize = 0x4000_4000;

fn uart_init() {
    // SAFETY: UART0's BAUDDIV and CTRL registers on this machine; nothing else uses them.
    unsafe {
        write_volatile((UART0 + 0x10) as *mut u32, CORE_HZ / 115_200);
        write_volatile((UART0 + 0x08) as *mut u32, 1);
    }
}

struct Uart;

impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // SAFETY: UART0's STATE and DATA registers; writes never overlap (single core,
            // the logs come from thread mode and the final panic only).
            unsafe {
                while read_volatile((UART0 + 0x04) as *const u32) & 1 != 0 {}
                write_volatile(UART0 as *mut u32, u32::from(b));
            }
        }
        Ok(())
    }
}

fn log(args: core::fmt::Arguments<'_>) {
    let _ = Uart.write_fmt(args);
    let _ = Uart.write_str("\n");
}

// ---------------------------------------------------------------------------------------------
// The LAN9118 (datasheet names). 32-bit registers; the FIFOs are ports that pop or push a word
// per access.

const LAN9118: usize = 0x4020_0000;
/// RX data FIFO port: the received frame's words (little-endian bytes, then the 4-byte FCS).
const RX_DATA_FIFO: usize = 0x00;
/// TX data FIFO port: TX command A, TX command B, then the frame's words.
const TX_DATA_FIFO: usize = 0x20;
/// RX status FIFO port: one word per received frame (length in bits 29:16, ES bit 15).
const RX_STATUS_FIFO: usize = 0x40;
/// TX status FIFO port: one word per sent frame.
const TX_STATUS_FIFO: usize = 0x48;
/// Chip id (bits 31:16, 0x0118 for the LAN9118) and revision.
const ID_REV: usize = 0x50;
/// Endianness check: always reads 0x8765_4321.
const BYTE_TEST: usize = 0x64;
/// TX_ON (bit 1) starts the transmitter, TXSAO (bit 2) lets it go on when nobody reads the
/// TX status FIFO.
const TX_CFG: usize = 0x70;
/// SRST (bit 0): soft reset, self-clearing.
const HW_CFG: usize = 0x74;
/// RXSUSED: bits 23:16, frames waiting in the RX status FIFO.
const RX_FIFO_INF: usize = 0x7c;
/// TXSUSED: bits 23:16; TDFREE: bits 15:0, free bytes in the TX data FIFO.
const TX_FIFO_INF: usize = 0x80;
/// READY (bit 0): the device is out of reset.
const PMT_CTRL: usize = 0x84;
/// A free-running counter at 25 MHz.
const FREE_RUN: usize = 0x9c;
/// The MAC's own registers are indirect: CSR_BUSY (bit 31), R/nW (bit 30), index (bits 7:0).
const MAC_CSR_CMD: usize = 0xa4;
const MAC_CSR_DATA: usize = 0xa8;
/// MAC registers (indices for MAC_CSR_CMD).
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
/// MAC_CR bits: receiver enable, transmitter enable, full duplex.
const MAC_CR_RXEN: u32 = 1 << 2;
const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_FDPX: u32 = 1 << 20;
/// TX command A: first segment, last segment (a frame is sent in one buffer).
const TX_CMD_A_FIRST_LAST: u32 = (1 << 13) | (1 << 12);
/// RX status: error summary.
const RX_STS_ES: u32 = 1 << 15;
/// Used when the controller has no MAC address (no EEPROM on the board): locally administered.
const FALLBACK_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x12, 0x34, 0x56];
/// Bounded waits for the controller (reset, CSR access): iterations, not time.
const SPIN: u32 = 100_000;

fn reg_read(offset: usize) -> u32 {
    // SAFETY: a LAN9118 register of this machine (the device is 0x100 bytes, `offset` is one
    // of the constants above); reading a FIFO port pops it, which only the driver does.
    unsafe { read_volatile((LAN9118 + offset) as *const u32) }
}

fn reg_write(offset: usize, value: u32) {
    // SAFETY: as in `reg_read`.
    unsafe { write_volatile((LAN9118 + offset) as *mut u32, value) }
}

/// Waits (bounded) until `done` holds; false on time-out.
fn spin_until(done: impl Fn() -> bool) -> bool {
    (0..SPIN).any(|_| done())
}

fn mac_read(index: u32) -> u32 {
    spin_until(|| reg_read(MAC_CSR_CMD) & (1 << 31) == 0);
    reg_write(MAC_CSR_CMD, (1 << 31) | (1 << 30) | index);
    spin_until(|| reg_read(MAC_CSR_CMD) & (1 << 31) == 0);
    reg_read(MAC_CSR_DATA)
}

fn mac_write(index: u32, value: u32) {
    spin_until(|| reg_read(MAC_CSR_CMD) & (1 << 31) == 0);
    reg_write(MAC_CSR_DATA, value);
    reg_write(MAC_CSR_CMD, (1 << 31) | index);
    spin_until(|| reg_read(MAC_CSR_CMD) & (1 << 31) == 0);
}

/// Soft reset, MAC address (the controller's, loaded from its EEPROM — QEMU's `-nic` MAC — or
/// [`FALLBACK_MAC`]), transmitter and receiver on. Returns the MAC address.
///
/// On real silicon the PHY's auto-negotiation result (PHY registers through MAC_MII_ACC) would
/// set MAC_CR's duplex bit and the link state; QEMU's PHY is always up, full duplex.
fn lan9118_init() -> [u8; 6] {
    let id = reg_read(ID_REV);
    if reg_read(BYTE_TEST) != 0x8765_4321 || id >> 16 != 0x0118 {
        log(format_args!(
            "qemu-mps2: no LAN9118 at {LAN9118:#x} (id {id:#010x})"
        ));
    }
    reg_write(HW_CFG, 1);
    let reset = spin_until(|| reg_read(HW_CFG) & 1 == 0 && reg_read(PMT_CTRL) & 1 != 0);
    if !reset {
        log(format_args!("qemu-mps2: LAN9118 soft reset did not finish"));
    }

    let (lo, hi) = (mac_read(MAC_ADDRL), mac_read(MAC_ADDRH));
    let mut mac = [0u8; 6];
    mac[..4].copy_from_slice(&lo.to_le_bytes());
    mac[4..].copy_from_slice(&hi.to_le_bytes()[..2]);
    if mac == [0; 6] || mac == [0xff; 6] {
        mac = FALLBACK_MAC;
        mac_write(
            MAC_ADDRL,
            u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
        );
        mac_write(MAC_ADDRH, u32::from_le_bytes([mac[4], mac[5], 0, 0]));
    }

    // Perfect filtering of our address plus broadcast (promiscuous mode off).
    mac_write(MAC_CR, MAC_CR_TXEN | MAC_CR_RXEN | MAC_CR_FDPX);
    reg_write(TX_CFG, (1 << 2) | (1 << 1));
    log(format_args!(
        "qemu-mps2: LAN9118 id {id:#010x}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    ));
    mac
}

/// Moves frames between embassy-net's channel and the controller, forever: every frame
/// embassy-net queues goes to the TX FIFO at once; the RX FIFO is looked at every millisecond
/// and after every send, and drained while the channel has room (a frame stays in the
/// controller's FIFO while it has none).
pub async fn run_mac(runner: MacRunner) -> ! {
    let (state, mut rx, mut tx) = runner.split();
    state.set_link_state(ch::driver::LinkState::Up);
    loop {
        while let Some(frame) = tx.try_tx_buf() {
            send(frame);
            tx.tx_done();
        }
        // The TX status FIFO only says "sent": drop its words so it never fills.
        while (reg_read(TX_FIFO_INF) >> 16) & 0xff != 0 {
            let _ = reg_read(TX_STATUS_FIFO);
        }
        while (reg_read(RX_FIFO_INF) >> 16) & 0xff != 0 {
            let Some(buf) = rx.try_rx_buf() else { break };
            if let Some(len) = receive(buf) {
                rx.rx_done(len);
            }
        }
        // Sleep until embassy-net queues a frame or a millisecond passed.
        let mut tick = pin!(Timer::after_millis(1));
        poll_fn(|cx| {
            if tx.poll_tx_buf(cx).is_ready() || tick.as_mut().poll(cx).is_ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// Writes one frame to the TX FIFO: command A (first and last segment, the buffer's length;
/// 4-byte alignment, no offset), command B (a tag and the frame's length), then the frame in
/// little-endian words. The FIFO holds 4.5 KiB; a frame waits (bounded) for room.
fn send(frame: &[u8]) {
    let len = frame.len() as u32;
    // Room for the two command words and the frame padded to whole words.
    spin_until(|| reg_read(TX_FIFO_INF) & 0xffff >= len.next_multiple_of(4) + 8);
    reg_write(TX_DATA_FIFO, TX_CMD_A_FIRST_LAST | len);
    reg_write(TX_DATA_FIFO, (len << 16) | len);
    for chunk in frame.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        reg_write(TX_DATA_FIFO, u32::from_le_bytes(word));
    }
}

/// Pops one frame (status word, then its data words) into `buf`; returns its length without
/// the FCS, or None for a frame with errors or one that does not fit (its words are still read
/// so the next frame starts where it should).
fn receive(buf: &mut [u8]) -> Option<usize> {
    let status = reg_read(RX_STATUS_FIFO);
    let len = ((status >> 16) & 0x3fff) as usize;
    let words = len.div_ceil(4);
    let frame_len = len.saturating_sub(4);
    let ok = status & RX_STS_ES == 0 && frame_len >= 14 && frame_len <= buf.len();
    for i in 0..words {
        let word = reg_read(RX_DATA_FIFO).to_le_bytes();
        if ok {
            let at = i * 4;
            let end = (at + 4).min(frame_len);
            if at < end {
                buf[at..end].copy_from_slice(&word[..end - at]);
            }
        }
    }
    ok.then_some(frame_len)
}
