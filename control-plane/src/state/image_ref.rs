//! Container image references, checked against the grammar of the registry reference
//! (`distribution/reference`, `reference.go`), the one `docker pull` applies:
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] remote-name          (at most 255 bytes)
//! domain           := host [ ':' port-number ]
//! host             := domain-name | IPv4address | '[' IPv6address ']'
//! domain-name      := domain-component ['.' domain-component]*
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! port-number      := /[0-9]+/
//! remote-name      := path-component ['/' path-component]*
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" hex
//! algorithm        := component [ /[+._-]/ component ]*,  component := /[A-Za-z][A-Za-z0-9]*/
//! hex              := /[0-9a-fA-F]{32,}/   (sha256: exactly 64, sha512: exactly 128, lower case)
//! ```
//!
//! The first `/`-separated component is a domain only when more follow (as in the
//! grammar, where the domain is followed by `/`). So `../../x`, `Busybox:1` (upper
//! case in a path component) and `--privileged` are refused. Pure: no lookups.

/// Longest name part (without tag and digest), as in `reference.NameTotalLengthMax`.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest tag: one leading word character and 127 more.
pub const MAX_TAG_BYTES: usize = 128;

/// Why a reference does not parse; the message names the part at fault.
pub fn check(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("must not be empty".into());
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    // A tag is a ':' after the last '/': a ':' before it belongs to the domain's port.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        check_tag(t)?;
    }
    check_name(name)
}

/// The registry a reference pulls from, as the docker CLI reads it: the first component
/// when more follow and it has a `.` or a `:` or is `localhost`; `docker.io` otherwise.
pub fn registry(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Whether `host` can name a registry (`host[:port]`).
pub fn is_registry(host: &str) -> bool {
    !host.is_empty() && host.len() <= MAX_NAME_BYTES && is_domain(host)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("the repository name is {} bytes, over the limit of {MAX_NAME_BYTES}", name.len()));
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 && is_domain(parts[0]) {
        parts.remove(0);
    }
    for p in parts {
        if !is_path_component(p) {
            return Err(format!(
                "{p:?} is not a valid repository path component (lower-case letters and digits, \
                 separated by '.', '_', '__' or dashes)"
            ));
        }
    }
    Ok(())
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_path_component(p: &str) -> bool {
    let b = p.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else { return false };
    if !is_alnum_lower(first) || !is_alnum_lower(last) {
        return false;
    }
    // Between alphanumeric runs: exactly one of "_", ".", "__", or one or more "-".
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        let ok = matches!(sep, "_" | "." | "__") || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else { return false };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
}

fn is_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        // [IPv6] or [IPv6]:port
        let Some((v6, after)) = rest.split_once(']') else { return false };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            a => match a.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    host.is_none_or(|h| h.split('.').all(is_domain_component))
}

fn check_tag(t: &str) -> Result<(), String> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = t.as_bytes();
    let ok = b.first().is_some_and(|&c| word(c))
        && b.len() <= MAX_TAG_BYTES
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-');
    if !ok {
        return Err(format!(
            "tag {t:?} is not valid (1..={MAX_TAG_BYTES} of A-Z a-z 0-9 _ . -, not starting with . or -)"
        ));
    }
    Ok(())
}

fn check_digest(d: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("digest {d:?} is not valid: {why}"));
    let Some((algo, hex)) = d.split_once(':') else { return bad("expected ALGORITHM:HEX") };
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        b.first().is_some_and(|f| f.is_ascii_alphabetic()) && b.iter().all(|x| x.is_ascii_alphanumeric())
    };
    if !algo.split(['+', '.', '_', '-']).all(component_ok) {
        return bad("the algorithm is letters and digits, starting with a letter");
    }
    if hex.len() < 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return bad("the value is at least 32 hexadecimal digits");
    }
    let exact = match algo {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    if let Some(n) = exact
        && (hex.len() != n || hex.bytes().any(|c| c.is_ascii_uppercase()))
    {
        return bad(&format!("{algo} takes exactly {n} lower-case hexadecimal digits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check, is_registry, registry};

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_what_docker_pull_accepts() {
        for r in [
            "busybox",
            "busybox:1",
            "library/busybox:1.36.1-musl",
            "drover-test/busybox:1",
            "docker.io/library/alpine:3.20",
            "ghcr.io/acme/app_x/worker__2:v1.2_rc-3",
            "localhost:5000/app",
            "localhost:5000/app:latest",
            "registry.example.com:443/a/b/c",
            "Registry.Example.com/app",
            "192.168.1.10:5000/team/app:1",
            "[::1]:5000/app",
            "[fd00::1]/app",
            "a---b/c.d/e__f",
            "localhost:5000",
            &format!("busybox@{SHA}"),
            &format!("ghcr.io/acme/app:1@{SHA}"),
            "app@sha384+b64:0123456789abcdef0123456789abcdef",
            &format!("x:{}", "a".repeat(128)),
        ] {
            assert_eq!(check(r), Ok(()), "{r}");
        }
    }

    #[test]
    fn the_registry_is_read_as_the_docker_cli_reads_it() {
        assert_eq!(registry("busybox"), "docker.io");
        assert_eq!(registry("library/busybox:1"), "docker.io");
        assert_eq!(registry("127.0.0.1:5000/private/app:1"), "127.0.0.1:5000");
        assert_eq!(registry("localhost/app"), "localhost");
        assert_eq!(registry("ghcr.io/acme/app@sha256:0"), "ghcr.io");
        assert!(is_registry("127.0.0.1:5000") && is_registry("ghcr.io") && !is_registry("a/b") && !is_registry(""));
    }

    #[test]
    fn refuses_what_it_refuses() {
        for (r, why) in [
            ("", "empty"),
            ("../../x", "path component"),
            ("Busybox:1", "path component"),
            ("--privileged", "path component"),
            ("-x", "path component"),
            ("a/../b", "path component"),
            ("a//b", "path component"),
            ("app/", "path component"),
            ("/app", "path component"),
            ("a_-b", "path component"),
            ("a___b", "path component"),
            ("a.-b", "path component"),
            ("app:", "tag"),
            ("app:.x", "tag"),
            ("app:-x", "tag"),
            ("app:a/b", "path component"),
            ("app:a b", "tag"),
            ("host:port/app", "path component"),
            ("-host.com/app", "path component"),
            ("[zz]:5000/app", "path component"),
            ("app@sha256:abc", "digest"),
            ("app@sha256:", "digest"),
            ("app@", "digest"),
            ("app@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", "digest"),
            ("app@1sha:0123456789abcdef0123456789abcdef", "digest"),
            ("app@@sha256:x", "digest"),
        ] {
            let e = check(r).expect_err(r);
            assert!(e.contains(why), "{r}: {e}");
        }
        let long = format!("x:{}", "a".repeat(129));
        assert!(check(&long).expect_err("long tag").contains("tag"));
        let long_name = format!("a/{}", "b".repeat(254));
        assert!(check(&long_name).expect_err("long name").contains("over the limit of 255"));
    }
}
