//! Values both backends store as text: JSON columns and parsed names. A value that does not read
//! back is reported as corruption, never a panic.

use std::str::FromStr;

use crate::StoreError;

pub(crate) fn to_json<T: serde::Serialize>(
    value: &T,
    what: &'static str,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|_| StoreError::Corrupt { what })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    raw: &str,
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|_| StoreError::Corrupt { what })
}

pub(crate) fn parse<T: FromStr>(raw: &str, what: &'static str) -> Result<T, StoreError> {
    raw.parse().map_err(|_| StoreError::Corrupt { what })
}
