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
    let keep = name[..63 - hash.len() - 1].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{keep}-{hash}")
}

/// A DNS-label name (≤ 63 characters) derived from `base` and `suffix`.
pub fn object_name(base: &str, suffix: &str) -> String {
    let full = format!("{base}-{suffix}");
    if full.len() <= 63 {
        return full;
    }
    let hash = format!("{:08x}", fnv1a(full.as_bytes()) as u32);
    let keep = 63 - suffix.len() - hash.len() - 2;
    format!("{}-{hash}-{suffix}", base[..keep].trim_end_matches('-'))
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
