//! Strand's tables in ClickHouse, created and migrated at start.
//!
//! Migrations are numbered and recorded in `strand_schema_migrations`; a
//! start applies those it does not find there, in order, each statement
//! idempotent (`IF NOT EXISTS`), so two nodes starting at once, or a start
//! that died half way, end with the same schema. A database recording a
//! migration newer than this Strand knows is refused: an older release
//! must not write into tables it does not understand.
//!
//! Every table is partitioned by day (`day Date`), so retention drops whole
//! partitions. Features newer than Debian's 18.16 — column codecs and
//! `LowCardinality` — are added only where the server has them.

use super::{ClickHouse, Version, identifier};
use crate::store::{Result, StoreError};

/// From this version on, columns get codecs and `LowCardinality`.
const CODECS_MIN_VERSION: Version = Version(20, 1);

/// The tables and columns one migration adds.
struct Migration {
    version: u32,
    /// Statements with `{db}` for the database and `{names}`, `{bytes}`,
    /// `{times}` for what the server supports of the column types.
    statements: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    statements: &[
        // Trace by id is a primary-key lookup: spans are sorted by trace,
        // in small granules. Each span once (a retried export): the
        // replacing engine folds copies, reads fold what is not merged yet.
        "CREATE TABLE IF NOT EXISTS {db}.spans (
            day Date,
            trace_id FixedString(16),
            span_id FixedString(8),
            start_nanos UInt64 {times},
            payload String {bytes}
        ) ENGINE = ReplacingMergeTree
        PARTITION BY day
        ORDER BY (trace_id, span_id)
        SETTINGS index_granularity = 1024",
        // Search: one row per span, sorted by service and start, with
        // what a search filters on, tags as parallel key/value arrays.
        "CREATE TABLE IF NOT EXISTS {db}.span_search (
            day Date,
            service {names},
            start_nanos UInt64 {times},
            trace_id FixedString(16),
            name {names},
            kind {names},
            duration_nanos UInt64,
            error UInt8,
            tag_keys Array({names}),
            tag_values Array(String)
        ) ENGINE = MergeTree
        PARTITION BY day
        ORDER BY (service, start_nanos)",
        "CREATE TABLE IF NOT EXISTS {db}.span_names (
            day Date,
            service String,
            name String,
            kind String
        ) ENGINE = ReplacingMergeTree
        PARTITION BY day
        ORDER BY (service, name, kind)",
        // Calls between services per hour, summed by the engine.
        "CREATE TABLE IF NOT EXISTS {db}.dependencies (
            day Date,
            hour_nanos UInt64,
            parent String,
            child String,
            calls UInt64,
            errors UInt64
        ) ENGINE = SummingMergeTree((calls, errors))
        PARTITION BY day
        ORDER BY (hour_nanos, parent, child)",
    ],
}];

/// The tables retention drops day partitions of.
pub const DAY_PARTITIONED: &[&str] = &["spans", "span_search", "span_names", "dependencies"];

/// The table recording applied migrations.
const MIGRATIONS_TABLE: &str = "strand_schema_migrations";

/// Brings the database up to the newest migration (see the module docs).
pub fn migrate(connection: &ClickHouse) -> Result<()> {
    let db = identifier(&connection.database);
    connection.execute(
        "creating the database",
        &format!("CREATE DATABASE IF NOT EXISTS {db}"),
    )?;
    connection.execute(
        "creating the migrations table",
        &format!(
            "CREATE TABLE IF NOT EXISTS {db}.{MIGRATIONS_TABLE} \
             (version UInt32, applied_at DateTime, strand String) \
             ENGINE = MergeTree ORDER BY version"
        ),
    )?;
    let applied: Vec<u32> = connection.wait(
        "reading the applied migrations",
        connection
            .client
            .query(&format!(
                "SELECT DISTINCT version FROM {db}.{MIGRATIONS_TABLE} ORDER BY version"
            ))
            .fetch_all::<u32>(),
    )?;
    let newest_known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(&newest) = applied.last()
        && newest > newest_known
    {
        return Err(StoreError::Incompatible {
            store: "ClickHouse",
            found: newest,
            supported: newest_known,
        });
    }
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        for statement in migration.statements {
            connection.execute(
                &format!("applying migration {}", migration.version),
                &render(statement, &db, connection.version),
            )?;
        }
        connection.execute(
            "recording a migration",
            &format!(
                "INSERT INTO {db}.{MIGRATIONS_TABLE} (version, applied_at, strand) \
                 VALUES ({}, now(), '{}')",
                migration.version,
                env!("CARGO_PKG_VERSION")
            ),
        )?;
        tracing::info!(version = migration.version, "ClickHouseMigrationApplied");
    }
    Ok(())
}

/// Every migration's statements for the server at `version`, in order: what
/// the test against a current ClickHouse runs.
#[cfg(test)]
pub fn all_statements(db: &str, version: Version) -> Vec<String> {
    MIGRATIONS
        .iter()
        .flat_map(|m| m.statements)
        .map(|statement| render(statement, db, version))
        .collect()
}

/// A statement for the server at `version`.
fn render(statement: &str, db: &str, version: Version) -> String {
    let modern = version >= CODECS_MIN_VERSION;
    statement
        .replace("{db}", db)
        .replace(
            "{names}",
            if modern {
                "LowCardinality(String)"
            } else {
                "String"
            },
        )
        .replace("{bytes}", if modern { "CODEC(ZSTD(1))" } else { "" })
        .replace("{times}", if modern { "CODEC(Delta, ZSTD(1))" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_use_what_the_server_has() {
        let old = render(MIGRATIONS[0].statements[1], "`strand`", Version(18, 16));
        assert!(old.contains("service String,"), "{old}");
        assert!(!old.contains("CODEC") && !old.contains("LowCardinality"));
        let new = render(MIGRATIONS[0].statements[1], "`strand`", Version(24, 8));
        assert!(new.contains("service LowCardinality(String),"), "{new}");
        assert!(new.contains("CODEC(Delta, ZSTD(1))"));
        assert!(!new.contains('{'));
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]) && versions[0] == 1);
    }
}
