//! In-memory indexes over the task table, derived entirely from it.
//!
//! They hold small entries only (ids, times, counts, and a few strings per *running*
//! task), never payloads, so a million queued tasks cost tens of megabytes. They are
//! rebuilt from the `k/` table at start and kept in step by `apply`: a new task is
//! `insert`ed (tenant listing and state index), a purged one `forget`-ten, and every
//! state change is `remove(old)` then `add(new)` on the state indexes only, so a task
//! sits in exactly the index of its state and its listing entry is never churned.
//!
//! Ready queues are grouped by *class* (code + placement): placement picks, per tenant
//! and priority, the lowest task id among the classes an agent may take, so a code at
//! its concurrency limit never blocks another code of the same tenant.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Placement, Task, TaskState};

pub type ClassId = u32;

/// A ready-queue class: tasks of one code with one placement.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Class {
    pub code: String,
    pub placement: Placement,
}

#[derive(Default, Debug)]
struct ClassInterner {
    classes: Vec<Class>,
    ids: BTreeMap<Class, ClassId>,
}

impl ClassInterner {
    fn intern(&mut self, code: &str, placement: &Placement) -> ClassId {
        let class = Class { code: code.to_string(), placement: placement.clone() };
        if let Some(id) = self.ids.get(&class) {
            return *id;
        }
        let id = self.classes.len() as ClassId;
        self.classes.push(class.clone());
        self.ids.insert(class, id);
        id
    }
}

/// One tenant's ready tasks: per priority (index = priority), per class, task ids in order.
#[derive(Default, Debug)]
pub struct TenantReady {
    pub by_priority: [BTreeMap<ClassId, BTreeSet<u64>>; 3],
    pub len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub tenant: String,
    pub code: String,
    pub agent_id: String,
    pub epoch: u64,
    /// Lease grant time plus the task's timeout: the control plane's backstop deadline.
    pub deadline_ms: u64,
}

#[derive(Default, Debug)]
pub struct Indexes {
    pub ready: BTreeMap<String, TenantReady>,
    pub delayed: BTreeSet<(u64, u64)>,
    pub running: BTreeMap<u64, Running>,
    pub running_per_code: BTreeMap<(String, String), u32>,
    pub running_per_tenant: BTreeMap<String, u32>,
    /// Queued plus delayed, for the queued-task quota.
    pub waiting_per_tenant: BTreeMap<String, u64>,
    pub finished: BTreeSet<(u64, u64)>,
    pub idem_expiry: BTreeSet<(u64, Vec<u8>)>,
    pub state_counts: [u64; 8],
    /// Every task id per tenant, whatever its state: the tenant listing. Kept here rather
    /// than as a row per task in sled (see `keys`); about 10–20 bytes per task.
    pub by_tenant: BTreeMap<String, BTreeSet<u64>>,
    /// Task groups by first task id (see [`super::groups`]).
    pub groups: GroupCounts,
    classes: ClassInterner,
}

/// Per task group: how many tasks it holds and how many are not purged yet. One entry per
/// group of up to 6 KiB, so about one map entry per five 1 KiB tasks.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct GroupCounts(BTreeMap<u64, (u32, u32)>);

impl GroupCounts {
    pub fn insert(&mut self, first_id: u64, len: u32, live: u32) {
        self.0.insert(first_id, (len, live));
    }

    /// The group holding task `id`, and its length.
    pub fn group_of(&self, id: u64) -> Option<(u64, u32)> {
        let (&g, &(len, _)) = self.0.range(..=id).next_back()?;
        (id - g < u64::from(len)).then_some((g, len))
    }

    /// Counts one of group `first_id`'s tasks purged; true if it was the last one (and
    /// the group is forgotten).
    pub fn purge_one(&mut self, first_id: u64) -> bool {
        match self.0.get_mut(&first_id) {
            Some((_, live)) if *live > 1 => {
                *live -= 1;
                false
            }
            Some(_) => {
                self.0.remove(&first_id);
                true
            }
            None => false,
        }
    }

    /// A group with every task purged, if any (the last one's purge deletes a group, so
    /// the tables should never hold one).
    pub fn first_emptied(&self) -> Option<u64> {
        self.0.iter().find(|(_, (_, live))| *live == 0).map(|(g, _)| *g)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A canonical, order-independent view of the indexes, for comparing a rebuilt set of
/// indexes with an incrementally maintained one.
#[derive(Debug, PartialEq, Eq)]
pub struct Canonical {
    pub ready: BTreeSet<(String, u8, Class, u64)>,
    pub delayed: BTreeSet<(u64, u64)>,
    pub running: BTreeMap<u64, Running>,
    pub running_per_code: BTreeMap<(String, String), u32>,
    pub running_per_tenant: BTreeMap<String, u32>,
    pub waiting_per_tenant: BTreeMap<String, u64>,
    pub finished: BTreeSet<(u64, u64)>,
    pub idem_expiry: BTreeSet<(u64, Vec<u8>)>,
    pub state_counts: [u64; 8],
    pub by_tenant: BTreeMap<String, BTreeSet<u64>>,
    pub groups: GroupCounts,
}

fn dec<K: Ord + Clone>(m: &mut BTreeMap<K, u32>, k: &K) {
    if let Some(v) = m.get_mut(k) {
        *v = v.saturating_sub(1);
        if *v == 0 {
            m.remove(k);
        }
    }
}

impl Indexes {
    pub fn class(&self, id: ClassId) -> &Class {
        &self.classes.classes[id as usize]
    }

    /// Indexes a task that is new to the table (or read at load): its tenant listing and
    /// the index of its state.
    pub fn insert(&mut self, task: &Task) {
        match self.by_tenant.get_mut(&task.tenant) {
            Some(ids) => {
                ids.insert(task.id);
            }
            None => {
                self.by_tenant.insert(task.tenant.clone(), BTreeSet::from([task.id]));
            }
        }
        self.add(task);
    }

    /// Drops a task leaving the table from every index.
    pub fn forget(&mut self, task: &Task) {
        self.remove(task);
        if let Some(ids) = self.by_tenant.get_mut(&task.tenant) {
            ids.remove(&task.id);
            if ids.is_empty() {
                self.by_tenant.remove(&task.tenant);
            }
        }
    }

    /// Adds `task` to the index of its current state (a state change: `remove(old)`
    /// then `add(new)`; the tenant listing does not change).
    pub fn add(&mut self, task: &Task) {
        self.state_counts[task.state.index()] += 1;
        match task.state {
            TaskState::Queued => {
                let class = self.classes.intern(&task.code, &task.placement);
                let q = self.ready.entry(task.tenant.clone()).or_default();
                q.by_priority[task.priority as usize].entry(class).or_default().insert(task.id);
                q.len += 1;
                *self.waiting_per_tenant.entry(task.tenant.clone()).or_default() += 1;
            }
            TaskState::Delayed => {
                self.delayed.insert((task.ready_at_ms, task.id));
                *self.waiting_per_tenant.entry(task.tenant.clone()).or_default() += 1;
            }
            TaskState::Running => {
                let (agent_id, epoch, granted) = match &task.lease {
                    Some(l) => (l.agent_id.clone(), l.epoch, l.granted_ms),
                    None => (String::new(), 0, 0),
                };
                self.running.insert(
                    task.id,
                    Running {
                        tenant: task.tenant.clone(),
                        code: task.code.clone(),
                        agent_id,
                        epoch,
                        deadline_ms: granted.saturating_add(task.timeout_ms),
                    },
                );
                *self.running_per_code.entry((task.tenant.clone(), task.code.clone())).or_default() += 1;
                *self.running_per_tenant.entry(task.tenant.clone()).or_default() += 1;
            }
            _ => {
                let finished = task.result.as_ref().map(|r| r.finished_ms).unwrap_or(0);
                self.finished.insert((finished, task.id));
            }
        }
    }

    /// Removes `task` (as it was before a change) from the index of its state.
    pub fn remove(&mut self, task: &Task) {
        let c = &mut self.state_counts[task.state.index()];
        *c = c.saturating_sub(1);
        match task.state {
            TaskState::Queued => {
                let class = self.classes.intern(&task.code, &task.placement);
                if let Some(q) = self.ready.get_mut(&task.tenant) {
                    let level = &mut q.by_priority[task.priority as usize];
                    if let Some(set) = level.get_mut(&class)
                        && set.remove(&task.id)
                    {
                        q.len -= 1;
                        if set.is_empty() {
                            level.remove(&class);
                        }
                    }
                    if q.len == 0 {
                        self.ready.remove(&task.tenant);
                    }
                }
                self.dec_waiting(&task.tenant);
            }
            TaskState::Delayed => {
                self.delayed.remove(&(task.ready_at_ms, task.id));
                self.dec_waiting(&task.tenant);
            }
            TaskState::Running => {
                self.running.remove(&task.id);
                dec(&mut self.running_per_code, &(task.tenant.clone(), task.code.clone()));
                dec(&mut self.running_per_tenant, &task.tenant);
            }
            _ => {
                let finished = task.result.as_ref().map(|r| r.finished_ms).unwrap_or(0);
                self.finished.remove(&(finished, task.id));
            }
        }
    }

    fn dec_waiting(&mut self, tenant: &str) {
        if let Some(v) = self.waiting_per_tenant.get_mut(tenant) {
            *v = v.saturating_sub(1);
            if *v == 0 {
                self.waiting_per_tenant.remove(tenant);
            }
        }
    }

    /// Up to `limit` of a tenant's task ids greater than `after_id`, in order.
    pub fn tenant_task_ids(&self, tenant: &str, after_id: u64, limit: usize) -> Vec<u64> {
        match (self.by_tenant.get(tenant), after_id.checked_add(1)) {
            (Some(ids), Some(from)) => ids.range(from..).take(limit).copied().collect(),
            _ => Vec::new(),
        }
    }

    pub fn waiting(&self, tenant: &str) -> u64 {
        self.waiting_per_tenant.get(tenant).copied().unwrap_or(0)
    }

    pub fn running_for_code(&self, tenant: &str, code: &str) -> u32 {
        // Avoids allocating a key on the placement hot path for the common empty case.
        if self.running_per_code.is_empty() {
            return 0;
        }
        self.running_per_code.get(&(tenant.to_string(), code.to_string())).copied().unwrap_or(0)
    }

    pub fn running_for_tenant(&self, tenant: &str) -> u32 {
        self.running_per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// Ready-queue depth per (tenant, priority), for metrics.
    pub fn queue_depths(&self) -> Vec<(String, u8, u64)> {
        let mut out = Vec::new();
        for (tenant, q) in &self.ready {
            for (p, level) in q.by_priority.iter().enumerate() {
                let n: usize = level.values().map(BTreeSet::len).sum();
                out.push((tenant.clone(), p as u8, n as u64));
            }
        }
        out
    }

    pub fn canonical(&self) -> Canonical {
        let mut ready = BTreeSet::new();
        for (tenant, q) in &self.ready {
            for (p, level) in q.by_priority.iter().enumerate() {
                for (class, ids) in level {
                    for id in ids {
                        ready.insert((tenant.clone(), p as u8, self.class(*class).clone(), *id));
                    }
                }
            }
        }
        Canonical {
            ready,
            delayed: self.delayed.clone(),
            running: self.running.clone(),
            running_per_code: self.running_per_code.clone(),
            running_per_tenant: self.running_per_tenant.clone(),
            waiting_per_tenant: self.waiting_per_tenant.clone(),
            finished: self.finished.clone(),
            idem_expiry: self.idem_expiry.clone(),
            state_counts: self.state_counts,
            by_tenant: self.by_tenant.clone(),
            groups: self.groups.clone(),
        }
    }
}
