//! Dashboards in ClickHouse, with `--storage clickhouse`: every node sees
//! every dashboard saved through any of them.
//!
//! Each save or delete is a row of `dashboards` with the time it was made as
//! its version; a dashboard is its newest row, unless that row marks it
//! deleted. `ReplacingMergeTree(version)` keeps only the newest row of each
//! id in the end; reads pick it themselves meanwhile.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{ClickHouse, Connector, quote};
use crate::store::{Result, StoreError};

#[derive(clickhouse::Row, Serialize)]
struct DashboardRow {
    id: String,
    version: u64,
    deleted: u8,
    json: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct StoredDashboard {
    id: String,
    json: String,
}

/// See the module documentation.
pub struct ClickHouseDashboards {
    connector: Arc<Connector>,
}

impl ClickHouseDashboards {
    pub fn new(connector: Arc<Connector>) -> ClickHouseDashboards {
        ClickHouseDashboards { connector }
    }

    fn connection(&self) -> Result<ClickHouse> {
        Ok(self.connector.get()?.query)
    }

    /// Every dashboard: id and JSON.
    pub fn all(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let connection = self.connection()?;
        let rows: Vec<StoredDashboard> = connection.wait(
            "reading dashboards",
            connection.query(&newest_sql(None)).fetch_all(),
        )?;
        Ok(rows
            .into_iter()
            .map(|row| (row.id, row.json.into_bytes()))
            .collect())
    }

    /// The JSON of dashboard `id`, if there is one.
    pub fn one(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let connection = self.connection()?;
        let rows: Vec<StoredDashboard> = connection.wait(
            "reading a dashboard",
            connection.query(&newest_sql(Some(id))).fetch_all(),
        )?;
        Ok(rows.into_iter().next().map(|row| row.json.into_bytes()))
    }

    /// Saves `json` as dashboard `id`; true if there was none.
    pub fn put(&self, id: &str, json: &[u8]) -> Result<bool> {
        let json = String::from_utf8(json.to_vec())
            .map_err(|_| StoreError::BadQuery("a dashboard is UTF-8 JSON".into()))?;
        let created = self.one(id)?.is_none();
        self.write(id, json, false)?;
        Ok(created)
    }

    /// Deletes dashboard `id`; false if there was none.
    pub fn delete(&self, id: &str) -> Result<bool> {
        if self.one(id)?.is_none() {
            return Ok(false);
        }
        self.write(id, String::new(), true)?;
        Ok(true)
    }

    fn write(&self, id: &str, json: String, deleted: bool) -> Result<()> {
        self.connection()?.insert_rows(
            "dashboards",
            [DashboardRow {
                id: id.to_string(),
                version: crate::model::now_unix_nano(),
                deleted: u8::from(deleted),
                json,
            }],
        )
    }
}

/// The newest version of every dashboard (or of `id`) not deleted.
fn newest_sql(id: Option<&str>) -> String {
    let only = id.map_or(String::new(), |id| format!("WHERE id = {}", quote(id)));
    format!(
        "SELECT id, argMax(json, version) FROM dashboards {only} GROUP BY id \
         HAVING argMax(deleted, version) = 0 ORDER BY id"
    )
}

/// Every statement shape the store sends, for the test against a current
/// ClickHouse.
#[cfg(test)]
pub fn statement_shapes() -> Vec<String> {
    use clickhouse::Row;
    vec![
        format!(
            "SELECT {} FROM dashboards",
            DashboardRow::COLUMN_NAMES.join(", ")
        ),
        newest_sql(None),
        newest_sql(Some("team-a")),
    ]
}
