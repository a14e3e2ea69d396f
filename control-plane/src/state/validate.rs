//! Input limits and the checks that enforce them. The API edge runs these before
//! proposing, so bad input becomes `InvalidArgument` naming the field and the limit; `apply`
//! runs them again, so a command that slipped past changes nothing.

use super::command::{CodeSpec, NewTask};
use super::error::StateError;
use super::model::{AgentAttrs, Placement, TenantLimits};
use super::retry::{MAX_BACKOFF_MAX_MS, MAX_RETRY_DELAY_MS, RetryOverride};

pub const MAX_BATCH_TASKS: usize = 1_000;
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_IMAGE_BYTES: usize = 512;
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Hard ceiling on one payload, whatever a tenant's limit says.
pub const MAX_PAYLOAD_BYTES: u64 = 1024 * 1024;
/// Ceiling on the payload bytes of one queue call (one Raft command, which must fit an
/// entry of [`crate::raft::batcher::MAX_ENTRY_BYTES`]).
pub const MAX_BATCH_PAYLOAD_BYTES: u64 = 1024 * 1024;
pub const MAX_PRIORITY: u8 = 2;
pub const MAX_DELAY_MS: u64 = 30 * 24 * 3600 * 1000;
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
pub const MAX_RETRIES: u32 = 100;
pub const MAX_LABELS: usize = 32;
/// A label key: 1..=63 bytes of `[A-Za-z0-9._/-]`, starting and ending alphanumeric.
pub const MAX_LABEL_KEY_BYTES: usize = 63;
/// A label value: 0..=256 bytes of printable ASCII (space to `~`).
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// All keys and values of one label map together.
pub const MAX_LABELS_TOTAL_BYTES: usize = 4096;
/// An environment variable name of a code.
pub const MAX_ENV_KEY_BYTES: usize = 128;
/// Environment names the agent sets itself start with this (as well as the names in
/// [`drover_proto::TASK_ENV`]); a code may not set them.
pub const RESERVED_ENV_PREFIX: &str = "DROVER_";
pub const MAX_ENV_VARS: usize = 128;
pub const MAX_COMMAND_ARGS: usize = 128;
pub const MAX_VALUE_BYTES: usize = 4096;
/// Absolute bounds on what one task may ask for, whatever the ceilings: 1 TiB of memory,
/// 1,024 CPUs, and the kernel's largest pid_max (`PID_MAX_LIMIT`).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
pub const MAX_CPU_MILLIS: u32 = 1_024_000;
pub const MAX_PIDS: u32 = 4_194_304;
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

pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), StateError> {
    if value.len() > max {
        return Err(StateError::invalid(field, format!("{} bytes is over the limit of {max}", value.len())));
    }
    Ok(())
}

/// A label map (an agent's attributes or a task's placement constraint): count, total
/// size, and each key and value ([`MAX_LABEL_KEY_BYTES`], [`MAX_LABEL_VALUE_BYTES`]).
pub fn labels(field: &str, m: &std::collections::BTreeMap<String, String>) -> Result<(), StateError> {
    if m.len() > MAX_LABELS {
        return Err(StateError::invalid(field, format!("{} entries is over the limit of {MAX_LABELS}", m.len())));
    }
    let mut total = 0usize;
    for (k, v) in m {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY_BYTES
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-'))
            && k.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && k.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric);
        if !key_ok {
            return Err(StateError::invalid(
                format!("{field}[{}]", printable(k)),
                format!(
                    "a label key is 1..={MAX_LABEL_KEY_BYTES} bytes of A-Z a-z 0-9 . _ / -, \
                     starting and ending with a letter or digit"
                ),
            ));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES || !v.bytes().all(|c| (b' '..=b'~').contains(&c)) {
            return Err(StateError::invalid(
                format!("{field}[{k}]"),
                format!(
                    "a label value is 0..={MAX_LABEL_VALUE_BYTES} bytes of printable ASCII; this one is {} bytes",
                    v.len()
                ),
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_LABELS_TOTAL_BYTES {
        return Err(StateError::invalid(
            field,
            format!("{total} bytes of keys and values is over the limit of {MAX_LABELS_TOTAL_BYTES}"),
        ));
    }
    Ok(())
}

/// A field name fit for an error message: at most 64 characters, control characters
/// escaped (the offending key itself may be megabytes of anything).
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// A code's environment: count; names non-empty, at most [`MAX_ENV_KEY_BYTES`], without
/// `=` or NUL, and not one the agent sets ([`drover_proto::TASK_ENV`],
/// [`RESERVED_ENV_PREFIX`]`*`); values at most [`MAX_VALUE_BYTES`], without NUL.
pub fn env(field: &str, m: &std::collections::BTreeMap<String, String>) -> Result<(), StateError> {
    if m.len() > MAX_ENV_VARS {
        return Err(StateError::invalid(field, format!("{} entries is over the limit of {MAX_ENV_VARS}", m.len())));
    }
    for (k, v) in m {
        let at = || format!("{field}[{}]", printable(k));
        if k.is_empty() {
            return Err(StateError::invalid(field, "names must not be empty"));
        }
        if k.len() > MAX_ENV_KEY_BYTES {
            return Err(StateError::invalid(
                at(),
                format!("the name is {} bytes, over the limit of {MAX_ENV_KEY_BYTES}", k.len()),
            ));
        }
        if k.contains(['=', '\0']) {
            return Err(StateError::invalid(at(), "a name must not contain '=' or NUL"));
        }
        if drover_proto::TASK_ENV.contains(&k.as_str()) || k.starts_with(RESERVED_ENV_PREFIX) {
            return Err(StateError::invalid(
                at(),
                format!(
                    "{k} is reserved: the agent sets {} and {RESERVED_ENV_PREFIX}*",
                    drover_proto::TASK_ENV.join(", ")
                ),
            ));
        }
        if v.len() > MAX_VALUE_BYTES {
            return Err(StateError::invalid(
                at(),
                format!("the value is {} bytes, over the limit of {MAX_VALUE_BYTES}", v.len()),
            ));
        }
        if v.contains('\0') {
            return Err(StateError::invalid(at(), "a value must not contain NUL"));
        }
    }
    Ok(())
}

/// An agent's attributes: names at most [`MAX_NAME_BYTES`], labels as [`labels`].
pub fn agent_attrs(field: &str, a: &AgentAttrs) -> Result<(), StateError> {
    for (name, v) in [
        ("region", &a.region),
        ("cluster", &a.cluster),
        ("vpc", &a.vpc),
        ("ip_pool", &a.ip_pool),
        ("egress_ip", &a.egress_ip),
    ] {
        bounded(&format!("{field}.{name}"), v, MAX_NAME_BYTES)?;
    }
    labels(&format!("{field}.labels"), &a.labels)
}

pub fn placement(field: &str, p: &Placement) -> Result<(), StateError> {
    bounded(&format!("{field}.cluster"), &p.cluster, MAX_NAME_BYTES)?;
    bounded(&format!("{field}.region"), &p.region, MAX_NAME_BYTES)?;
    labels(&format!("{field}.labels"), &p.labels)
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

/// Memory, CPU and pids within the absolute bounds, each named by its field.
fn resources(memory: (&str, u64), cpu: (&str, u32), pids: (&str, u32)) -> Result<(), StateError> {
    let over = |(field, got): (&str, u64), max: u64| {
        if got > max {
            return Err(StateError::invalid(field, format!("{got} is over the limit of {max}")));
        }
        Ok(())
    };
    over(memory, MAX_MEMORY_BYTES)?;
    over((cpu.0, cpu.1.into()), MAX_CPU_MILLIS.into())?;
    over((pids.0, pids.1.into()), MAX_PIDS.into())
}

/// Ceilings within the absolute bounds.
pub fn ceilings(c: &super::fleet::Ceilings) -> Result<(), StateError> {
    resources(
        ("ceilings.max_memory_bytes", c.max_memory_bytes),
        ("ceilings.max_cpu_millis", c.max_cpu_millis),
        ("ceilings.max_pids", c.max_pids),
    )
}

pub fn code_spec(s: &CodeSpec) -> Result<(), StateError> {
    name("name", &s.name)?;
    bounded("image", &s.image, MAX_IMAGE_BYTES)?;
    super::image_ref::check(&s.image).map_err(|why| StateError::invalid("image", why))?;
    if s.command.len() > MAX_COMMAND_ARGS {
        return Err(StateError::invalid(
            "command",
            format!("{} arguments is over the limit of {MAX_COMMAND_ARGS}", s.command.len()),
        ));
    }
    for a in &s.command {
        bounded("command", a, MAX_VALUE_BYTES)?;
    }
    env("env", &s.env)?;
    if s.limits.timeout_ms > MAX_TIMEOUT_MS {
        return Err(StateError::invalid("limits.timeout_ms", format!("over the limit of {MAX_TIMEOUT_MS}")));
    }
    resources(
        ("limits.memory_bytes", s.limits.memory_bytes),
        ("limits.cpu_millis", s.limits.cpu_millis),
        ("limits.pids", s.limits.pids),
    )?;
    if s.default_retries > MAX_RETRIES {
        return Err(StateError::invalid(
            "default_retries",
            format!("{} is over the limit of {MAX_RETRIES}", s.default_retries),
        ));
    }
    retry_override(&|f| f.to_string(), &s.retry)?;
    placement("placement", &s.placement)
}

/// Checks retry settings (see [`super::retry`] for the bounds); `f` names the field.
pub fn retry_override(f: &dyn Fn(&str) -> String, r: &RetryOverride) -> Result<(), StateError> {
    if let Some(d) = r.retry_delay_ms
        && d > MAX_RETRY_DELAY_MS
    {
        return Err(StateError::invalid(f("retry_delay_ms"), format!("{d} is over the limit of {MAX_RETRY_DELAY_MS}")));
    }
    if let Some(m) = r.backoff_max_ms
        && m > MAX_BACKOFF_MAX_MS
    {
        return Err(StateError::invalid(
            f("retry_backoff_max_ms"),
            format!("{m} is over the limit of {MAX_BACKOFF_MAX_MS}"),
        ));
    }
    if let (Some(d), Some(m)) = (r.retry_delay_ms, r.backoff_max_ms)
        && m < d
    {
        return Err(StateError::invalid(
            f("retry_backoff_max_ms"),
            format!("{m} is below retry_delay_ms ({d}): the cap must be at least the first delay"),
        ));
    }
    if let Some(on) = r.retry_on
        && !on.is_valid()
    {
        return Err(StateError::invalid(f("retry_on"), "names a reason outside the failure taxonomy"));
    }
    Ok(())
}

/// Checks one task of a batch (`i` is its position, used in the field name).
pub fn new_task(i: usize, t: &NewTask, limits: &TenantLimits) -> Result<(), StateError> {
    new_task_at(&format!("tasks[{i}]"), t, limits)
}

/// [`new_task`] for a task named `prefix` in error messages (`task` on a schedule).
pub fn new_task_at(prefix: &str, t: &NewTask, limits: &TenantLimits) -> Result<(), StateError> {
    let f = |field: &str| format!("{prefix}.{field}");
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
    retry_override(&f, &t.retry)?;
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
    fn labels_are_bounded_in_length_charset_and_total() {
        let m = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert!(labels("l", &m(&[("gpu", "1".into()), ("drover.io/zone", "eu-west a".into())])).is_ok());
        let e = labels("attributes.labels", &m(&[("big", "x".repeat(5 << 20))])).unwrap_err().to_string();
        assert!(e.contains("attributes.labels[big]") && e.contains("0..=256 bytes"), "{e}");
        let e = labels("l", &m(&[("a\nb", String::new())])).unwrap_err().to_string();
        assert!(e.contains("l[a\\nb]") && e.contains("label key"), "{e}");
        assert!(labels("l", &m(&[("", String::new())])).is_err());
        assert!(labels("l", &m(&[("-a", String::new())])).is_err());
        assert!(labels("l", &m(&[(&"k".repeat(64), String::new())])).is_err());
        assert!(labels("l", &m(&[("k", "\u{0}".into())])).is_err());
        let many: Vec<(String, String)> = (0..20).map(|i| (format!("k{i}"), "v".repeat(250))).collect();
        let e = labels("l", &many.into_iter().collect()).unwrap_err().to_string();
        assert!(e.contains("over the limit of 4096"), "{e}");
    }

    #[test]
    fn env_names_and_values() {
        let m = |k: &str, v: &str| [(k.to_string(), v.to_string())].into_iter().collect();
        assert!(env("env", &m("MINE", "a=b c")).is_ok());
        for (k, v, why) in [
            ("", "x", "must not be empty"),
            ("A=B", "x", "'=' or NUL"),
            ("A\0", "x", "'=' or NUL"),
            ("TASK_ID", "x", "reserved"),
            ("PAYLOAD_FILE", "x", "reserved"),
            ("DROVER_ANYTHING", "x", "reserved"),
            ("OK", "a\0b", "NUL"),
        ] {
            let e = env("env", &m(k, v)).unwrap_err().to_string();
            assert!(e.contains(why) && e.starts_with("invalid env"), "{k:?}={v:?}: {e}");
        }
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
            retry: RetryOverride::default(),
            placement: None,
        };
        let e = new_task(3, &t, &DEFAULT_TENANT_LIMITS).unwrap_err();
        assert_eq!(e.to_string(), "invalid tasks[3].priority: 7 is out of range 0..=2");
        let big = NewTask { priority: 0, payload: vec![0; 300 * 1024], ..t };
        let e = new_task(0, &big, &DEFAULT_TENANT_LIMITS).unwrap_err();
        assert!(e.to_string().contains("tasks[0].payload"), "{e}");
        assert!(e.to_string().contains("262144"), "{e}");
    }

    #[test]
    fn retry_fields_named_with_their_limits() {
        let f = |x: &str| format!("tasks[1].{x}");
        let cases = [
            (
                RetryOverride { retry_delay_ms: Some(MAX_RETRY_DELAY_MS + 1), ..Default::default() },
                "tasks[1].retry_delay_ms",
                "3600000",
            ),
            (
                RetryOverride { backoff_max_ms: Some(MAX_BACKOFF_MAX_MS + 1), ..Default::default() },
                "tasks[1].retry_backoff_max_ms",
                "86400000",
            ),
            (
                RetryOverride { retry_delay_ms: Some(2_000), backoff_max_ms: Some(1_000), ..Default::default() },
                "tasks[1].retry_backoff_max_ms",
                "below retry_delay_ms",
            ),
        ];
        for (r, field, limit) in cases {
            let e = retry_override(&f, &r).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(limit), "{r:?}: {e}");
        }
        let ok = RetryOverride {
            retry_delay_ms: Some(MAX_RETRY_DELAY_MS),
            backoff_max_ms: Some(MAX_BACKOFF_MAX_MS),
            retry_on: None,
        };
        assert!(retry_override(&f, &ok).is_ok());
        let bad_on = super::super::retry::RetryOn::from_bits(0x80);
        let e = retry_override(&f, &RetryOverride { retry_on: Some(bad_on), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("tasks[1].retry_on"), "{e}");
    }
}
