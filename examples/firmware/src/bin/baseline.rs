//! Footprint probe: an empty firmware (vector table, cortex-m-rt start-up, a loop). Subtracted
//! from `core-only` to get the size of our code alone.
#![no_std]
#![no_main]

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    let mut n: u32 = 0;
    loop {
        n = core::hint::black_box(n.wrapping_add(1));
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    cortex_m::asm::udf()
}
