//! `tribridge export`: a gateway's archive as JSON Lines, one record per message version (each
//! edit, delete and reaction is its own record), streamed from a read-only connection so that it
//! runs while the daemon writes and holds one record in memory at a time. Every record carries
//! its chain hashes ([`super::chain`]), so a reader can check the chain without the store.
//!
//! The format is documented by `schema/export-jsonl.schema.json`; [`SCHEMA_VERSION`] changes
//! when a field's meaning does.

use std::io::Write;

use rusqlite::{Connection, params};
use serde_json::{Value, json};

use super::chain::{RECORD_COLUMNS, Record};
use crate::store::StoreError;

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

impl From<rusqlite::Error> for ExportError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(error))
    }
}

/// Which records an export holds.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The gateway.
    pub gateway: String,
    /// Only this channel (network, channel), when given.
    pub channel: Option<(String, String)>,
    /// Only messages said at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only messages said before this time (ms since the epoch).
    pub until_ms: Option<i64>,
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
    connection: &Connection,
    selection: &Selection,
    out: &mut dyn Write,
    mut progress: impl FnMut(u64),
) -> Result<u64, ExportError> {
    let mut statement = connection.prepare(&format!(
        "SELECT c.seq, c.record_hash, c.chain_hash, c.tombstone, m.{}, c.tombstone_hash
         FROM archive_chain c LEFT JOIN messages m ON m.id = c.message_id
         WHERE c.gateway = ?1 ORDER BY c.seq",
        RECORD_COLUMNS.replace(", ", ", m.")
    ))?;
    let mut mappings = connection.prepare(
        "SELECT network, channel, remote_id, role FROM mappings WHERE message_id = ?1
         ORDER BY role DESC, network, channel",
    )?;
    let seal_column = 4 + RECORD_COLUMNS.split(", ").count();
    let mut rows = statement.query(params![selection.gateway])?;
    let mut written = 0;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let record_hash: String = row.get(1)?;
        let chain_hash: String = row.get(2)?;
        let tombstone: Option<String> = row.get(3)?;
        let present: Option<i64> = row.get(4)?;
        let sealed = tombstone.is_some();
        let gone = match (tombstone, present) {
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
                    "seq": seq,
                    "tombstone": why,
                    "record_hash": record_hash,
                    "chain_hash": chain_hash,
            });
            if sealed {
                line["tombstone_hash"] = json!(row.get::<_, Option<String>>(seal_column)?);
            }
            line
        } else {
            {
                let record = Record::from_row(row, 4)?;
                if !selected(selection, &record) {
                    continue;
                }
                let relayed: Vec<Value> = mappings
                    .query_map(params![record.message_id], |m| {
                        Ok(json!({
                            "network": m.get::<_, String>(0)?,
                            "channel": m.get::<_, String>(1)?,
                            "remote_id": m.get::<_, String>(2)?,
                            "role": m.get::<_, String>(3)?,
                        }))
                    })?
                    .collect::<Result<_, _>>()?;
                let event: Value = serde_json::from_str(&record.body).unwrap_or(Value::Null);
                json!({
                    "schema_version": SCHEMA_VERSION,
                    "gateway": selection.gateway,
                    "seq": seq,
                    "record": record,
                    "event": event,
                    "relayed": relayed,
                    "record_hash": record_hash,
                    "chain_hash": chain_hash,
                })
            }
        };
        serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        written += 1;
        progress(written);
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
