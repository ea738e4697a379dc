//! One way to take a lock. Everything this agent guards with a mutex (status,
//! counters, a cached manifest, a change feed between looks) is consistent
//! between statements, so a holder that panicked leaves nothing half-written:
//! a poisoned lock is taken as it is instead of taking the agent down.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
