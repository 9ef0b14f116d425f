//! Serves async operations in the order they were called. A ticket is drawn on the JS
//! thread when the method is called; the spawned future waits for its number. tokio may
//! poll freshly spawned tasks in any order, so a lock taken inside the future would not
//! keep call order.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

#[derive(Debug)]
pub struct Turnstile {
  state: Mutex<State>,
  /// Operations done here whose outcome JS has not been given yet (see [`Undelivered`]).
  undelivered: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
  next: u64,
  serving: u64,
  /// Tickets dropped before their turn came (their operation was cancelled).
  finished_early: BTreeSet<u64>,
  /// Tickets whose operation is done but which still hold the line ([`Ticket::hold`]).
  held: u64,
  /// The tickets waiting in [`Ticket::turn`], by number. Only the one whose turn comes is
  /// woken: waking every waiter at each turn made a line of n operations cost n² polls
  /// (16,000 writes queued behind a full socket took 30 s to drain).
  waiting: HashMap<u64, Arc<Notify>>,
}

/// An operation whose outcome JS has not been given yet: [`Turnstile::is_idle`] is false
/// while one lives.
#[derive(Debug)]
pub struct Undelivered(Arc<Turnstile>);

impl Drop for Undelivered {
  fn drop(&mut self) {
    self.0.undelivered.fetch_sub(1, Ordering::AcqRel);
  }
}

/// A place in line. Dropping it, served or not, lets the next one through.
#[derive(Debug)]
pub struct Ticket {
  gate: Arc<Turnstile>,
  number: u64,
}

impl Turnstile {
  pub fn new() -> Arc<Self> {
    Arc::new(Self {
      state: Mutex::new(State::default()),
      undelivered: AtomicUsize::new(0),
    })
  }

  fn state(&self) -> MutexGuard<'_, State> {
    self.state.lock().unwrap_or_else(PoisonError::into_inner)
  }

  /// Draws the next ticket; call this synchronously, in call order.
  pub fn ticket(self: &Arc<Self>) -> Ticket {
    let mut state = self.state();
    let number = state.next;
    state.next += 1;
    Ticket {
      gate: Arc::clone(self),
      number,
    }
  }

  /// No ticket is outstanding (nothing drawn is waiting or being served) and every
  /// outcome has reached JS: an operation answered at once now cannot overtake one whose
  /// settlement is still on its way.
  pub fn is_idle(&self) -> bool {
    let state = self.state();
    // Held tickets are done: only the operations queued behind them wait for them.
    state.next - state.serving == state.held && self.undelivered.load(Ordering::Acquire) == 0
  }

  /// Counts an operation until its outcome is delivered to JS (the guard is dropped then).
  pub fn undelivered(self: &Arc<Self>) -> Undelivered {
    self.undelivered.fetch_add(1, Ordering::AcqRel);
    Undelivered(Arc::clone(self))
  }

  fn finish(&self, number: u64) {
    let mut state = self.state();
    // The tables are touched only when they hold something: a line of one (a round trip's
    // reads) costs no hashing and no allocation per ticket.
    if !state.waiting.is_empty() {
      state.waiting.remove(&number);
      // A long line gone leaves no table of its size behind.
      if state.waiting.is_empty() && state.waiting.capacity() > 1024 {
        state.waiting.shrink_to(64);
      }
    }
    if number == state.serving {
      state.serving += 1;
    } else {
      state.finished_early.insert(number);
    }
    while let Some(&done) = state
      .finished_early
      .first()
      .filter(|&&n| n == state.serving)
    {
      state.finished_early.remove(&done);
      state.serving += 1;
    }
    // A ticket not waiting yet finds its turn come when it asks (see `turn`).
    if !state.waiting.is_empty() {
      if let Some(next) = state.waiting.get(&state.serving) {
        next.notify_one();
      }
    }
  }
}

impl Ticket {
  /// Resolves once every earlier ticket has been dropped. One wait per ticket at a time
  /// (each is awaited by the one future that owns it): a turn wakes one waiter.
  pub async fn turn(&self) {
    let woken = {
      let mut state = self.gate.state();
      if state.serving == self.number {
        return;
      }
      Arc::clone(state.waiting.entry(self.number).or_default())
    };
    // `notify_one` before this waits leaves a permit, which the wait then takes: no wake-up
    // is lost between the check above and the wait.
    loop {
      woken.notified().await;
      if self.gate.state().serving == self.number {
        return;
      }
    }
  }

  /// Whether every earlier ticket has been dropped (its [`Ticket::turn`] would not wait).
  pub fn is_turn(&self) -> bool {
    self.gate.state().serving == self.number
  }

  /// For an operation that is done: the ones already queued behind it still wait until the
  /// returned guard is dropped, while one started meanwhile may go at once
  /// ([`Turnstile::is_idle`] is true if nothing else is drawn).
  pub fn hold(self) -> Held {
    let mut state = self.gate.state();
    state.held += 1;
    drop(state);
    Held(self)
  }
}

impl Drop for Ticket {
  fn drop(&mut self) {
    self.gate.finish(self.number);
  }
}

/// A ticket that holds the line after its operation is done (see [`Ticket::hold`]).
#[derive(Debug)]
pub struct Held(Ticket);

impl Drop for Held {
  fn drop(&mut self) {
    let mut state = self.0.gate.state();
    state.held -= 1;
    // The ticket itself goes next (the field is dropped after this), letting the next one
    // through.
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::future::Future;
  use std::time::Duration;

  /// Runs `test` on a current-thread runtime with a clock, as the JS thread's is.
  fn run(test: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
      .enable_time()
      .build()
      .expect("runtime")
      .block_on(test);
  }

  #[test]
  fn tickets_are_served_in_draw_order_even_when_one_is_dropped_early() {
    run(async {
      let gate = Turnstile::new();
      let first = gate.ticket();
      let second = gate.ticket();
      let third = gate.ticket();
      drop(second);
      let waiting = tokio::spawn(async move {
        third.turn().await;
        "third"
      });
      tokio::time::sleep(Duration::from_millis(20)).await;
      assert!(!waiting.is_finished(), "third must wait for first");
      first.turn().await;
      drop(first);
      assert_eq!(waiting.await.expect("join"), "third");
    });
  }

  #[test]
  fn a_long_line_is_served_in_order_with_tickets_dropped_and_waits_given_up() {
    run(async {
      let gate = Turnstile::new();
      let served = Arc::new(Mutex::new(Vec::new()));
      let mut tasks = Vec::new();
      let mut dropped = Vec::new();
      for number in 0..300u64 {
        let ticket = gate.ticket();
        if number % 3 == 1 {
          // Cancelled before its turn: it must not hold up the rest.
          dropped.push(ticket);
          continue;
        }
        let served = Arc::clone(&served);
        tasks.push(tokio::spawn(async move {
          if number % 3 == 2 {
            // A wait given up (its future dropped) and taken up again keeps its place.
            let _ = tokio::time::timeout(Duration::from_millis(1), ticket.turn()).await;
          }
          ticket.turn().await;
          served.lock().expect("lock").push(number);
          tokio::task::yield_now().await;
        }));
      }
      tokio::time::sleep(Duration::from_millis(5)).await;
      drop(dropped);
      for task in tasks {
        task.await.expect("join");
      }
      let served = served.lock().expect("lock").clone();
      let expected: Vec<u64> = (0..300).filter(|n| n % 3 != 1).collect();
      assert_eq!(served, expected);
      assert!(gate.is_idle());
    });
  }
}
