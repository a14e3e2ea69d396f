//! Input limits and the checks that enforce them. The API edge runs these before
//! proposing, so bad input becomes `InvalidArgument` naming the field and the limit; `apply`
//! runs them again, so a command that slipped past changes nothing.

use super::command::{CodeSpec, NewTask};
use super::error::StateError;
use super::model::{Placement, TenantLimits};

pub const MAX_BATCH_TASKS: usize = 1_000;
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_IMAGE_BYTES: usize = 512;
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Hard ceiling on one payload, whatever a tenant's limit says.
pub const MAX_PAYLOAD_BYTES: u64 = 1024 * 1024;
/// Ceiling on the payload bytes of one queue call (one Raft entry).
pub const MAX_BATCH_PAYLOAD_BYTES: u64 = 8 * 1024 * 1024;
pub const MAX_PRIORITY: u8 = 2;
pub const MAX_DELAY_MS: u64 = 30 * 24 * 3600 * 1000;
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
pub const MAX_RETRIES: u32 = 100;
pub const MAX_LABELS: usize = 32;
pub const MAX_ENV_VARS: usize = 128;
pub const MAX_COMMAND_ARGS: usize = 128;
pub const MAX_VALUE_BYTES: usize = 4096;
pub const MAX_LEASE_REQUESTS: usize = 1_000;
pub const MAX_TASKS_PER_LEASE_REQUEST: u32 = 256;
pub const MAX_COMPLETIONS: usize = 1_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 3600 * 1000;

pub const DEFAULT_TENANT_LIMITS: TenantLimits =
    TenantLimits { max_queued_tasks: 1_000_000, max_concurrency: 0, max_payload_bytes: 256 * 1024 };

/// A name: 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn name(field: &str, value: &str) -> Result<(), StateError> {
    if value.is_empty() {
        return Err(StateError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(StateError::invalid(field, format!("{} bytes is over the limit of {MAX_NAME_BYTES}", value.len())));
    }
    if value.starts_with(['.', '-']) {
        return Err(StateError::invalid(field, "must not start with '.' or '-'"));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(StateError::invalid(field, format!("character {c:?} is not allowed (use A-Z a-z 0-9 . _ -)")));
    }
    Ok(())
}

fn bounded(field: &str, value: &str, max: usize) -> Result<(), StateError> {
    if value.len() > max {
        return Err(StateError::invalid(field, format!("{} bytes is over the limit of {max}", value.len())));
    }
    Ok(())
}

fn map(field: &str, m: &std::collections::BTreeMap<String, String>, max_len: usize) -> Result<(), StateError> {
    if m.len() > max_len {
        return Err(StateError::invalid(field, format!("{} entries is over the limit of {max_len}", m.len())));
    }
    for (k, v) in m {
        if k.is_empty() {
            return Err(StateError::invalid(field, "keys must not be empty"));
        }
        bounded(&format!("{field}[{k}]"), k, MAX_NAME_BYTES)?;
        bounded(&format!("{field}[{k}]"), v, MAX_VALUE_BYTES)?;
    }
    Ok(())
}

pub fn placement(field: &str, p: &Placement) -> Result<(), StateError> {
    bounded(&format!("{field}.cluster"), &p.cluster, MAX_NAME_BYTES)?;
    bounded(&format!("{field}.region"), &p.region, MAX_NAME_BYTES)?;
    map(&format!("{field}.labels"), &p.labels, MAX_LABELS)
}

pub const MAX_CIDRS: usize = 64;

/// Source CIDRs (`10.0.0.0/8`, `fd00::/8`, or a single address `192.0.2.7/32`).
pub fn cidrs(field: &str, list: &[String]) -> Result<(), StateError> {
    if list.len() > MAX_CIDRS {
        return Err(StateError::invalid(field, format!("{} entries is over the limit of {MAX_CIDRS}", list.len())));
    }
    for (i, c) in list.iter().enumerate() {
        if c.parse::<ipnet::IpNet>().is_err() {
            return Err(StateError::invalid(format!("{field}[{i}]"), format!("{c:?} is not a CIDR like 10.0.0.0/8")));
        }
    }
    Ok(())
}

pub fn tenant_limits(l: &TenantLimits) -> Result<(), StateError> {
    if l.max_payload_bytes > MAX_PAYLOAD_BYTES {
        return Err(StateError::invalid(
            "limits.max_payload_bytes",
            format!("{} is over the server ceiling of {MAX_PAYLOAD_BYTES}", l.max_payload_bytes),
        ));
    }
    Ok(())
}

pub fn code_spec(s: &CodeSpec) -> Result<(), StateError> {
    name("name", &s.name)?;
    if s.image.is_empty() {
        return Err(StateError::invalid("image", "must not be empty"));
    }
    bounded("image", &s.image, MAX_IMAGE_BYTES)?;
    if s.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StateError::invalid("image", "must not contain whitespace"));
    }
    if s.command.len() > MAX_COMMAND_ARGS {
        return Err(StateError::invalid(
            "command",
            format!("{} arguments is over the limit of {MAX_COMMAND_ARGS}", s.command.len()),
        ));
    }
    for a in &s.command {
        bounded("command", a, MAX_VALUE_BYTES)?;
    }
    map("env", &s.env, MAX_ENV_VARS)?;
    if s.limits.timeout_ms > MAX_TIMEOUT_MS {
        return Err(StateError::invalid("limits.timeout_ms", format!("over the limit of {MAX_TIMEOUT_MS}")));
    }
    if s.default_retries > MAX_RETRIES {
        return Err(StateError::invalid(
            "default_retries",
            format!("{} is over the limit of {MAX_RETRIES}", s.default_retries),
        ));
    }
    placement("placement", &s.placement)
}

/// Checks one task of a batch (`i` is its position, used in the field name).
pub fn new_task(i: usize, t: &NewTask, limits: &TenantLimits) -> Result<(), StateError> {
    let f = |field: &str| format!("tasks[{i}].{field}");
    name(&f("code"), &t.code)?;
    let max_payload = limits.max_payload_bytes.min(MAX_PAYLOAD_BYTES);
    if t.payload.len() as u64 > max_payload {
        return Err(StateError::invalid(
            f("payload"),
            format!("{} bytes is over the limit of {max_payload}", t.payload.len()),
        ));
    }
    if t.priority > MAX_PRIORITY {
        return Err(StateError::invalid(f("priority"), format!("{} is out of range 0..={MAX_PRIORITY}", t.priority)));
    }
    if t.delay_ms > MAX_DELAY_MS {
        return Err(StateError::invalid(f("delay_ms"), format!("{} is over the limit of {MAX_DELAY_MS}", t.delay_ms)));
    }
    if t.timeout_ms > MAX_TIMEOUT_MS {
        return Err(StateError::invalid(
            f("timeout_ms"),
            format!("{} is over the limit of {MAX_TIMEOUT_MS}", t.timeout_ms),
        ));
    }
    if let Some(r) = t.retries
        && r > MAX_RETRIES
    {
        return Err(StateError::invalid(f("retries"), format!("{r} is over the limit of {MAX_RETRIES}")));
    }
    if let Some(p) = &t.placement {
        placement(&f("placement"), p)?;
    }
    Ok(())
}

/// Checks a whole queue batch: its length, its total payload and each task.
pub fn queue_batch(tasks: &[NewTask], idempotency_key: Option<&str>, limits: &TenantLimits) -> Result<(), StateError> {
    if tasks.is_empty() {
        return Err(StateError::invalid("tasks", "must hold at least one task"));
    }
    if tasks.len() > MAX_BATCH_TASKS {
        return Err(StateError::invalid(
            "tasks",
            format!("{} tasks is over the batch limit of {MAX_BATCH_TASKS}", tasks.len()),
        ));
    }
    if let Some(k) = idempotency_key {
        bounded("idempotency_key", k, MAX_IDEMPOTENCY_KEY_BYTES)?;
    }
    let total: u64 = tasks.iter().map(|t| t.payload.len() as u64).sum();
    if total > MAX_BATCH_PAYLOAD_BYTES {
        return Err(StateError::invalid(
            "tasks",
            format!("{total} payload bytes in one call is over the limit of {MAX_BATCH_PAYLOAD_BYTES}"),
        ));
    }
    for (i, t) in tasks.iter().enumerate() {
        new_task(i, t, limits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("name", "hello-world_1.2").is_ok());
        let e = name("name", "").unwrap_err();
        assert_eq!(e.to_string(), "invalid name: must not be empty");
        assert!(name("name", "a b").is_err());
        assert!(name("name", "-a").is_err());
        assert!(name("name", &"x".repeat(129)).unwrap_err().to_string().contains("limit of 128"));
    }

    #[test]
    fn task_fields_named() {
        let t = NewTask {
            code: "c".into(),
            payload: vec![],
            priority: 7,
            delay_ms: 0,
            timeout_ms: 0,
            retries: None,
            placement: None,
        };
        let e = new_task(3, &t, &DEFAULT_TENANT_LIMITS).unwrap_err();
        assert_eq!(e.to_string(), "invalid tasks[3].priority: 7 is out of range 0..=2");
        let big = NewTask { priority: 0, payload: vec![0; 300 * 1024], ..t };
        let e = new_task(0, &big, &DEFAULT_TENANT_LIMITS).unwrap_err();
        assert!(e.to_string().contains("tasks[0].payload"), "{e}");
        assert!(e.to_string().contains("262144"), "{e}");
    }
}
