//! The time driver both boards use: SysTick at 1 kHz drives embassy-time. It needs nothing but
//! the Cortex-M core, so it is complete for any board; a board only says its core clock.
#![allow(unsafe_code)] // cortex-m-rt's exception handler

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_time_queue_utils::Queue;

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

/// Starts SysTick at 1 kHz from a core clock of `core_hz`.
pub fn start(core_hz: u32) {
    let Some(mut p) = cortex_m::Peripherals::take() else {
        return;
    };
    p.SYST.set_clock_source(SystClkSource::Core);
    p.SYST.set_reload(core_hz / 1_000 - 1);
    p.SYST.clear_current();
    p.SYST.enable_interrupt();
    p.SYST.enable_counter();
}
