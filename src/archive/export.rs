//! `tribridge export`: a gateway's archive as JSON Lines, one record per message version (each
//! edit, delete and reaction is its own record), read page by page from one snapshot of the
//! store (a read-only connection to the `SQLite` file, or a `REPEATABLE READ` transaction on
//! PostgreSQL) so that it runs while the daemon writes and holds one page in memory at a time. Every record carries
//! its chain hashes ([`super::chain`]), so a reader can check the chain without the store.
//!
//! The format is documented by `schema/export-jsonl.schema.json`; [`SCHEMA_VERSION`] changes
//! when a field's meaning does.

use std::io::Write;

use serde_json::{Value, json};

use super::chain::Record;
use crate::store::StoreError;
use crate::store::history::HistoryRead;
pub use crate::store::history::Selection;

/// Chain rows read per page.
const PAGE: i64 = 512;

/// The `schema_version` of every exported record.
pub const SCHEMA_VERSION: u32 = 1;

/// Errors of an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output could not be written.
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    /// A date is not `YYYY-MM-DD`.
    #[error("`{0}` is not a date of the form YYYY-MM-DD")]
    Date(String),
}

/// Midnight UTC of a `YYYY-MM-DD` date, in ms since the epoch.
///
/// # Errors
/// [`ExportError::Date`] when it is not such a date.
pub fn date_ms(date: &str) -> Result<i64, ExportError> {
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|midnight| midnight.and_utc().timestamp_millis())
        .ok_or_else(|| ExportError::Date(date.to_owned()))
}

/// Write the selected records as JSON Lines to `out`, calling `progress` after each; returns
/// how many were written.
///
/// # Errors
/// The store's or the output's.
pub fn jsonl(
    history: &mut dyn HistoryRead,
    selection: &Selection,
    out: &mut dyn Write,
    mut progress: impl FnMut(u64),
) -> Result<u64, ExportError> {
    let mut written = 0;
    let mut after = 0;
    loop {
        let page = history.chain_page(&selection.gateway, after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for row in page {
            let sealed = row.tombstone.is_some();
            let gone = match (row.tombstone, &row.record) {
                (Some(why), _) => Some(why),
                // Gone without a tombstone: `export --verify` names it; the export says so.
                (None, None) => Some("missing".to_owned()),
                (None, Some(_)) => None,
            };
            // A tombstone is exported whatever the selection, so the chain stays whole.
            let line = if let Some(why) = gone {
                let mut line = json!({
                        "schema_version": SCHEMA_VERSION,
                        "gateway": selection.gateway,
                        "seq": row.seq,
                        "tombstone": why,
                        "record_hash": row.record_hash,
                        "chain_hash": row.chain_hash,
                });
                if sealed {
                    line["tombstone_hash"] = json!(row.tombstone_hash);
                }
                line
            } else {
                let Some(record) = row.record else { continue };
                if !selected(selection, &record) {
                    continue;
                }
                let relayed: Vec<Value> = history
                    .relayed(record.message_id)?
                    .into_iter()
                    .map(|(network, channel, remote_id, role)| {
                        json!({
                            "network": network,
                            "channel": channel,
                            "remote_id": remote_id,
                            "role": role,
                        })
                    })
                    .collect();
                let event: Value = serde_json::from_str(&record.body).unwrap_or(Value::Null);
                json!({
                    "schema_version": SCHEMA_VERSION,
                    "gateway": selection.gateway,
                    "seq": row.seq,
                    "record": record,
                    "event": event,
                    "relayed": relayed,
                    "record_hash": row.record_hash,
                    "chain_hash": row.chain_hash,
                })
            };
            serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
            progress(written);
        }
    }
    out.flush()?;
    Ok(written)
}

fn selected(selection: &Selection, record: &Record) -> bool {
    selection.channel.as_ref().is_none_or(|(network, channel)| {
        record.network == *network && record.channel.eq_ignore_ascii_case(channel)
    }) && selection
        .since_ms
        .is_none_or(|since| record.created_ms >= since)
        && selection
            .until_ms
            .is_none_or(|until| record.created_ms < until)
}

#[cfg(test)]
mod tests {
    use super::date_ms;

    #[test]
    fn dates_are_midnight_utc() {
        assert_eq!(date_ms("1970-01-01").unwrap(), 0);
        assert_eq!(date_ms("2026-12-06").unwrap(), 1_796_515_200_000);
        assert!(date_ms("2026-13-01").is_err());
        assert!(date_ms("yesterday").is_err());
    }
}
