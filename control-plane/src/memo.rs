//! Values derived from state that changes far less often than it is read (the cluster's
//! deployments, its container list), kept with the version of the state they were built
//! from and shared until that version moves.

use std::sync::{Arc, Mutex, PoisonError};

/// One value and the version it was built from.
#[derive(Debug)]
pub struct Memo<T> {
    slot: Mutex<Option<(u64, Arc<T>)>>,
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo { slot: Mutex::new(None) }
    }
}

impl<T> Memo<T> {
    /// The value built from exactly `version`, if it is the one kept.
    pub fn get(&self, version: u64) -> Option<Arc<T>> {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().filter(|(built, _)| *built == version).map(|(_, value)| value.clone())
    }

    /// Keeps `value` as built from `version`, unless a value of a newer version is kept
    /// already (two readers may race to build; the newer one wins).
    pub fn put(&self, version: u64, value: Arc<T>) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_none_or(|(built, _)| *built <= version) {
            *slot = Some((version, value));
        }
    }

    /// The value of `version`: the one kept, or `build()`'s, kept from now on.
    pub fn get_or_build(&self, version: u64, build: impl FnOnce() -> T) -> Arc<T> {
        if let Some(value) = self.get(version) {
            return value;
        }
        let value = Arc::new(build());
        self.put(version, value.clone());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_reused_for_its_version_and_rebuilt_for_another() {
        let memo = Memo::default();
        let mut builds = 0;
        let mut build = |v: u64| {
            builds += 1;
            v * 10
        };
        assert_eq!(*memo.get_or_build(1, || build(1)), 10);
        assert_eq!(*memo.get_or_build(1, || build(1)), 10);
        assert_eq!(*memo.get_or_build(2, || build(2)), 20);
        assert_eq!(builds, 2);
        assert_eq!(memo.get(1), None, "only the latest version is kept");
    }

    #[test]
    fn an_older_value_never_replaces_a_newer_one() {
        let memo = Memo::default();
        memo.put(5, Arc::new("new"));
        memo.put(4, Arc::new("old"));
        assert_eq!(memo.get(5).as_deref(), Some(&"new"));
        assert_eq!(memo.get(4), None);
    }
}
