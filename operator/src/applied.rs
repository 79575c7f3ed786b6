//! What this operator applied lately, so that a reconcile which changes
//! nothing writes nothing.
//!
//! Owns: a record per object (kind, namespace, name) of a hash of what was
//! last applied and when. Applying the same content again within
//! [`REAPPLY_AFTER`] is skipped. Kinds the controller watches (the
//! LogStream's Service and Ingress) are forgotten as soon as their watch
//! sees them change or go, so an edit or a deletion by someone else is
//! undone at once; the others (the aggregator's objects, the auth binding)
//! are applied again at least every [`REAPPLY_AFTER`], and at once when
//! what the operator wants of them changes. Deleting an object, or a
//! namespace's cleanup, forgets it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The content recorded for an object deleted (or found absent).
pub const ABSENT: u64 = 0;

/// The longest an applied object goes without being applied again.
pub const REAPPLY_AFTER: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Applied {
    entries: Mutex<HashMap<Key, (u64, Instant)>>,
}

/// An object: kind, namespace (empty when cluster-scoped), name.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Key {
        Key {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// A hash of an object's content as it would be sent.
pub fn content_hash<T: Serialize>(obj: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // Serialising the API types cannot fail; an empty body hashes alike
    // and is then simply applied.
    serde_json::to_vec(obj).unwrap_or_default().hash(&mut h);
    h.finish()
}

impl Applied {
    /// Whether `content` is what was applied under `key` within
    /// [`REAPPLY_AFTER`] of `now`.
    pub fn is_fresh(&self, key: &Key, content: u64, now: Instant) -> bool {
        self.entries.lock().is_ok_and(|m| {
            m.get(key).is_some_and(|(hash, at)| {
                *hash == content && now.saturating_duration_since(*at) < REAPPLY_AFTER
            })
        })
    }

    pub fn record(&self, key: Key, content: u64, now: Instant) {
        if let Ok(mut m) = self.entries.lock() {
            m.insert(key, (content, now));
        }
    }

    pub fn forget(&self, key: &Key) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(key);
        }
    }

    /// Everything recorded in `namespace` (its cleanup).
    pub fn forget_namespace(&self, namespace: &str) {
        if let Ok(mut m) = self.entries.lock() {
            m.retain(|k, _| k.namespace != namespace);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_content_is_skipped_until_it_changes_is_forgotten_or_ages() {
        let a = Applied::default();
        let k = Key::new("Service", "shop", "web-logs");
        let t0 = Instant::now();
        let (one, two) = (content_hash(&"one"), content_hash(&"two"));
        assert!(!a.is_fresh(&k, one, t0), "never applied");
        a.record(k.clone(), one, t0);
        assert!(a.is_fresh(&k, one, t0 + Duration::from_secs(1)));
        assert!(!a.is_fresh(&k, two, t0), "other content");
        assert!(!a.is_fresh(&k, one, t0 + REAPPLY_AFTER), "aged");
        a.forget(&k);
        assert!(!a.is_fresh(&k, one, t0), "forgotten");
        a.record(k.clone(), one, t0);
        a.record(Key::new("Role", "other", "x"), one, t0);
        a.forget_namespace("shop");
        assert!(!a.is_fresh(&k, one, t0));
        assert_eq!(a.len(), 1);
    }
}
