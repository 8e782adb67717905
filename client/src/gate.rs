//! A gate that tasks pass one at a time, in the order they took their tickets.
//!
//! glommio's `Semaphore` wakes its first waiter but lets a task that arrives before the
//! woken one runs take the permit first: fair enough for a resource, but it breaks
//! arrival order, and order is what pipelined requests of one producer need (on a
//! connection's writes, in the client's routing step, at a broker's sequence check).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use event_listener::Event;

#[derive(Debug, Default)]
pub struct ArrivalGate {
    next_ticket: Cell<u64>,
    serving: Cell<u64>,
    /// Tickets whose holders gave up waiting (their task was dropped); skipped.
    abandoned: RefCell<BTreeSet<u64>>,
    turn: Event,
}

impl ArrivalGate {
    pub fn new() -> Rc<ArrivalGate> {
        Rc::new(ArrivalGate::default())
    }

    /// A place in the queue, taken without waiting: the order is the order of these calls.
    pub fn take_ticket(self: &Rc<Self>) -> Ticket {
        let number = self.next_ticket.get();
        self.next_ticket.set(number + 1);
        Ticket {
            gate: self.clone(),
            number,
        }
    }

    /// Nobody holds or waits with a ticket.
    pub fn is_idle(&self) -> bool {
        self.serving.get() == self.next_ticket.get()
    }

    fn advance(&self) {
        let mut next = self.serving.get() + 1;
        let mut abandoned = self.abandoned.borrow_mut();
        while abandoned.remove(&next) {
            next += 1;
        }
        self.serving.set(next);
        self.turn.notify(usize::MAX);
    }
}

/// A place at an [`ArrivalGate`]; dropping it lets the next one pass (or, before its
/// turn came, gives the place up).
#[derive(Debug)]
pub struct Ticket {
    gate: Rc<ArrivalGate>,
    number: u64,
}

impl Ticket {
    /// Resolves when every earlier ticket has been dropped.
    pub async fn wait_turn(&self) {
        loop {
            if self.gate.serving.get() == self.number {
                return;
            }
            let turn = self.gate.turn.listen();
            if self.gate.serving.get() == self.number {
                return;
            }
            turn.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.gate.serving.get() == self.number {
            self.gate.advance();
        } else {
            self.gate.abandoned.borrow_mut().insert(self.number);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A task that arrives while the first waiter is woken but not yet running must not
    /// pass before it, and a dropped waiter must not stall those behind it.
    #[test]
    fn tickets_pass_in_arrival_order() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .unwrap()
            .run(async {
                let gate = ArrivalGate::new();
                let order = Rc::new(RefCell::new(Vec::new()));
                let first = gate.take_ticket();
                let mut tasks = Vec::new();
                for name in ["second", "abandoned", "third"] {
                    let ticket = gate.take_ticket();
                    let order = order.clone();
                    let task = glommio::spawn_local(async move {
                        ticket.wait_turn().await;
                        order.borrow_mut().push(name);
                    });
                    if name == "abandoned" {
                        drop(task);
                    } else {
                        tasks.push(task);
                    }
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
                order.borrow_mut().push("first");
                drop(first);
                // Arrives after the first left, before the second ran.
                let late = gate.take_ticket();
                let order_late = order.clone();
                let late = glommio::spawn_local(async move {
                    late.wait_turn().await;
                    order_late.borrow_mut().push("late");
                });
                for task in tasks {
                    task.await;
                }
                late.await;
                assert_eq!(*order.borrow(), ["first", "second", "third", "late"]);
                assert!(gate.is_idle());
            });
    }
}
