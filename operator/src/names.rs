//! Kubernetes names and label values derived from LogStream names (pure):
//! a LogStream's name may have 253 characters, a Service name or a label
//! value 63, so long names keep a prefix and gain a stable hash.

/// A LogStream's name as a label value: names may have 253 characters,
/// label values 63. Longer names keep a prefix and get a hash (the same
/// name always gives the same value).
pub fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let hash = format!("{:08x}", fnv1a(name.as_bytes()) as u32);
    // Label values must start and end with an alphanumeric character.
    let keep =
        prefix(name, 63 - hash.len() - 1).trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{keep}-{hash}")
}

/// A DNS-1035 label (what Service names must be: ≤ 63 characters, lower-case
/// letters, digits and `-`, starting with a letter) derived from `base` and
/// `suffix`. LogStream names are DNS subdomains, so dots become dashes and a
/// leading digit gets an `ls-` prefix; a name that changed or had to be
/// shortened gains a hash of the original, so two LogStreams never share one.
pub fn object_name(base: &str, suffix: &str) -> String {
    let full = format!("{base}-{suffix}");
    let mut clean: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if !clean.starts_with(|c: char| c.is_ascii_lowercase()) {
        clean.insert_str(0, "ls-");
    }
    if clean == full && full.len() <= 63 {
        return full;
    }
    if clean.len() + 9 <= 63 {
        // Changed but short: keep it readable, the hash keeps it unique.
        let hash = format!("{:08x}", fnv1a(full.as_bytes()) as u32);
        let stem = clean.trim_end_matches(suffix).trim_end_matches('-');
        return format!("{stem}-{hash}-{suffix}");
    }
    let hash = format!("{:08x}", fnv1a(full.as_bytes()) as u32);
    let keep = 63 - suffix.len() - hash.len() - 2;
    format!(
        "{}-{hash}-{suffix}",
        prefix(&clean, keep).trim_end_matches('-')
    )
}

/// At most `n` bytes of `s`, cut at a character boundary.
fn prefix(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Small stable hash for name shortening (not security relevant).
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_stay_dns_labels() {
        let n = object_name(&"x".repeat(200), "logstream");
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("-logstream"));
        assert_ne!(
            object_name(&"x".repeat(200), "logstream"),
            object_name(&"x".repeat(201), "logstream")
        );
        assert_eq!(object_name("web", "logstream"), "web-logstream");
    }

    /// Service names must be DNS-1035 labels; LogStream names are DNS
    /// subdomains (dots, leading digits).
    #[test]
    fn every_valid_logstream_name_gives_a_valid_service_name() {
        let dns1035 = |n: &str| {
            n.len() <= 63
                && n.starts_with(|c: char| c.is_ascii_lowercase())
                && n.ends_with(|c: char| c.is_ascii_alphanumeric())
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        for name in [
            "web",
            "my.app",
            "1web",
            "a.b.c",
            "9",
            &"x.".repeat(120),
            &format!("1{}", "y".repeat(250)),
        ] {
            let n = object_name(name, "logstream");
            assert!(dns1035(&n), "{name} -> {n}");
            assert!(n.ends_with("-logstream"), "{n}");
        }
        assert_ne!(
            object_name("my.app", "logstream"),
            object_name("my-app", "logstream")
        );
        assert_eq!(object_name("my-app", "logstream"), "my-app-logstream");
    }

    #[test]
    fn long_names_make_valid_label_values() {
        let long = "a".repeat(60) + ".b-c-" + &"d".repeat(100);
        let v = label_value(&long);
        assert!(v.len() <= 63, "{v}");
        assert!(v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()));
        assert_eq!(v, label_value(&long), "stable");
        assert_ne!(v, label_value(&(long.clone() + "e")));
        assert_eq!(label_value("web"), "web");
    }
}
