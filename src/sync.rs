//! Locks for state shared with tokio's threads.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`. Nothing here panics while holding a lock, but if something did, the
/// state is still the best there is: a poisoned lock is taken anyway.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
  mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
