//! Which tests may run at the same time.
//!
//! Every end-to-end test is a thread of one test binary, on a machine with two cores. A
//! test that loads the machine (a flood, a load generator, a large lossy transfer) slows
//! every server beside it, which matters to a test that asserts how fast something happens
//! (a rate, a timeout, an expiry) and not to one that only checks what was answered. So
//! each test first says which it is, and holds the answer for as long as it runs:
//!
//! | test     | runs beside                    |
//! |----------|--------------------------------|
//! | [`alone`]  | nothing                        |
//! | [`load`]   | plain tests                    |
//! | [`timed`]  | plain and other timed tests    |
//! | [`plain`]  | anything but an `alone` test   |

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Held for reading by every test but an `alone` one.
static MACHINE: RwLock<()> = RwLock::new(());
/// Held for reading by timed tests, for writing by loads. Always taken after `MACHINE`, so
/// the two cannot deadlock.
static QUIET: RwLock<()> = RwLock::new(());

/// What a test holds while it runs; dropping it lets the tests it kept out start.
#[must_use = "the gate is held only while this lives"]
pub struct Gate {
    // Fields drop in order: `QUIET` is let go before `MACHINE`.
    _quiet: Option<Hold>,
    _machine: Hold,
}

// The guards are never read, only held until they drop.
#[allow(dead_code)]
enum Hold {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

// A test that failed while holding a lock says so itself; the others still run.
fn shared(lock: &'static RwLock<()>) -> Hold {
    Hold::Shared(lock.read().unwrap_or_else(PoisonError::into_inner))
}

fn exclusive(lock: &'static RwLock<()>) -> Hold {
    Hold::Exclusive(lock.write().unwrap_or_else(PoisonError::into_inner))
}

/// For a test that needs the whole machine (a load that times what it sees under itself, or
/// a server that must get the CPU the moment it wants it): nothing else runs beside it.
pub fn alone() -> Gate {
    Gate {
        _quiet: None,
        _machine: exclusive(&MACHINE),
    }
}

/// For a test that loads the machine: neither another load nor a timed test runs beside it.
pub fn load() -> Gate {
    let machine = shared(&MACHINE);
    Gate {
        _quiet: Some(exclusive(&QUIET)),
        _machine: machine,
    }
}

/// For a test that asserts how fast something happens: no load runs beside it.
pub fn timed() -> Gate {
    let machine = shared(&MACHINE);
    Gate {
        _quiet: Some(shared(&QUIET)),
        _machine: machine,
    }
}

/// For a test that only checks what was answered: it runs beside anything but an `alone`
/// test.
pub fn plain() -> Gate {
    Gate {
        _quiet: None,
        _machine: shared(&MACHINE),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;
    use std::time::Duration;

    use super::*;

    /// How many tests of each kind hold the gate now, and the most seen together.
    #[derive(Default)]
    struct Census {
        now: [AtomicUsize; 4],
        clashes: AtomicUsize,
    }

    /// Which kinds may not run beside which (indices: alone, load, timed, plain).
    const CLASH: [[bool; 4]; 4] = [
        [true, true, true, true],
        [true, true, true, false],
        [true, true, false, false],
        [true, false, false, false],
    ];

    #[test]
    fn no_two_kinds_that_clash_ever_hold_the_gate_together() {
        let census = Census::default();
        let kinds: [fn() -> Gate; 4] = [alone, load, timed, plain];
        thread::scope(|s| {
            for round in 0..8 {
                for (kind, take) in kinds.iter().enumerate() {
                    let census = &census;
                    s.spawn(move || {
                        let _gate = take();
                        census.now[kind].fetch_add(1, Ordering::SeqCst);
                        for (other, clashes) in CLASH[kind].iter().enumerate() {
                            let beside = census.now[other].load(Ordering::SeqCst);
                            let me = usize::from(other == kind);
                            if *clashes && beside > me {
                                census.clashes.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        thread::sleep(Duration::from_millis(2 + round % 3));
                        census.now[kind].fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        assert_eq!(census.clashes.load(Ordering::SeqCst), 0);
    }
}
