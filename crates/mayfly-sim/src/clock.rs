//! The simulator's clock: wall time plus an offset that tests can advance, so that token and
//! JWT expiry are tested without sleeping. The offset only ever grows.

use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset: Mutex<TimeDelta>,
}

impl Clock {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        let offset = match self.offset.lock() {
            Ok(offset) => *offset,
            Err(poisoned) => *poisoned.into_inner(),
        };
        Utc::now() + offset
    }

    pub(crate) fn advance(&self, by: std::time::Duration) {
        let by = TimeDelta::from_std(by).unwrap_or(TimeDelta::MAX);
        let mut offset = match self.offset.lock() {
            Ok(offset) => offset,
            Err(poisoned) => poisoned.into_inner(),
        };
        *offset = offset.checked_add(&by).unwrap_or(TimeDelta::MAX);
    }
}
