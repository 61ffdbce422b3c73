//! An in-memory [`SysctlStore`] for unit tests, whose writes to chosen keys
//! fail, so apply's and rollback's failure paths run without a kernel.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::procfs::{ProcError, SysctlStore};

/// An in-memory store whose writes to `fail_keys` fail.
pub(crate) struct MemStore {
    pub(crate) values: RefCell<BTreeMap<String, String>>,
    pub(crate) fail_keys: Vec<&'static str>,
    pub(crate) live: bool,
}

impl MemStore {
    pub(crate) fn new(values: &[(&str, &str)], fail_keys: Vec<&'static str>) -> Self {
        MemStore {
            values: RefCell::new(
                values
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            fail_keys,
            live: false,
        }
    }

    pub(crate) fn get(&self, key: &str) -> String {
        self.values.borrow()[key].clone()
    }
}

impl SysctlStore for MemStore {
    fn read(&self, key: &str) -> Result<String, ProcError> {
        self.values
            .borrow()
            .get(key)
            .cloned()
            .ok_or_else(|| ProcError::Missing {
                key: key.into(),
                path: key.into(),
            })
    }

    fn write(&self, key: &str, value: &str) -> Result<(), ProcError> {
        if self.fail_keys.contains(&key) {
            return Err(ProcError::Write {
                key: key.into(),
                value: value.into(),
                path: key.into(),
                reason: "injected failure".into(),
            });
        }
        self.values.borrow_mut().insert(key.into(), value.into());
        Ok(())
    }

    fn location(&self) -> String {
        "/mem".into()
    }

    fn is_live(&self) -> bool {
        self.live
    }
}
