//! [`LeaseWaits`]: which waiting lease polls to wake after the state changes.
//!
//! An idle agent holds a lease long poll open on the leader. Woken on every apply, each
//! of them would take the state machine lock and run placement: at 10,000 agents that
//! herd was a third of the leader's CPU (measured with `drover-bench fleet`), and most
//! wake-ups found nothing. Here polls wait per *class* — agents declaring the same
//! attributes, which placement cannot tell apart — and one loop, woken by each apply,
//! checks each class with polls waiting once and wakes only as many of them as there are
//! queued tasks (at most the number waiting).
//!
//! Liveness: a poll registers (and arms its wake-up) before it looks for work, so work
//! that arrives after its look wakes its class. A woken poll that finds nothing (another
//! took the work) waits again; one that leases proposes an entry, whose apply runs the
//! check again, so work left over for a class keeps waking it until it is gone. Every
//! poll also ends at its deadline whatever happens. Wake-ups are hints, never grants:
//! the lease command decides, under the state machine, what each agent gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::state::StateMachine;
use crate::state::model::{AgentAttrs, TaskState};
use crate::state::placement;
use crate::storage::sm_store::SmShared;

#[derive(Default)]
pub struct LeaseWaits {
    classes: Mutex<HashMap<AgentAttrs, Class>>,
}

struct Class {
    notify: Arc<Notify>,
    /// Polls of this class open now.
    waiting: usize,
}

/// One open poll's place in its class; leaving (drop) gives it back.
pub struct Waiting<'a> {
    waits: &'a LeaseWaits,
    attrs: AgentAttrs,
    pub notify: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut classes = self.waits.lock();
        if let Some(c) = classes.get_mut(&self.attrs) {
            c.waiting = c.waiting.saturating_sub(1);
            if c.waiting == 0 {
                classes.remove(&self.attrs);
            }
        }
    }
}

impl LeaseWaits {
    /// Registers a poll of an agent declaring `attrs`; wait on `notify` (armed before
    /// looking for work).
    pub fn wait(&self, attrs: &AgentAttrs) -> Waiting<'_> {
        let mut classes = self.lock();
        let c = classes.entry(attrs.clone()).or_insert_with(|| Class { notify: Arc::new(Notify::new()), waiting: 0 });
        c.waiting += 1;
        Waiting { waits: self, attrs: attrs.clone(), notify: c.notify.clone() }
    }

    /// Wakes, in each class with polls waiting and work placement would give it, as many
    /// polls as there are queued tasks (at most all of them). Returns the polls woken.
    pub fn wake(&self, sm: &StateMachine) -> usize {
        let classes = self.lock();
        let idx = sm.indexes();
        let queued = idx.state_counts[TaskState::Queued.index()];
        if queued == 0 {
            return 0;
        }
        let mut woken = 0;
        for (attrs, c) in classes.iter() {
            if placement::pick(idx, sm.tenants(), sm.codes(), "", attrs, sm.serves(attrs)).is_none() {
                continue;
            }
            let n = c.waiting.min(usize::try_from(queued).unwrap_or(usize::MAX));
            for _ in 0..n {
                c.notify.notify_one();
            }
            woken += n;
        }
        woken
    }

    /// Polls open now, over all classes.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(|c| c.waiting).sum()
    }

    /// Runs [`LeaseWaits::wake`] after every apply until `shutdown`.
    pub async fn run(self: Arc<Self>, sm: Arc<SmShared>, shutdown: CancellationToken) {
        loop {
            let applied = sm.applied.notified();
            tokio::pin!(applied);
            applied.as_mut().enable();
            // Most applies on a follower, and many on a leader, find no poll waiting:
            // they skip the state machine lock.
            if self.waiting() > 0 {
                match sm.machine() {
                    Ok(machine) => {
                        self.wake(&machine);
                    }
                    Err(e) => tracing::warn!(error = %e, "lease waits: state machine unavailable"),
                }
            }
            tokio::select! {
                _ = &mut applied => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentAttrs, Class>> {
        // Counts and notifiers only: consistent after any panic.
        self.classes.lock().unwrap_or_else(|p| p.into_inner())
    }
}
