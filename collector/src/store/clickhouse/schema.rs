//! Strand's tables in ClickHouse, created and migrated at start.
//!
//! Migrations are numbered and recorded in `strand_schema_migrations`; a
//! start applies those it does not find there, in order, each statement
//! idempotent (`IF NOT EXISTS`), so two nodes starting at once, or a start
//! that died half way, end with the same schema. A database recording a
//! migration newer than this Strand knows is refused: an older release
//! must not write into tables it does not understand.
//!
//! Every table of telemetry is partitioned by day (`day Date`), so
//! retention drops whole partitions; dashboards are kept until deleted. Features newer than Debian's 18.16 — column codecs,
//! `LowCardinality` and skip indexes — are added only where the server has
//! them.

use super::{ClickHouse, Version, identifier, quote};
use crate::store::{Result, StoreError};

/// From this version on, columns get codecs and `LowCardinality`, and
/// tables skip indexes.
const CODECS_MIN_VERSION: Version = Version(20, 1);

/// How Strand's tables are laid out on the servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One server: each table is itself.
    Single,
    /// Shards of the named cluster: each server holds `<table>_local` with
    /// its shard's rows and `<table>`, a `Distributed` table over every
    /// shard's, which queries and inserts use. A trace's spans and search
    /// rows go to one shard (sharded by trace id).
    Cluster(String),
}

impl Layout {
    /// The table holding a server's own rows of `table`.
    pub fn local(&self, table: &str) -> String {
        match self {
            Layout::Single => table.to_string(),
            Layout::Cluster(_) => format!("{table}_local"),
        }
    }
}

/// One table a migration creates.
struct Table {
    name: &'static str,
    /// Column definitions, with `{names}`, `{bytes}` and `{times}` for what
    /// the server supports of types and codecs.
    columns: &'static str,
    engine: &'static str,
    /// With a cluster, the expression that picks a row's shard.
    sharding: &'static str,
}

/// The tables one migration adds.
struct Migration {
    version: u32,
    tables: &'static [Table],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        tables: &[
            // Trace by id is a primary-key lookup: rows (a trace's spans of
            // one flush, encoded together) sorted by trace, in small granules.
            // A span stored twice (a replay) is folded by reads.
            Table {
                name: "spans",
                columns: "day Date,
                trace_id FixedString(16),
                start_nanos UInt64 {times},
                spans UInt32,
                payload String {bytes}",
                engine: "MergeTree PARTITION BY day ORDER BY (trace_id, start_nanos) \
                     SETTINGS index_granularity = 128",
                sharding: "cityHash64(trace_id)",
            },
            // Search: one row per span, sorted by service and start, with what
            // a search filters on, tags as parallel key/value arrays.
            Table {
                name: "span_search",
                columns: "day Date,
                service {names},
                start_nanos UInt64 {times},
                trace_id FixedString(16),
                span_id FixedString(8),
                name {names},
                kind {names},
                duration_nanos UInt64,
                error UInt8,
                tag_keys Array({names}),
                tag_values Array(String)",
                engine: "MergeTree PARTITION BY day ORDER BY (service, start_nanos)",
                sharding: "cityHash64(trace_id)",
            },
            Table {
                name: "span_names",
                columns: "day Date, service String, name String, kind String",
                engine: "ReplacingMergeTree PARTITION BY day ORDER BY (service, name, kind)",
                sharding: "cityHash64(service)",
            },
            // Calls between services per hour, summed by the engine.
            Table {
                name: "dependencies",
                columns: "day Date,
                hour_nanos UInt64,
                parent String,
                child String,
                calls UInt64,
                errors UInt64",
                engine: "SummingMergeTree((calls, errors)) PARTITION BY day \
                     ORDER BY (hour_nanos, parent, child)",
                sharding: "cityHash64(parent, child)",
            },
        ],
    },
    Migration {
        version: 2,
        tables: &[
            // Log records, sorted by hour, service and time: a time range
            // and a service are primary-key ranges. Full text is matched on
            // `tokens`, the message and scalar attribute values split and
            // lowercased as the embedded store's index does (with a bloom
            // filter over them where the server has skip indexes);
            // attributes are parallel path/value arrays. `node`, `seq` and
            // `idx` say which node's WAL record (and which of its records)
            // a row is: a node retrying an insert that may have landed
            // skips the rows it finds.
            Table {
                name: "logs",
                columns: "day Date,
                    hour UInt32,
                    time_nanos UInt64 {times},
                    id UInt64,
                    node UInt64,
                    seq UInt64,
                    idx UInt32,
                    level UInt8,
                    severity {names},
                    service {names},
                    trace_id String,
                    span_id String,
                    body String {bytes},
                    tokens Array(String),
                    attribute_keys Array(String),
                    attr_paths Array({names}),
                    attr_values Array(String),
                    resource_paths Array({names}),
                    resource_values Array(String),
                    record String {bytes}
                    {token_index}",
                engine: "MergeTree PARTITION BY day ORDER BY (hour, service, time_nanos, id)",
                sharding: "cityHash64(node, seq, idx)",
            },
            // The time span of each trace's logs per insert: the logs of a
            // trace are a primary-key lookup here, then a read of seconds
            // of `logs`.
            Table {
                name: "log_traces",
                columns: "day Date,
                    trace_id String,
                    first_nanos UInt64,
                    last_nanos UInt64",
                engine: "MergeTree PARTITION BY day ORDER BY trace_id \
                         SETTINGS index_granularity = 128",
                sharding: "cityHash64(trace_id)",
            },
        ],
    },
    Migration {
        version: 3,
        tables: &[
            // Each series' labels once per day it has samples in, sorted by
            // metric name: matchers resolve to fingerprints here. The
            // fingerprint (of the label set, computed by Strand) keys the
            // series everywhere; rows inserted again are folded.
            Table {
                name: "series",
                columns: "day Date,
                    metric {names},
                    fingerprint UInt64,
                    label_names Array({names}),
                    label_values Array(String)",
                engine: "ReplacingMergeTree PARTITION BY day ORDER BY (metric, fingerprint)",
                sharding: "fingerprint",
            },
            // Samples sorted by metric, series and time: a series' samples
            // in a range are one primary-key range, and a metric's series
            // are read together. A sample stored twice (a replay, two nodes
            // given it) is folded by merges and by reads.
            Table {
                name: "samples",
                columns: "day Date,
                    metric {names},
                    fingerprint UInt64,
                    time_ms Int64 {times},
                    value Float64 {floats}",
                engine: "ReplacingMergeTree PARTITION BY day \
                         ORDER BY (metric, fingerprint, time_ms)",
                sharding: "fingerprint",
            },
            // Type, help and unit of metric families, as of `updated_ms`;
            // written again each day a node sees the family.
            Table {
                name: "metric_metadata",
                columns: "day Date,
                    metric String,
                    kind String,
                    help String,
                    unit String,
                    updated_ms Int64",
                engine: "ReplacingMergeTree(updated_ms) PARTITION BY day ORDER BY metric",
                sharding: "cityHash64(metric)",
            },
        ],
    },
    Migration {
        version: 4,
        tables: &[
            // Dashboards saved in the UI: a row per save or delete, the
            // newest of an id (by `version`) its state. Not partitioned by
            // day: retention never drops them.
            Table {
                name: "dashboards",
                columns: "id String,
                    version UInt64,
                    deleted UInt8,
                    json String",
                engine: "ReplacingMergeTree(version) ORDER BY id",
                sharding: "cityHash64(id)",
            },
        ],
    },
];

/// The span tables, which span retention drops day partitions of.
pub const SPAN_TABLES: &[&str] = &["spans", "span_search", "span_names", "dependencies"];
/// The log tables, which log retention drops day partitions of.
pub const LOG_TABLES: &[&str] = &["logs", "log_traces"];
/// The metric tables, which metric retention drops day partitions of.
pub const METRIC_TABLES: &[&str] = &["series", "samples", "metric_metadata"];

/// The table recording applied migrations, on each server.
const MIGRATIONS_TABLE: &str = "strand_schema_migrations";

/// Brings the database on `connection`'s server up to the newest
/// migration (see the module docs).
pub fn migrate(connection: &ClickHouse, layout: &Layout) -> Result<()> {
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
        for statement in statements(migration, &connection.database, layout, connection.version) {
            connection.execute(
                &format!("applying migration {}", migration.version),
                &statement,
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

/// Every migration's statements, in order: what the test against a current
/// ClickHouse runs.
#[cfg(test)]
pub fn all_statements(database: &str, layout: &Layout, version: Version) -> Vec<String> {
    MIGRATIONS
        .iter()
        .flat_map(|m| statements(m, database, layout, version))
        .collect()
}

/// The statements of `migration` for `layout` on a server at `version`.
fn statements(
    migration: &Migration,
    database: &str,
    layout: &Layout,
    version: Version,
) -> Vec<String> {
    let db = identifier(database);
    let modern = version >= CODECS_MIN_VERSION;
    let columns = |table: &Table| {
        table
            .columns
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
            .replace(
                "{floats}",
                if modern {
                    "CODEC(Gorilla, ZSTD(1))"
                } else {
                    ""
                },
            )
            .replace(
                "{token_index}",
                if modern {
                    ", INDEX tokens_bloom tokens TYPE bloom_filter(0.01) GRANULARITY 1"
                } else {
                    ""
                },
            )
    };
    let mut statements = Vec::new();
    for table in migration.tables {
        let local = layout.local(table.name);
        statements.push(format!(
            "CREATE TABLE IF NOT EXISTS {db}.{} ({}) ENGINE = {}",
            identifier(&local),
            columns(table),
            table.engine
        ));
        if let Layout::Cluster(cluster) = layout {
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.{} AS {db}.{} \
                 ENGINE = Distributed({}, {}, {}, {})",
                identifier(table.name),
                identifier(&local),
                quote(cluster),
                quote(database),
                quote(&local),
                table.sharding
            ));
        }
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_use_what_the_server_has() {
        let old = all_statements("strand", &Layout::Single, Version(18, 16)).join("\n");
        assert!(old.contains("service String,"), "{old}");
        assert!(!old.contains("CODEC") && !old.contains("LowCardinality"));
        let new = all_statements("strand", &Layout::Single, Version(24, 8)).join("\n");
        assert!(new.contains("service LowCardinality(String),"), "{new}");
        assert!(new.contains("CODEC(Delta, ZSTD(1))"));
        assert!(!new.contains('{'));
    }

    #[test]
    fn a_cluster_gets_local_tables_and_distributed_ones_over_them() {
        let layout = Layout::Cluster("two shards".into());
        let statements = all_statements("strand", &layout, Version(18, 16));
        let tables: usize = MIGRATIONS.iter().map(|m| m.tables.len()).sum();
        assert_eq!(statements.len(), 2 * tables);
        assert!(statements[0].starts_with("CREATE TABLE IF NOT EXISTS `strand`.`spans_local` ("));
        assert!(
            statements[1].contains(
                "`strand`.`spans` AS `strand`.`spans_local` ENGINE = Distributed('two shards', \
                 'strand', 'spans_local', cityHash64(trace_id))"
            ),
            "{}",
            statements[1]
        );
        assert_eq!(layout.local("spans"), "spans_local");
        assert_eq!(Layout::Single.local("spans"), "spans");
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]) && versions[0] == 1);
    }
}
