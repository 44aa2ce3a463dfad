//! SIGTERM and SIGINT: a flag that asks the serving loops to stop taking jobs. The running job is
//! finished and answered first. A second signal ends the process at once (exit 130).
//!
//! The handler only stores to an atomic (async-signal-safe); `SA_RESTART` keeps interrupted system
//! calls (socket reads of other threads) from failing with EINTR.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the handlers (once) and returns the flag they set.
pub fn install() -> &'static AtomicBool {
    #[cfg(unix)]
    {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            for sig in [libc::SIGTERM, libc::SIGINT] {
                // SAFETY: a zeroed sigaction with a valid handler, no flags but SA_RESTART and an
                // empty mask is a valid argument; the handler is async-signal-safe.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                    action.sa_flags = libc::SA_RESTART;
                    libc::sigemptyset(&mut action.sa_mask);
                    if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                        tracing::warn!("cannot install the handler for signal {sig}");
                    }
                }
            }
        });
    }
    &STOP
}

#[cfg(unix)]
extern "C" fn on_signal(_sig: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Whether a stop was asked for.
pub fn stopping(flag: &AtomicBool) -> bool {
    flag.load(Ordering::SeqCst)
}

/// Sleeps for `d`, waking early when a stop is asked for. Returns whether it was.
pub fn sleep_unless_stopped(flag: &AtomicBool, d: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + d;
    loop {
        if stopping(flag) {
            return true;
        }
        let now = std::time::Instant::now();
        if now >= end {
            return false;
        }
        std::thread::sleep((end - now).min(std::time::Duration::from_millis(50)));
    }
}
