//! Schema v2 (`edge-agent/schema/edgeproxy.sql`): applying it to a local file, and checking a
//! schema against Corrosion's rules.
//!
//! A file is brought up to date the way Corrosion migrates its own database: by diffing against
//! the schema, creating missing tables and indexes and adding missing columns. Nothing is ever
//! dropped. The differences are found by loading the schema into an in-memory database, so that
//! SQLite itself parses it.

use std::path::Path;

use rusqlite::{fallible_iterator::FallibleIterator, Batch, Connection, TransactionBehavior};
use tracing::{info, warn};

use super::StateError;

/// The schema, as shipped for Corrosion and as applied to the local file.
pub const SCHEMA: &str = include_str!("../../schema/edgeproxy.sql");

/// Written to the local file's `PRAGMA user_version` (outside the schema, which Corrosion owns),
/// so that tools can tell a v2 file at a glance.
pub const SCHEMA_VERSION: i64 = 2;

/// The tables a source reads.
pub const TABLES: [&str; 5] = ["services", "backends", "pops", "health", "settings"];

struct Object {
    kind: String,
    name: String,
    table: String,
    sql: String,
}

struct Column {
    name: String,
    decl_type: String,
    not_null: bool,
    default: Option<String>,
    pk: i64,
}

fn objects(conn: &Connection) -> rusqlite::Result<Vec<Object>> {
    let mut stmt = conn.prepare(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema \
         WHERE name NOT LIKE 'sqlite_%' ORDER BY rowid",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(Object {
            kind: row.get(0)?,
            name: row.get(1)?,
            table: row.get(2)?,
            sql: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
        })
    })?;
    rows.collect()
}

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<Column>> {
    let mut stmt =
        conn.prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")?;
    let rows = stmt.query_map([table], |row| {
        Ok(Column {
            name: row.get(0)?,
            decl_type: row.get(1)?,
            not_null: row.get::<_, i64>(2)? != 0,
            default: row.get(3)?,
            pk: row.get(4)?,
        })
    })?;
    rows.collect()
}

fn reference() -> rusqlite::Result<Connection> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Statements that bring `conn`'s database up to the schema: missing tables and indexes, then
/// missing columns (which the schema's rules make addable: nullable, or NOT NULL with a
/// constant default).
fn plan(conn: &Connection, reference: &Connection) -> rusqlite::Result<Vec<String>> {
    let have = objects(conn)?;
    let mut plan = Vec::new();
    for object in objects(reference)? {
        let existing = have
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case(&object.name));
        match existing {
            None => plan.push(object.sql.clone()),
            Some(_) if object.kind != "table" => {}
            Some(_) => {
                let present = columns(conn, &object.name)?;
                for column in columns(reference, &object.name)? {
                    if present
                        .iter()
                        .any(|c| c.name.eq_ignore_ascii_case(&column.name))
                    {
                        continue;
                    }
                    let mut add = format!(
                        "ALTER TABLE \"{}\" ADD COLUMN \"{}\" {}",
                        object.table, column.name, column.decl_type
                    );
                    if column.not_null {
                        add.push_str(" NOT NULL");
                    }
                    if let Some(default) = &column.default {
                        add.push_str(" DEFAULT ");
                        add.push_str(default);
                    }
                    plan.push(add);
                }
            }
        }
    }
    Ok(plan)
}

fn is_v1(conn: &Connection) -> rusqlite::Result<bool> {
    let cols = columns(conn, "backends")?;
    let has = |name: &str| cols.iter().any(|c| c.name.eq_ignore_ascii_case(name));
    Ok(has("wg_ip") && !has("service_id"))
}

/// v1's `routing.db` has a `backends` table too; opening it as v2 would add v2's columns to it
/// (and switch it to WAL) and then reject every row. Refuse instead, before anything is
/// written, and say what to do.
pub(crate) fn refuse_v1(conn: &Connection, path: &Path) -> Result<(), StateError> {
    match is_v1(conn) {
        Ok(false) => Ok(()),
        Ok(true) => Err(StateError::V1Database {
            path: path.to_owned(),
        }),
        Err(source) => Err(StateError::Sqlite {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Brings the database behind `conn` up to the schema.
pub(crate) fn apply(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let sqlite = |source| StateError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let reference = reference().map_err(|source| StateError::Schema {
        path: path.to_owned(),
        reason: format!("the built-in schema does not load: {source}"),
    })?;
    refuse_v1(conn, path)?;
    // Checked outside a write transaction first: the common case changes nothing and should not
    // take the write lock (another process may be writing).
    if !plan(conn, &reference).map_err(sqlite)?.is_empty() {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite)?;
        // Planned again under the lock: another agent may have migrated meanwhile.
        let steps = plan(&tx, &reference).map_err(sqlite)?;
        for step in &steps {
            tx.execute_batch(step)
                .map_err(|source| StateError::Schema {
                    path: path.to_owned(),
                    reason: format!("{}: {source}", one_line(step)),
                })?;
        }
        tx.commit().map_err(sqlite)?;
        if !steps.is_empty() {
            info!(path = %path.display(), steps = steps.len(), "state schema brought up to v2");
        }
    }
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite)?;
    if version < SCHEMA_VERSION {
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite)?;
    } else if version > SCHEMA_VERSION {
        // Schema changes are additive, so the columns this agent reads are still there.
        warn!(
            path = %path.display(),
            version,
            supported = SCHEMA_VERSION,
            "state schema is newer than this agent; reading the columns it knows"
        );
    }
    Ok(())
}

fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first words of a statement, upper case, comments skipped.
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, tail)| tail);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, tail)| tail);
        } else {
            break;
        }
    }
    rest.split(|c: char| c.is_whitespace() || c == '(')
        .filter(|w| !w.is_empty())
        .take(n)
        .map(str::to_ascii_uppercase)
        .collect()
}

/// Everything in `sql` that Corrosion (cr-sqlite's `crsql_as_crr`, Corrosion's schema loader)
/// would refuse, or that would break the additive migration above; empty when it is valid.
/// The rules mirror cr-sqlite's `is_table_compatible`, plus Corrosion's statement kinds and
/// NOT NULL primary keys.
pub fn corrosion_violations(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let conn = match Connection::open_in_memory() {
        Ok(conn) => conn,
        Err(e) => return vec![format!("no in-memory database: {e}")],
    };
    let mut batch = Batch::new(&conn, sql);
    loop {
        let mut stmt = match batch.next() {
            Ok(Some(stmt)) => stmt,
            Ok(None) => break,
            Err(e) => {
                out.push(format!("does not parse: {e}"));
                return out;
            }
        };
        let text = stmt.expanded_sql().unwrap_or_default();
        let words = leading_words(&text, 2);
        let kind_ok = words.first().is_some_and(|w| w == "CREATE")
            && words.get(1).is_some_and(|w| w == "TABLE" || w == "INDEX");
        if !kind_ok {
            out.push(format!(
                "only CREATE TABLE and CREATE INDEX are allowed: {}",
                one_line(&text)
            ));
        }
        if let Err(e) = stmt.execute([]) {
            out.push(format!("fails: {e}: {}", one_line(&text)));
        }
    }
    let objects = match objects(&conn) {
        Ok(objects) => objects,
        Err(e) => return vec![format!("reading the schema back: {e}")],
    };
    for object in objects.iter().filter(|o| o.kind == "table") {
        let table = &object.name;
        if let Err(e) = check_table(&conn, object, &mut out) {
            out.push(format!("{table}: reading its definition: {e}"));
        }
    }
    out
}

/// A DEFAULT that is a literal: the same on every replica, and one `ALTER TABLE ... ADD
/// COLUMN` accepts (it refuses expressions and `CURRENT_*`).
fn is_literal(default: &str) -> bool {
    let d = default.trim();
    let unsigned = d.trim_start_matches(['+', '-']);
    let quoted = |q: char| d.len() >= 2 && d.starts_with(q) && d.ends_with(q);
    quoted('\'')
        || quoted('"')
        || ((d.starts_with("X'") || d.starts_with("x'")) && d.ends_with('\''))
        || ["NULL", "TRUE", "FALSE"]
            .iter()
            .any(|k| d.eq_ignore_ascii_case(k))
        || (!unsigned.is_empty()
            && unsigned.parse::<f64>().is_ok()
            && !unsigned.contains(['i', 'I', 'n', 'N']))
        || (unsigned.len() > 2
            && unsigned[..2].eq_ignore_ascii_case("0x")
            && unsigned[2..].bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_table(conn: &Connection, object: &Object, out: &mut Vec<String>) -> rusqlite::Result<()> {
    let table = &object.name;
    let cols = columns(conn, table)?;
    if !cols.iter().any(|c| c.pk > 0) {
        out.push(format!("{table}: no primary key"));
    }
    for c in &cols {
        if c.pk > 0 && !c.not_null {
            out.push(format!(
                "{table}.{}: primary key column is nullable",
                c.name
            ));
        }
        if c.pk == 0 && c.not_null && c.default.is_none() {
            out.push(format!("{table}.{}: NOT NULL without a DEFAULT", c.name));
        }
        if let Some(default) = &c.default {
            if !is_literal(default) {
                out.push(format!(
                    "{table}.{}: DEFAULT {default} is not a constant (replicas would differ, \
                     and ADD COLUMN refuses it)",
                    c.name
                ));
            }
        }
    }
    let mut stmt = conn.prepare(
        "SELECT name, origin FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND origin != 'pk'",
    )?;
    let uniques = stmt
        .query_map([table], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (index, origin) in uniques {
        let how = if origin == "u" {
            "a UNIQUE constraint"
        } else {
            "a unique index"
        };
        out.push(format!("{table}: {how} ({index}) besides the primary key"));
    }
    let fks: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_foreign_key_list(?1)",
        [table],
        |row| row.get(0),
    )?;
    if fks > 0 {
        out.push(format!("{table}: foreign key constraints"));
    }
    if object.sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
        out.push(format!("{table}: AUTOINCREMENT"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testutil::TempDir;

    #[test]
    fn shipped_schema_follows_corrosion_rules() {
        let violations = corrosion_violations(SCHEMA);
        assert!(violations.is_empty(), "violations: {violations:#?}");
    }

    #[test]
    fn shipped_schema_has_the_v2_tables() -> anyhow::Result<()> {
        let conn = reference()?;
        let names: Vec<String> = objects(&conn)?
            .into_iter()
            .filter(|o| o.kind == "table")
            .map(|o| o.name)
            .collect();
        assert_eq!(names, TABLES);
        let health = columns(&conn, "health")?;
        let pk: Vec<&str> = health
            .iter()
            .filter(|c| c.pk > 0)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(pk, ["pop_id", "backend_id"], "health is keyed by its POP");
        Ok(())
    }

    #[test]
    fn checker_catches_each_rule() {
        let cases = [
            ("CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a TEXT UNIQUE);", "UNIQUE constraint"),
            (
                "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a TEXT);\
                 CREATE UNIQUE INDEX t_a ON t (a);",
                "unique index",
            ),
            ("CREATE TABLE t (id TEXT PRIMARY KEY);", "nullable"),
            ("CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a TEXT NOT NULL);", "without a DEFAULT"),
            ("CREATE TABLE t (a TEXT);", "no primary key"),
            ("CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT);", "AUTOINCREMENT"),
            (
                "CREATE TABLE p (id TEXT NOT NULL PRIMARY KEY);\
                 CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, p TEXT REFERENCES p (id));",
                "foreign key",
            ),
            (
                "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, at INTEGER NOT NULL DEFAULT (unixepoch()));",
                "not a constant",
            ),
            (
                "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY);\
                 CREATE VIEW v AS SELECT id FROM t;",
                "only CREATE TABLE",
            ),
            ("CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY); INSERT INTO t VALUES ('x');", "only CREATE TABLE"),
            ("CREATE TABLE t (", "does not parse"),
        ];
        for (sql, expected) in cases {
            let violations = corrosion_violations(sql);
            assert!(
                violations.iter().any(|v| v.contains(expected)),
                "{sql}: expected a violation mentioning {expected:?}, got {violations:?}"
            );
        }
    }

    #[test]
    fn literal_defaults() {
        for ok in [
            "0", "-1", "+2.5", "'tcp'", "'{}'", "\"x\"", "NULL", "x'00'", "0x1F", "1e3",
        ] {
            assert!(is_literal(ok), "{ok}");
        }
        for bad in [
            "unixepoch()",
            "CURRENT_TIMESTAMP",
            "1 + 1",
            "abs(-1)",
            "inf",
            "NaN",
            "",
        ] {
            assert!(!is_literal(bad), "{bad}");
        }
    }

    #[test]
    fn leading_words_skip_comments() {
        assert_eq!(
            leading_words("-- a\n /* b */ create   table(x", 2),
            ["CREATE", "TABLE"]
        );
        assert_eq!(leading_words("-- only a comment", 2), Vec::<String>::new());
    }

    #[test]
    fn apply_is_idempotent_and_adds_missing_columns() -> anyhow::Result<()> {
        let dir = TempDir::new("schema")?;
        let path = dir.path().join("routing.db");
        let mut conn = Connection::open(&path)?;
        // An older v2 file: backends without metadata, no health table, no index.
        conn.execute_batch(
            "CREATE TABLE backends (id TEXT NOT NULL PRIMARY KEY, service_id TEXT NOT NULL \
             DEFAULT '', address TEXT NOT NULL DEFAULT '');\
             INSERT INTO backends (id, service_id, address) VALUES ('b1', 's1', 'fd00::1');",
        )?;
        apply(&mut conn, &path)?;
        apply(&mut conn, &path)?;
        let reference = reference()?;
        assert!(plan(&conn, &reference)?.is_empty(), "nothing left to apply");
        let metadata: String =
            conn.query_row("SELECT metadata FROM backends WHERE id = 'b1'", [], |r| {
                r.get(0)
            })?;
        assert_eq!(metadata, "{}", "added column takes its default");
        let (created_at, lease_pop): (i64, String) = conn.query_row(
            "SELECT created_at, lease_pop FROM backends WHERE id = 'b1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        assert_eq!(
            (created_at, lease_pop.as_str()),
            (0, ""),
            "an existing row's age and lease POP are not known"
        );
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        assert_eq!(version, SCHEMA_VERSION);
        Ok(())
    }

    #[test]
    fn apply_refuses_a_v1_file() -> anyhow::Result<()> {
        let dir = TempDir::new("schema-v1")?;
        let path = dir.path().join("routing.db");
        let mut conn = Connection::open(&path)?;
        conn.execute_batch(crate::state::import_v1::tests::V1_SCHEMA)?;
        match apply(&mut conn, &path) {
            Err(StateError::V1Database { .. }) => Ok(()),
            other => anyhow::bail!("expected V1Database, got {other:?}"),
        }
    }
}
