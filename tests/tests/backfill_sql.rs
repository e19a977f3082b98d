//! Backfill and reconciliation on real servers through the sqlx sources and
//! sinks: users move from MariaDB (`first`, `last`, `email`, `created`,
//! `score`) to PostgreSQL (`user_id`, `full_name`, `email`, `created_at`,
//! `score`) through a mapping; the job stops and resumes from its
//! checkpoint, never overwrites a live row, runs in parallel over key
//! ranges, and reconciliation with range digests finds and repairs planted
//! drift reading only the ranges that differ.
//!
//! Needs `DUALWRITE_MARIADB_URL` and `DUALWRITE_POSTGRES_URL` (`.ci/run`
//! sets both); without them each test says it skipped, except under CI.

use dualwrite_runtime::backfill::sqlx::mysql::{
    MySqlCheckpoint, MySqlRepair, MySqlSink, MySqlSource,
};
use dualwrite_runtime::backfill::sqlx::postgres::{PgCheckpoint, PgRepair, PgSink, PgSource};
use dualwrite_runtime::backfill::sqlx::{SqlRow, SqlTable, SqlValue, column_diff};
use dualwrite_runtime::backfill::{
    Backfill, BackfillControl, BackfillError, BackfillSink, BackfillSource, KeyRange,
    ParallelBackfill,
};
use dualwrite_runtime::reconcile::{Difference, Reconcile};
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, Row};

fn servers(test: &str) -> Option<(String, String)> {
    let maria = std::env::var("DUALWRITE_MARIADB_URL").ok();
    let pg = std::env::var("DUALWRITE_POSTGRES_URL").ok();
    match (maria, pg) {
        (Some(maria), Some(pg)) => Some((maria, pg)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must set DUALWRITE_MARIADB_URL and DUALWRITE_POSTGRES_URL (.ci/run does)")
        }
        _ => {
            eprintln!(
                "skipped: {test}: set DUALWRITE_MARIADB_URL and DUALWRITE_POSTGRES_URL to run against real servers"
            );
            None
        }
    }
}

/// Connections for the test's own setup and checks (the jobs open theirs).
struct Servers {
    rt: tokio::runtime::Runtime,
    maria: MySqlPool,
    pg: PgPool,
    maria_url: String,
    pg_url: String,
    /// The old (MariaDB) and new (PostgreSQL) table names of this test.
    old: String,
    new: String,
}

const ROWS: i64 = 3_000;

impl Servers {
    fn connect(test: &str) -> Option<Self> {
        let (maria_url, pg_url) = servers(test)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let maria = rt
            .block_on(MySqlPool::connect(&maria_url))
            .expect("connect to MariaDB");
        let pg = rt
            .block_on(PgPool::connect(&pg_url))
            .expect("connect to PostgreSQL");
        let id = std::process::id();
        Some(Servers {
            rt,
            maria,
            pg,
            maria_url,
            pg_url,
            old: format!("dw_bfsql_{test}_old_{id}"),
            new: format!("dw_bfsql_{test}_new_{id}"),
        })
    }

    fn maria(&self, sql: String) {
        self.rt
            .block_on(sqlx::query(AssertSqlSafe(sql)).execute(&self.maria))
            .expect("MariaDB statement");
    }

    fn pg(&self, sql: String) {
        self.rt
            .block_on(sqlx::query(AssertSqlSafe(sql)).execute(&self.pg))
            .expect("PostgreSQL statement");
    }

    fn pg_scalar(&self, sql: String) -> i64 {
        self.rt
            .block_on(sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&self.pg))
            .expect("PostgreSQL query")
    }

    /// The old table with `ROWS` users, the new one empty.
    fn tables(&self) {
        let (old, new) = (&self.old, &self.new);
        self.maria(format!("DROP TABLE IF EXISTS {old}"));
        self.maria(format!(
            "CREATE TABLE {old} (id BIGINT PRIMARY KEY, first VARCHAR(50) NOT NULL, last VARCHAR(50) NOT NULL,
             email VARCHAR(100) NULL, created DATETIME NOT NULL, score DECIMAL(10,2) NOT NULL)"
        ));
        self.pg(format!("DROP TABLE IF EXISTS {new}"));
        self.pg(format!(
            "CREATE TABLE {new} (user_id BIGINT PRIMARY KEY, full_name TEXT NOT NULL, email TEXT,
             created_at TIMESTAMP NOT NULL, score NUMERIC(10,2) NOT NULL)"
        ));
        for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(500) {
            let values: Vec<String> = chunk
                .iter()
                .map(|id| {
                    let email = if id % 7 == 0 {
                        "NULL".to_owned()
                    } else {
                        format!("'user{id}@example.com'")
                    };
                    format!(
                        "({id}, 'First{id}', 'Last{}', {email}, '2024-01-{:02} 10:{:02}:00', {}.{:02})",
                        id % 97,
                        id % 28 + 1,
                        id % 60,
                        id % 1000,
                        id % 100
                    )
                })
                .collect();
            self.maria(format!(
                "INSERT INTO {old} (id, first, last, email, created, score) VALUES {}",
                values.join(", ")
            ));
        }
    }

    fn old_table(&self) -> SqlTable {
        SqlTable::new(
            &self.old,
            "id",
            &["first", "last", "email", "created", "score"],
        )
        .expect("old table")
    }

    fn new_table(&self) -> SqlTable {
        SqlTable::new(
            &self.new,
            "user_id",
            &["full_name", "email", "created_at", "score"],
        )
        .expect("new table")
    }

    fn drop_tables(&self) {
        self.maria(format!("DROP TABLE IF EXISTS {}", self.old));
        self.pg(format!("DROP TABLE IF EXISTS {}", self.new));
        self.pg(format!(
            "DELETE FROM dualwrite_backfill_checkpoint WHERE job LIKE '{}%'",
            self.old
        ));
    }
}

/// The schema change: `first` and `last` become `full_name`; the rest
/// keeps its value (dates and decimals travel as text).
fn to_new(row: SqlRow) -> SqlRow {
    let mut values = row.into_iter();
    let first = values.next().unwrap_or(SqlValue::Null);
    let last = values.next().unwrap_or(SqlValue::Null);
    let full_name = match (first.as_str(), last.as_str()) {
        (Some(first), Some(last)) => SqlValue::Text(format!("{first} {last}")),
        _ => SqlValue::Null,
    };
    std::iter::once(full_name).chain(values).collect()
}

/// A sink that stops its job after `batches` batches.
struct StopAfter<S> {
    sink: S,
    batches: usize,
    control: BackfillControl,
}

impl<S: BackfillSink> BackfillSink for StopAfter<S> {
    type Key = S::Key;
    type Row = S::Row;

    fn write_if_absent(&mut self, rows: &[(S::Key, S::Row)]) -> Result<u64, BackfillError> {
        self.batches = self.batches.saturating_sub(1);
        if self.batches == 0 {
            self.control.stop();
        }
        self.sink.write_if_absent(rows)
    }
}

#[test]
fn mariadb_to_postgres_backfill_maps_resumes_and_keeps_live_rows() {
    let Some(s) = Servers::connect("resume") else {
        return;
    };
    s.tables();
    // Two rows a live dual write put in New before the backfill reached
    // them: they are newer and must stay.
    s.pg(format!(
        "INSERT INTO {} (user_id, full_name, email, created_at, score) VALUES
         (10, 'Live Ten', 'live10@example.com', '2025-06-01 00:00:00', 1.00),
         (2500, 'Live Twenty-Five Hundred', NULL, '2025-06-01 00:00:00', 2.00)",
        s.new
    ));
    let job = s.old.clone();
    let control = BackfillControl::default();
    let first = Backfill::mapped(
        MySqlSource::<i64>::connect(&s.maria_url, &s.old_table()).expect("source"),
        StopAfter {
            sink: PgSink::<i64>::connect(&s.pg_url, &s.new_table()).expect("sink"),
            batches: 4,
            control: control.clone(),
        },
        to_new,
    )
    .with_batch(250)
    .with_control(control)
    .with_checkpoint(PgCheckpoint::connect(&s.pg_url, &job).expect("checkpoint"))
    .run()
    .expect("first run");
    assert!(!first.finished, "{first:?}");
    assert_eq!((first.rows, first.written), (1_000, 999), "{first:?}");
    assert_eq!(
        s.pg_scalar(format!("SELECT count(*) FROM {}", s.new)),
        1_001
    );

    let second = Backfill::mapped(
        MySqlSource::<i64>::connect(&s.maria_url, &s.old_table()).expect("source"),
        PgSink::<i64>::connect(&s.pg_url, &s.new_table()).expect("sink"),
        to_new,
    )
    .with_batch(250)
    .with_checkpoint(PgCheckpoint::connect(&s.pg_url, &job).expect("checkpoint"))
    .run()
    .expect("resumed run");
    assert!(second.finished, "{second:?}");
    assert_eq!(second.resumed_after.as_deref(), Some("1000"));
    assert_eq!((second.rows, second.written), (2_000, 1_999), "{second:?}");
    assert_eq!(s.pg_scalar(format!("SELECT count(*) FROM {}", s.new)), ROWS);

    // The mapping, and the types that crossed as text.
    let row = s
        .rt
        .block_on(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT full_name, email, CAST(created_at AS text), CAST(score AS text) FROM {} WHERE user_id = 1234",
                s.new
            )))
            .fetch_one(&s.pg),
        )
        .expect("row 1234");
    assert_eq!(row.get::<String, _>(0), "First1234 Last70");
    assert_eq!(
        row.get::<Option<String>, _>(1).as_deref(),
        Some("user1234@example.com")
    );
    assert_eq!(row.get::<String, _>(2), "2024-01-03 10:34:00");
    assert_eq!(row.get::<String, _>(3), "234.34");
    let nulls = s.pg_scalar(format!(
        "SELECT count(*) FROM {} WHERE email IS NULL",
        s.new
    ));
    assert_eq!(nulls, ROWS / 7 + 1, "NULL emails, and the live row's");
    // Live rows won.
    for (id, name) in [(10, "Live Ten"), (2500, "Live Twenty-Five Hundred")] {
        let found: String =
            s.rt.block_on(
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT full_name FROM {} WHERE user_id = {id}",
                    s.new
                )))
                .fetch_one(&s.pg),
            )
            .expect("live row");
        assert_eq!(found, name);
    }
    s.drop_tables();
}

type Job = Reconcile<
    MySqlSource<i64>,
    PgSource<i64>,
    fn(SqlRow) -> SqlRow,
    Box<dyn FnMut(&SqlRow, &SqlRow) -> Option<Vec<String>>>,
>;

/// Reconciliation of the two tables, with range digests over the columns
/// both schemas can print alike.
fn reconcile(s: &Servers) -> Job {
    let old = MySqlSource::connect(&s.maria_url, &s.old_table())
        .expect("old")
        .with_digest(&["CONCAT(first, ' ', last)", "email", "score"])
        .expect("old digest");
    let new = PgSource::connect(&s.pg_url, &s.new_table())
        .expect("new")
        .with_digest(&["full_name", "email", "score"])
        .expect("new digest");
    Reconcile::mapped(
        old,
        new,
        to_new as fn(SqlRow) -> SqlRow,
        Box::new(column_diff(&["full_name", "email", "created_at", "score"]))
            as Box<dyn FnMut(&SqlRow, &SqlRow) -> Option<Vec<String>>>,
    )
    .with_batch(200)
}

#[test]
fn parallel_backfill_then_digests_find_and_repair_planted_drift() {
    let Some(s) = Servers::connect("digest") else {
        return;
    };
    s.tables();
    // Parallel: four ranges sampled from MariaDB, two workers, one
    // checkpoint entry per range.
    let boundaries = MySqlSource::<i64>::connect(&s.maria_url, &s.old_table())
        .expect("source")
        .boundaries(800)
        .expect("boundaries");
    let ranges = KeyRange::split(boundaries);
    assert_eq!(ranges.len(), 4, "{ranges:?}");
    let report = ParallelBackfill::new(ranges)
        .with_workers(2)
        .with_batch(300)
        .run(
            |range| {
                Ok((
                    MySqlSource::<i64>::connect(&s.maria_url, &s.old_table())?,
                    PgSink::<i64>::connect(&s.pg_url, &s.new_table())?,
                    PgCheckpoint::connect(&s.pg_url, format!("{} {}", s.old, range.label()))?,
                ))
            },
            to_new,
        )
        .expect("parallel backfill");
    assert!(report.finished, "{report:?}");
    assert_eq!((report.rows, report.written), (3_000, 3_000));
    assert_eq!(
        s.pg_scalar(format!(
            "SELECT count(*) FROM dualwrite_backfill_checkpoint WHERE job LIKE '{}%'",
            s.old
        )),
        4
    );
    assert_eq!(
        s.pg_scalar(format!(
            "SELECT rows_done FROM dualwrite_backfill_checkpoint WHERE job = '{} (800..1600]'",
            s.old
        )),
        800
    );

    // Equal data: the whole table's digests agree, no row is read.
    let equal = reconcile(&s).run_with_digests(500).expect("digests");
    assert_eq!(equal.found(), 0, "{equal}");
    assert_eq!((equal.ranges, equal.ranges_differing), (1, 0), "{equal}");
    assert_eq!((equal.old_rows, equal.new_rows), (0, 0), "{equal}");
    assert_eq!(equal.equal, 3_000);

    // Drift in one range (1001..=1500): a row missing, a row different.
    s.pg(format!("DELETE FROM {} WHERE user_id = 1111", s.new));
    s.pg(format!(
        "UPDATE {} SET full_name = 'Renamed' WHERE user_id = 1222",
        s.new
    ));
    let found = reconcile(&s).run_with_digests(500).expect("digests");
    assert_eq!(
        (found.missing_in_new, found.different, found.extra_in_new),
        (1, 1, 0),
        "{found}"
    );
    assert_eq!((found.ranges, found.ranges_differing), (8, 1), "{found}");
    assert_eq!(
        (found.old_rows, found.new_rows),
        (500, 499),
        "only the drifted range is read: {found}"
    );
    assert!(found.differences.contains(&Difference::Different {
        key: "1222".to_owned(),
        fields: vec!["full_name".to_owned()],
    }));

    // An extra row past the old store's last key falls in the last range.
    s.pg(format!(
        "INSERT INTO {} (user_id, full_name, email, created_at, score) VALUES (9999, 'Ghost', NULL, '2025-01-01', 0)",
        s.new
    ));
    let mut repair = PgRepair::<i64>::connect(&s.pg_url, &s.new_table()).expect("repair");
    let repaired = reconcile(&s)
        .repair_with_digests(500, &mut repair)
        .expect("repair");
    assert_eq!((repaired.found(), repaired.gap()), (3, 0), "{repaired}");
    assert_eq!(repaired.ranges_differing, 2, "{repaired}");
    let after = reconcile(&s).run_with_digests(500).expect("digests");
    assert_eq!((after.found(), after.ranges_differing), (0, 0), "{after}");
    // The row-by-row pass agrees.
    let rows = reconcile(&s).run().expect("row by row");
    assert_eq!((rows.found(), rows.equal), (0, 3_000), "{rows}");
    s.drop_tables();
}

/// The reverse direction (PostgreSQL to MariaDB, as a rollback after
/// cutover would copy): the MariaDB sink keeps live rows, the MariaDB
/// repair sink closes drift, and the sink refuses a batch MariaDB would
/// change on the way in rather than write it.
#[test]
fn postgres_to_mariadb_sink_keeps_live_rows_and_refuses_silent_changes() {
    let Some(s) = Servers::connect("reverse") else {
        return;
    };
    let (src, dst) = (&s.new, &s.old);
    s.pg(format!("DROP TABLE IF EXISTS {src}"));
    s.pg(format!(
        "CREATE TABLE {src} (id BIGINT PRIMARY KEY, name TEXT, note TEXT)"
    ));
    s.pg(format!(
        "INSERT INTO {src} (id, name, note) SELECT g, 'name ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' END FROM generate_series(1, 700) g"
    ));
    s.maria(format!("DROP TABLE IF EXISTS {dst}"));
    s.maria(format!(
        "CREATE TABLE {dst} (id BIGINT PRIMARY KEY, name VARCHAR(20) NOT NULL, note VARCHAR(5) NULL)"
    ));
    s.maria(format!(
        "INSERT INTO {dst} (id, name, note) VALUES (5, 'live five', 'live')"
    ));
    let table = |name: &str| SqlTable::new(name, "id", &["name", "note"]).expect("table");
    let report = Backfill::new(
        PgSource::<i64>::connect(&s.pg_url, &table(src)).expect("source"),
        MySqlSink::<i64>::connect(&s.maria_url, &table(dst)).expect("sink"),
    )
    .with_batch(256)
    .with_checkpoint(
        MySqlCheckpoint::connect(&s.maria_url, format!("{dst} reverse")).expect("checkpoint"),
    )
    .run()
    .expect("backfill");
    assert!(report.finished);
    assert_eq!((report.rows, report.written), (700, 699), "{report:?}");
    let (count, live): (i64, String) =
        s.rt.block_on(async {
            let count = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {dst}")))
                .fetch_one(&s.maria)
                .await?;
            let live = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT name FROM {dst} WHERE id = 5"
            )))
            .fetch_one(&s.maria)
            .await?;
            Ok::<_, sqlx::Error>((count, live))
        })
        .expect("checked");
    assert_eq!((count, live.as_str()), (700, "live five"));

    // Drift in MariaDB (a row changed, one deleted, one extra) repaired
    // from PostgreSQL through the MariaDB repair sink.
    s.maria(format!("UPDATE {dst} SET note = 'x' WHERE id = 100"));
    s.maria(format!("DELETE FROM {dst} WHERE id = 200"));
    s.maria(format!(
        "INSERT INTO {dst} (id, name, note) VALUES (9000, 'extra', NULL)"
    ));
    let check = || {
        Reconcile::new(
            PgSource::<i64>::connect(&s.pg_url, &table(src)).expect("pg"),
            MySqlSource::<i64>::connect(&s.maria_url, &table(dst)).expect("maria"),
        )
    };
    let mut repair = MySqlRepair::<i64>::connect(&s.maria_url, &table(dst)).expect("repair");
    let repaired = check().repair_into(&mut repair).expect("repaired");
    // Key 5 holds the live row: different from PostgreSQL's history, and
    // PostgreSQL is authoritative here, so it is repaired too.
    assert_eq!(
        (
            repaired.different,
            repaired.missing_in_new,
            repaired.extra_in_new,
            repaired.gap()
        ),
        (2, 1, 1, 0),
        "{repaired}"
    );
    assert_eq!(check().run().expect("checked").found(), 0);

    // A name too long for VARCHAR(20): INSERT IGNORE would cut it and go
    // on; the sink rolls the batch back and says why.
    s.pg(format!(
        "INSERT INTO {src} (id, name, note) VALUES (800, 'a name much longer than twenty', NULL), (801, 'short', NULL)"
    ));
    let error = Backfill::new(
        PgSource::<i64>::connect(&s.pg_url, &table(src)).expect("source"),
        MySqlSink::<i64>::connect(&s.maria_url, &table(dst)).expect("sink"),
    )
    .with_checkpoint(
        MySqlCheckpoint::connect(&s.maria_url, format!("{dst} reverse")).expect("checkpoint"),
    )
    .run()
    .expect_err("refused");
    assert!(error.to_string().contains("rolled back"), "{error}");
    let count: i64 =
        s.rt.block_on(
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {dst}")))
                .fetch_one(&s.maria),
        )
        .expect("count");
    assert_eq!(count, 700, "neither row of the refused batch was written");
    s.maria(format!("DROP TABLE IF EXISTS {dst}"));
    s.maria(format!(
        "DELETE FROM dualwrite_backfill_checkpoint WHERE job = '{dst} reverse'"
    ));
    s.pg(format!("DROP TABLE IF EXISTS {src}"));
}

/// The same rows give the same range digest in SQLite, PostgreSQL and
/// MariaDB: the row text and hash are defined alike in all three.
#[test]
fn sqlite_postgres_and_mariadb_digests_agree() {
    use dualwrite_runtime::backfill::sqlite::SqliteSource;
    use dualwrite_runtime::reconcile::DigestSource;

    let Some(s) = Servers::connect("agree") else {
        return;
    };
    let t = &s.old;
    let rows = "(1, 'Ann', 7), (2, NULL, -3), (30, 'Zoë ü', NULL), (44, '', 0)";
    s.maria(format!("DROP TABLE IF EXISTS {t}"));
    s.maria(format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, name VARCHAR(20) NULL, n BIGINT NULL)"
    ));
    s.maria(format!("INSERT INTO {t} (id, name, n) VALUES {rows}"));
    s.pg(format!("DROP TABLE IF EXISTS {t}"));
    s.pg(format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, name TEXT NULL, n BIGINT NULL)"
    ));
    s.pg(format!("INSERT INTO {t} (id, name, n) VALUES {rows}"));
    let lite = rusqlite::Connection::open_in_memory().expect("sqlite");
    // dualwrite-lint: allow(DW002) test data, written to each store on its own
    lite.execute_batch(&format!(
        "CREATE TABLE {t} (id INTEGER PRIMARY KEY, name TEXT, n INTEGER);
         INSERT INTO {t} (id, name, n) VALUES {rows};"
    ))
    .expect("sqlite rows");
    let table = SqlTable::new(t, "id", &["name", "n"]).expect("table");
    let expressions = ["name", "n"];
    let mut maria = MySqlSource::<i64>::connect(&s.maria_url, &table)
        .and_then(|source| source.with_digest(&expressions))
        .expect("MariaDB");
    let mut pg = PgSource::<i64>::connect(&s.pg_url, &table)
        .and_then(|source| source.with_digest(&expressions))
        .expect("PostgreSQL");
    let mut sqlite = SqliteSource::<i64>::new(lite, t, "id", &["name", "n"])
        .with_digest(&expressions)
        .expect("SQLite");
    for (after, upto) in [(None, None), (Some(1), Some(30)), (Some(30), None)] {
        let a = maria
            .digest(after.as_ref(), upto.as_ref())
            .expect("MariaDB digest");
        let b = pg
            .digest(after.as_ref(), upto.as_ref())
            .expect("PostgreSQL digest");
        let c = sqlite
            .digest(after.as_ref(), upto.as_ref())
            .expect("SQLite digest");
        assert_eq!((a, a), (b, c), "range {after:?}..={upto:?}");
        assert!(a.rows > 0 && a.sum > 0);
    }
    s.maria(format!("DROP TABLE IF EXISTS {t}"));
    s.pg(format!("DROP TABLE IF EXISTS {t}"));
}

/// PostgreSQL to PostgreSQL with fast digests (`hashtextextended`, in the
/// server): equal tables read no row, a planted difference is found
/// reading only its range, a fast digest against an MD5 one is a clear
/// error, and rows equal only under a case-insensitive collation differ.
#[test]
fn postgres_fast_digests_skip_equal_ranges_and_find_drift() {
    let Some(s) = Servers::connect("pgfast") else {
        return;
    };
    let (a, b) = (&s.old, &s.new);
    for t in [a, b] {
        s.pg(format!("DROP TABLE IF EXISTS {t}"));
        s.pg(format!(
            "CREATE TABLE {t} (id BIGINT PRIMARY KEY, name TEXT NULL, n BIGINT NULL)"
        ));
        s.pg(format!(
            "INSERT INTO {t} (id, name, n) SELECT i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'user ' || i END, i * 3 FROM generate_series(1, {ROWS}) AS i"
        ));
    }
    let source = |t: &str, fast: bool| {
        let table = SqlTable::new(t, "id", &["name", "n"]).expect("table");
        let source = PgSource::<i64>::connect(&s.pg_url, &table).expect("source");
        if fast {
            source.with_fast_digest(&["name", "n"])
        } else {
            source.with_digest(&["name", "n"])
        }
        .expect("digest")
    };
    let job = |old_fast: bool, new_fast: bool| {
        Reconcile::new(source(a, old_fast), source(b, new_fast)).with_batch(250)
    };

    let equal = job(true, true).run_with_digests(500).expect("equal");
    assert_eq!((equal.found(), equal.equal), (0, 3_000), "{equal}");
    assert_eq!(
        (equal.ranges_differing, equal.old_rows, equal.new_rows),
        (0, 0, 0),
        "{equal}"
    );

    s.pg(format!("UPDATE {b} SET name = 'renamed' WHERE id = 1234"));
    s.pg(format!("UPDATE {b} SET n = NULL WHERE id = 2100"));
    let found = job(true, true).run_with_digests(500).expect("drifted");
    assert_eq!(
        (found.different, found.missing_in_new, found.extra_in_new),
        (2, 0, 0),
        "{found}"
    );
    assert_eq!((found.ranges, found.ranges_differing), (8, 2), "{found}");
    assert_eq!(
        (found.old_rows, found.new_rows),
        (1_000, 1_000),
        "only the drifted ranges are read: {found}"
    );

    // A fast digest against an MD5 one is refused, not compared.
    let mixed = job(true, false)
        .run_with_digests(500)
        .expect_err("mixed kinds");
    assert!(mixed.to_string().contains("different kinds"), "{mixed}");

    // Under a case-insensitive collation `Alice` and `alice` compare
    // equal, but they are different rows: the digest hashes the bytes.
    let ci = format!("{a}_ci");
    s.pg(format!(
        "CREATE COLLATION IF NOT EXISTS {ci} (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
    ));
    for (t, name) in [(a, "Alice"), (b, "alice")] {
        s.pg(format!("DROP TABLE IF EXISTS {t}"));
        s.pg(format!(
            "CREATE TABLE {t} (id BIGINT PRIMARY KEY, name TEXT COLLATE {ci} NULL, n BIGINT NULL)"
        ));
        s.pg(format!(
            "INSERT INTO {t} (id, name, n) VALUES (1, '{name}', 1)"
        ));
    }
    let cased = job(true, true).run_with_digests(500).expect("collation");
    assert_eq!(cased.different, 1, "{cased}");
    for t in [a, b] {
        s.pg(format!("DROP TABLE {t}"));
    }
    s.pg(format!("DROP COLLATION {ci}"));
}

/// Several processes share a parallel backfill's ranges through PostgreSQL
/// leases: each range is claimed by one of them, a range whose holder died
/// is claimed again once its lease expired, and a holder that lost its
/// lease is told so at its next checkpoint.
#[test]
fn postgres_leases_share_ranges_between_processes() {
    use dualwrite_runtime::backfill::Ranged;
    use dualwrite_runtime::backfill::sqlx::postgres::PgLeases;
    use std::time::Duration;

    let Some(s) = Servers::connect("leases") else {
        return;
    };
    s.tables();
    let job = format!("{} leases", s.old);
    let ranges = KeyRange::split(
        MySqlSource::<i64>::connect(&s.maria_url, &s.old_table())
            .expect("source")
            .boundaries(500)
            .expect("boundaries"),
    );
    assert_eq!(ranges.len(), 7);
    let leases = |owner: &str, ttl: Duration| {
        PgLeases::connect(&s.pg_url, &job, owner, ttl).expect("leases")
    };
    // A process that claims a range with a lease that expires at once, and
    // dies.
    let mut dead = leases("dead", Duration::ZERO);
    dead.register(&ranges).expect("registered");
    let abandoned = dead.claim::<i64>().expect("claim").expect("a range");
    let abandoned_label = abandoned.label().to_owned();
    drop(abandoned);

    let claimed: Vec<Vec<String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = ["w1", "w2"]
            .into_iter()
            .map(|owner| {
                let (s, ranges, leases) = (&s, &ranges, &leases);
                scope.spawn(move || {
                    let mut mine = leases(owner, Duration::from_secs(60));
                    mine.register(ranges).expect("registered");
                    let mut labels = Vec::new();
                    while let Some(lease) = mine.claim::<i64>().expect("claim") {
                        labels.push(lease.label().to_owned());
                        let range = lease.range().clone();
                        let checkpoint = PgCheckpoint::connect(
                            &s.pg_url,
                            format!("{} {}", s.old, lease.label()),
                        )
                        .expect("checkpoint");
                        let mut checkpoint = lease.checkpoint(checkpoint);
                        let report = Backfill::mapped(
                            Ranged::new(
                                MySqlSource::<i64>::connect(&s.maria_url, &s.old_table())
                                    .expect("source"),
                                range,
                            ),
                            PgSink::<i64>::connect(&s.pg_url, &s.new_table()).expect("sink"),
                            to_new,
                        )
                        .with_batch(200)
                        .with_checkpoint(&mut checkpoint)
                        .run()
                        .expect("range copied");
                        assert!(report.finished);
                        checkpoint.finish().expect("finished");
                    }
                    labels
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let mut all: Vec<String> = claimed.concat();
    assert_eq!(all.len(), 7, "each range claimed once: {claimed:?}");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 7, "{claimed:?}");
    assert!(all.contains(&abandoned_label));
    assert_eq!(dead.remaining().expect("remaining"), 0);
    assert_eq!(s.pg_scalar(format!("SELECT count(*) FROM {}", s.new)), ROWS);

    // A holder whose lease expired and was claimed by another is told at
    // its next renewal.
    s.pg(format!(
        "UPDATE dualwrite_backfill_leases SET done = false, owner = NULL WHERE job = '{job}'"
    ));
    let mut slow = leases("slow", Duration::ZERO);
    let mut lost = slow.claim::<i64>().expect("claim").expect("a range");
    let mut other = leases("other", Duration::from_secs(60));
    let taken = other
        .claim::<i64>()
        .expect("claim")
        .expect("the expired range");
    assert_eq!(taken.label(), lost.label());
    let error = lost.renew().expect_err("lost");
    assert!(error.to_string().contains("no longer held"), "{error}");
    taken.finish().expect("finished by its holder");

    s.pg(format!(
        "DELETE FROM dualwrite_backfill_leases WHERE job = '{job}'"
    ));
    s.drop_tables();
}
