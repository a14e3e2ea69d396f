//! The state machine's invariants as code, checked after every apply in tests:
//!
//! * the in-memory indexes equal indexes rebuilt from the tables (so every task is in
//!   exactly the index of its state, counted once);
//! * a running task has exactly one lease, and a task that is not running has none;
//! * every task has a payload of the length its record says; no group is left with all
//!   its tasks purged, and no grouped or purged row is outside a group;
//! * log metadata and chunks belong to existing tasks, and a task's chunks are numbered
//!   exactly `0..meta.chunks`;
//! * the schedule indexes equal indexes rebuilt from the `s/` table, and a schedule's
//!   counters only grow (checked by the tests that drive them).
//! * every webhook belongs to an existing code, and the in-memory webhooks equal the
//!   `w/` rows.

use super::indexes::Indexes;
use super::keys;
use super::kv::KvRead;
use super::logs::{self, LogMeta};
use super::machine::StateMachine;
use super::model::TaskState;

/// Every row under `prefix`, decoded and keyed by `key_of(row key, value)`; a row that does
/// not decode is a problem.
fn rows<K: Ord, T: serde::de::DeserializeOwned>(
    kv: &dyn KvRead,
    prefix: &[u8],
    problems: &mut Vec<String>,
    key_of: impl Fn(&[u8], &T) -> K,
) -> Result<std::collections::BTreeMap<K, T>, String> {
    let mut out = std::collections::BTreeMap::new();
    kv.scan(prefix, prefix, &mut |k, v| {
        match keys::decode::<T>(v) {
            Ok(t) => {
                out.insert(key_of(k, &t), t);
            }
            Err(e) => problems.push(e.to_string()),
        }
        true
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}

pub fn check(sm: &StateMachine, kv: &dyn KvRead) -> Result<(), String> {
    let mut rebuilt = Indexes::default();
    let mut problems = Vec::new();
    let mut tasks = Vec::new();
    rebuilt.groups = super::groups::for_each_task(kv, &mut |task, payload| {
        if payload.len() as u64 != task.payload_bytes {
            problems.push(format!(
                "task {} has {} payload bytes, record says {}",
                task.id,
                payload.len(),
                task.payload_bytes
            ));
        }
        tasks.push(task);
    })
    .map_err(|e| e.to_string())?;
    if let Some(g) = rebuilt.groups.first_emptied() {
        problems.push(format!("group {g} is left with every task purged"));
    }
    kv.scan(keys::TASK, keys::TASK, &mut |k, v| {
        let id = keys::trailing_id(k).unwrap_or(0);
        if keys::row_kind(v) != keys::RowKind::Inline && rebuilt.groups.group_of(id).is_none() {
            problems.push(format!("task {id} has a grouped or purged row but no group"));
        }
        true
    })
    .map_err(|e| e.to_string())?;
    for t in &tasks {
        rebuilt.insert(t);
        if (t.state == TaskState::Running) != t.lease.is_some() {
            problems.push(format!("task {} is {:?} with lease {:?}", t.id, t.state, t.lease));
        }
        // Retries only count down; the attempt log is bounded and never runs ahead of the
        // grants; a finished task other than `complete` names why.
        if t.retries_left > t.max_retries || t.attempt_log.len() > super::retry::MAX_ATTEMPTS_KEPT {
            problems.push(format!(
                "task {} has {} of {} retries left and {} attempts logged",
                t.id,
                t.retries_left,
                t.max_retries,
                t.attempt_log.len()
            ));
        }
        if t.attempt_log.last().is_some_and(|a| a.number > t.attempts) {
            problems.push(format!("task {} logs an attempt past its {} grants", t.id, t.attempts));
        }
        if t.state.is_finished() && t.state != TaskState::Complete && t.reason.is_none() {
            problems.push(format!("task {} is {:?} without a reason", t.id, t.state));
        }
    }
    let ids: std::collections::BTreeSet<u64> = tasks.iter().map(|t| t.id).collect();
    let mut metas = std::collections::BTreeMap::new();
    kv.scan(logs::META, logs::META, &mut |k, v| {
        match (keys::trailing_id(k), keys::decode::<LogMeta>(v)) {
            (Some(id), Ok(m)) => {
                metas.insert(id, m);
            }
            _ => problems.push(format!("malformed log meta {k:?}")),
        }
        true
    })
    .map_err(|e| e.to_string())?;
    let mut chunks: std::collections::BTreeMap<u64, Vec<u32>> = std::collections::BTreeMap::new();
    kv.scan(logs::CHUNK, logs::CHUNK, &mut |k, _| {
        let rest = &k[logs::CHUNK.len()..];
        match (rest.get(..8).and_then(|b| b.try_into().ok()), rest.get(8..).and_then(|b| b.try_into().ok())) {
            (Some(id), Some(i)) => chunks.entry(u64::from_be_bytes(id)).or_default().push(u32::from_be_bytes(i)),
            _ => problems.push(format!("malformed log key {k:?}")),
        }
        true
    })
    .map_err(|e| e.to_string())?;
    for (id, m) in &metas {
        if !ids.contains(id) {
            problems.push(format!("log meta of missing task {id}"));
        }
        let want: Vec<u32> = (0..m.chunks).collect();
        if chunks.get(id).map(Vec::as_slice).unwrap_or_default() != want.as_slice() {
            problems.push(format!("task {id} log chunks {:?} do not match meta {m:?}", chunks.get(id)));
        }
    }
    if let Some(id) = chunks.keys().find(|id| !metas.contains_key(id)) {
        problems.push(format!("log chunks of task {id} have no meta"));
    }
    let mut webhooks = std::collections::BTreeMap::new();
    kv.scan(keys::WEBHOOK, keys::WEBHOOK, &mut |_, v| {
        match keys::decode::<super::model::Webhook>(v) {
            Ok(w) => {
                webhooks.insert((w.tenant.clone(), w.code.clone()), w);
            }
            Err(e) => problems.push(e.to_string()),
        }
        true
    })
    .map_err(|e| e.to_string())?;
    if webhooks != sm.webhooks {
        problems.push(format!("webhook rows {:?} differ from memory {:?}", webhooks.keys(), sm.webhooks.keys()));
    }
    if let Some(k) = webhooks.keys().find(|k| !sm.codes.contains_key(*k)) {
        problems.push(format!("webhook of missing code {k:?}"));
    }
    let mut gone = std::collections::BTreeMap::new();
    kv.scan(keys::AGENT_GONE, keys::AGENT_GONE, &mut |_, v| {
        match keys::decode::<super::presence::AgentGone>(v) {
            Ok(g) => {
                gone.insert(g.id, g.since_ms);
            }
            Err(e) => problems.push(e.to_string()),
        }
        true
    })
    .map_err(|e| e.to_string())?;
    if gone != sm.agents_gone {
        problems.push(format!("agent gone rows {gone:?} differ from memory {:?}", sm.agents_gone));
    }
    if let Some(id) = gone.keys().find(|id| !sm.agents.contains_key(*id)) {
        problems.push(format!("gone mark of unknown agent {id:?}"));
    }
    let clusters = rows(kv, keys::CLUSTER, &mut problems, |_, c: &super::fleet::Cluster| c.name.clone())?;
    if clusters != sm.clusters {
        problems.push(format!("cluster rows {:?} differ from memory {:?}", clusters.keys(), sm.clusters.keys()));
    }
    let regs = rows(kv, keys::REGISTRATION, &mut problems, |_, r: &super::fleet::AgentRegistration| r.id.clone())?;
    if regs != sm.registrations {
        problems.push(format!("registration rows {:?} differ from memory {:?}", regs.keys(), sm.registrations.keys()));
    }
    if let Some(r) = regs.values().find(|r| !r.cluster.is_empty() && !clusters.contains_key(&r.cluster)) {
        problems.push(format!("agent {:?} is registered to missing cluster {:?}", r.id, r.cluster));
    }
    let pools = rows(kv, keys::POOL, &mut problems, |_, p: &super::modes::IpPool| p.name.clone())?;
    if pools != sm.pools {
        problems.push(format!("pool rows {:?} differ from memory {:?}", pools.keys(), sm.pools.keys()));
    }
    let modes = rows(kv, keys::TENANT_MODE, &mut problems, |k, _: &super::modes::TenantMode| {
        String::from_utf8_lossy(&k[keys::TENANT_MODE.len()..]).into_owned()
    })?;
    if modes != sm.tenant_modes {
        problems.push(format!("tenant mode rows {modes:?} differ from memory {:?}", sm.tenant_modes));
    }
    let mut pool_users = std::collections::BTreeMap::new();
    for (t, m) in &modes {
        if let super::modes::TenantMode::IpWhitelist { pool } = m {
            if !pools.contains_key(pool) {
                problems.push(format!("tenant {t:?} uses missing pool {pool:?}"));
            }
            if let Some(other) = pool_users.insert(pool.clone(), t.clone()) {
                problems.push(format!("pool {pool:?} is used by tenants {other:?} and {t:?}"));
            }
        }
    }
    for r in regs.values().filter(|r| !r.ip_pool.is_empty()) {
        if !pools.get(&r.ip_pool).is_some_and(|p| p.addresses.contains(&r.egress_ip)) {
            problems.push(format!("agent {:?} is registered with {:?} not in pool {:?}", r.id, r.egress_ip, r.ip_pool));
        }
    }
    let logins = rows(kv, keys::REGISTRY_LOGIN, &mut problems, |_, l: &super::registries::RegistryLogin| {
        (l.tenant.clone(), l.registry.clone())
    })?;
    if logins != sm.registry_logins {
        problems.push(format!("registry login rows {:?} differ from memory", logins.keys()));
    }
    let mut live = sm.idx.canonical();
    let want = rebuilt.canonical();
    // Idempotency expiries are not derived from tasks; compare them separately.
    live.idem_expiry.clear();
    if live != want {
        problems.push(format!("indexes diverge from tables:\n live {live:?}\n want {want:?}"));
    }
    let total: u64 = sm.idx.state_counts.iter().sum();
    if total != tasks.len() as u64 {
        problems.push(format!("state counts sum to {total}, table holds {}", tasks.len()));
    }
    let mut sched = super::schedules::ScheduleIndex::default();
    kv.scan(keys::SCHEDULE, keys::SCHEDULE, &mut |_, v| {
        match keys::decode::<super::schedules::Schedule>(v) {
            Ok(s) => sched.insert(&s),
            Err(e) => problems.push(e.to_string()),
        }
        true
    })
    .map_err(|e| e.to_string())?;
    if (&sched.due, &sched.owed, &sched.by_tenant) != (&sm.sched.due, &sm.sched.owed, &sm.sched.by_tenant) {
        problems.push(format!("schedule indexes diverge from the table:\n live {:?}\n want {sched:?}", sm.sched));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}
