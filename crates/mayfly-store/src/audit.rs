//! The audit log's hash chain. Each row's hash covers its own fields and the previous row's
//! hash, so editing, deleting, inserting or reordering a row breaks the chain at that row.

use chrono::SecondsFormat;
use sha2::{Digest, Sha256};

use crate::{AuditRow, NewAudit};

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of row `seq` holding `event`, chained to `prev_hash`.
pub fn row_hash(seq: i64, event: &NewAudit, prev_hash: &str) -> String {
    let fields = serde_json::json!([
        seq,
        event.at.to_rfc3339_opts(SecondsFormat::Micros, true),
        event.actor,
        event.source,
        event.action,
        event.target,
        event.outcome,
    ]);
    let digest = Sha256::new()
        .chain_update(prev_hash.as_bytes())
        .chain_update(b"\n")
        .chain_update(fields.to_string().as_bytes())
        .finalize();
    hex::encode(digest)
}

/// What is wrong with a chain, naming the first row where it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("row {seq}: its content does not match its hash (edited)")]
    Edited { seq: i64 },
    #[error("row {seq}: expected row {expected} here (a row was deleted, inserted or reordered)")]
    Sequence { seq: i64, expected: i64 },
    #[error("row {seq}: it does not follow the row before it (a row was deleted, inserted or reordered)")]
    Link { seq: i64 },
}

/// Checks rows in stored order; `Ok(n)` is how many rows were verified.
pub fn verify_chain(rows: &[AuditRow]) -> Result<usize, ChainBreak> {
    let mut prev = GENESIS.to_owned();
    for (expected, row) in (1..).zip(rows) {
        if row.seq != expected {
            return Err(ChainBreak::Sequence {
                seq: row.seq,
                expected,
            });
        }
        if row.prev_hash != prev {
            return Err(ChainBreak::Link { seq: row.seq });
        }
        let event = NewAudit {
            at: row.at,
            actor: row.actor.clone(),
            source: row.source.clone(),
            action: row.action.clone(),
            target: row.target.clone(),
            outcome: row.outcome.clone(),
        };
        if row_hash(row.seq, &event, &row.prev_hash) != row.hash {
            return Err(ChainBreak::Edited { seq: row.seq });
        }
        prev = row.hash.clone();
    }
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let event = NewAudit {
                    at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                        + chrono::Duration::seconds(seq),
                    actor: format!("token:{seq}"),
                    source: None,
                    action: "api.get".into(),
                    target: Some("/api/v1/jobs".into()),
                    outcome: "200".into(),
                };
                let hash = row_hash(seq, &event, &prev);
                let row = AuditRow {
                    seq,
                    at: event.at,
                    actor: event.actor,
                    source: event.source,
                    action: event.action,
                    target: event.target,
                    outcome: event.outcome,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
        assert_eq!(verify_chain(&[]), Ok(0));
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let mut edited = chain(5);
        edited[2].outcome = "403".into();
        assert_eq!(verify_chain(&edited), Err(ChainBreak::Edited { seq: 3 }));

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(
            verify_chain(&deleted),
            Err(ChainBreak::Sequence {
                seq: 3,
                expected: 2
            })
        );

        // Deleted and renumbered so the sequence looks whole: the link breaks.
        let mut renumbered = chain(5);
        renumbered.remove(1);
        for (i, row) in renumbered.iter_mut().enumerate() {
            row.seq = i64::try_from(i).unwrap() + 1;
        }
        assert_eq!(verify_chain(&renumbered), Err(ChainBreak::Link { seq: 2 }));

        let mut reordered = chain(5);
        reordered.swap(1, 2);
        assert!(matches!(
            verify_chain(&reordered),
            Err(ChainBreak::Sequence { seq: 3, .. })
        ));

        // Inserted with a valid hash of its own, but not chained to its predecessor's.
        let mut inserted = chain(5);
        let mut forged = inserted[1].clone();
        forged.actor = "token:forged".into();
        forged.seq = 3;
        inserted.insert(2, forged);
        for (i, row) in inserted.iter_mut().enumerate().skip(3) {
            row.seq = i64::try_from(i).unwrap() + 1;
        }
        assert!(verify_chain(&inserted).is_err());
    }
}
