//! Throughput of the backfill and of reconciliation on SQLite files,
//! against what SQLite does alone.
//!
//! ```text
//! cargo bench -p dualwrite-runtime --features sqlite --bench backfill
//! DUALWRITE_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo bench -p dualwrite-runtime --features sqlite,postgres --bench backfill
//! ```
//!
//! A `users` table of 100 000 rows (an integer key and five columns:
//! name, email, created_at, score, active; about 90 bytes a row) in a file
//! in a temporary directory, WAL journal, `synchronous = NORMAL` (the
//! setting a backfill target should run with: a commit is durable at the
//! next checkpoint, not fsynced one by one). Each case runs
//! `DW_BENCH_ROUNDS` times (default 5) and prints the median and the range
//! of its rows per second:
//!
//! * `raw copy, SELECT *`: `INSERT INTO main.users SELECT * FROM old.users`
//!   across ATTACHed files, one transaction: SQLite copies the records as
//!   they are (its transfer optimisation), the floor no row-based copy
//!   reaches;
//! * `raw copy, SELECT columns`: the same with the columns listed, as any
//!   copy that maps columns: rows decoded and encoded again;
//! * `backfill`: [`Backfill`] from a [`SqliteSource`] into a [`SqliteSink`]
//!   in batches of `DW_BENCH_BATCH` (default 1 000), a [`SqliteCheckpoint`]
//!   saved after each batch in the target file, with [`Backfill::run`];
//! * `backfill, read ahead`: the same with [`Backfill::run_read_ahead`]
//!   (the next batch is read on a second thread while one is written);
//! * `backfill, 2 workers`: [`ParallelBackfill`] over 8 key ranges sampled
//!   from the source, two at a time, each with its own connections and
//!   checkpoint entry;
//! * `raw dual scan`: both tables read in key order, every column of every
//!   row touched, nothing compared: the floor of a merge-join;
//! * `reconcile`: [`Reconcile`] row by row over equal tables;
//! * `reconcile, concurrent reads`: the same reading both stores at once
//!   ([`Reconcile::with_concurrent_reads`]);
//! * `reconcile, md5 digests`: [`Reconcile::run_with_digests`] over equal
//!   tables in ranges of 10 000 rows (nothing read row by row), with the
//!   portable MD5 digests ([`SqliteSource::with_digest`]);
//! * `reconcile, fast digests`: the same with SQLite-only fast digests
//!   ([`SqliteSource::with_fast_digest`]).
//!
//! With feature `postgres` and `DUALWRITE_POSTGRES_URL` set, a PostgreSQL
//! part follows: the same table copied between two tables of the server by
//! `COPY .. TO STDOUT` piped into `COPY .. FROM STDIN` (raw) and by the
//! backfill ([`dualwrite_runtime::backfill::sqlx::postgres::PgSink`], read
//! ahead), then reconciled row by row, with MD5 range digests and with
//! PostgreSQL's fast digests ([`PgSource::with_fast_digest`](dualwrite_runtime::backfill::sqlx::postgres::PgSource::with_fast_digest)).
//!
//! `DW_BENCH_ROWS` changes the row count, `DW_BENCH_MMAP=N` sets SQLite's
//! `mmap_size`. `DW_BENCH_ONLY` runs only the cases or groups it lists,
//! separated by commas: `backfill` (the copies and backfills), `reconcile`
//! (all reconciliation cases) or one of them: `scan` (raw dual scan),
//! `rowwise`, `concurrent`, `md5`, `fast`, and `postgres` (the PostgreSQL
//! part). `DW_BENCH_ONLY=rowwise DW_BENCH_ROUNDS=1` under
//! `valgrind --tool=callgrind` counts the row-by-row path alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dualwrite_runtime::backfill::sqlite::{SqliteCheckpoint, SqliteSink, SqliteSource};
use dualwrite_runtime::backfill::{Backfill, BackfillSource, KeyRange, ParallelBackfill};
use dualwrite_runtime::reconcile::Reconcile;
use rusqlite::Connection;

const COLUMNS: [&str; 5] = ["name", "email", "created_at", "score", "active"];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    let mmap = env("DW_BENCH_MMAP", 0);
    conn.execute_batch(&format!("PRAGMA mmap_size = {mmap};"))
        .expect("mmap_size");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 10000;
         CREATE TABLE IF NOT EXISTS users (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             email TEXT,
             created_at TEXT NOT NULL,
             score REAL NOT NULL,
             active INTEGER NOT NULL
         );",
    )
    .expect("schema");
    conn
}

fn history(path: &Path, rows: usize) {
    let conn = open(path);
    // dualwrite-lint: allow(DW002) the benchmark's history, in the old store only
    conn.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT INTO users
         SELECT i * 3,
                'Firstname' || i || ' Lastname' || (i % 977),
                CASE WHEN i % 11 = 0 THEN NULL ELSE 'user' || i || '@example.com' END,
                '2024-' || printf('%02d', i % 12 + 1) || '-' || printf('%02d', i % 28 + 1) || ' 12:34:56',
                (i % 10000) / 7.0,
                i % 2
         FROM n;"
    ))
    .expect("history");
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    drop(open(&path));
    path
}

fn raw_copy(old: &Path, new: &Path, columns: bool) -> Duration {
    let conn = open(new);
    conn.execute(
        "ATTACH DATABASE ?1 AS old",
        [old.to_str().expect("utf-8 path")],
    )
    .expect("attach");
    // `SELECT *` between tables of the same shape takes SQLite's transfer
    // optimisation (records copied as they are, never decoded); a column
    // list, as any copy that maps columns has, decodes and re-encodes.
    let sql = if columns {
        "BEGIN;
         INSERT INTO main.users (id, name, email, created_at, score, active)
             SELECT id, name, email, created_at, score, active FROM old.users;
         COMMIT;"
    } else {
        "BEGIN;
         INSERT INTO main.users SELECT * FROM old.users;
         COMMIT;"
    };
    let started = Instant::now();
    conn.execute_batch(sql).expect("copy");
    started.elapsed()
}

fn backfill(old: &Path, new: &Path, batch: usize, rows: usize, read_ahead: bool) -> Duration {
    let started = Instant::now();
    let mut job = Backfill::new(
        SqliteSource::<i64>::new(open(old), "users", "id", &COLUMNS),
        SqliteSink::<i64>::new(open(new), "users", "id", &COLUMNS),
    )
    .with_batch(batch)
    .with_checkpoint(SqliteCheckpoint::new(open(new), "bench").expect("checkpoint"));
    let report = if read_ahead {
        job.run_read_ahead()
    } else {
        job.run()
    }
    .expect("backfill");
    let elapsed = started.elapsed();
    assert_eq!(report.written, rows as u64);
    elapsed
}

/// The backfill in `workers` key ranges at once, each worker with its own
/// connections and checkpoint entry (writers take turns on the file's
/// write lock; reads overlap with writes).
fn parallel_backfill(
    old: &Path,
    new: &Path,
    batch: usize,
    rows: usize,
    workers: usize,
) -> Duration {
    let started = Instant::now();
    let boundaries = SqliteSource::<i64>::new(open(old), "users", "id", &COLUMNS)
        .boundaries(rows.div_ceil(workers * 4).max(1))
        .expect("boundaries");
    let report = ParallelBackfill::new(KeyRange::split(boundaries))
        .with_workers(workers)
        .with_batch(batch)
        .run(
            |range| {
                Ok((
                    SqliteSource::<i64>::new(open(old), "users", "id", &COLUMNS),
                    SqliteSink::<i64>::new(open(new), "users", "id", &COLUMNS),
                    SqliteCheckpoint::new(open(new), format!("bench {}", range.label()))?,
                ))
            },
            |row| row,
        )
        .expect("parallel backfill");
    let elapsed = started.elapsed();
    assert_eq!(report.written, rows as u64);
    elapsed
}

// Not inlined, so that callgrind can count it alone (`--toggle-collect=backfill::dual_scan`).
#[inline(never)]
fn dual_scan(old: &Path, new: &Path, rows: usize) -> Duration {
    let (a, b) = (open(old), open(new));
    let sql = "SELECT id, name, email, created_at, score, active FROM users ORDER BY id";
    let started = Instant::now();
    let (mut sa, mut sb) = (a.prepare(sql).expect("a"), b.prepare(sql).expect("b"));
    let (mut ra, mut rb) = (sa.query([]).expect("a"), sb.query([]).expect("b"));
    let mut seen = 0;
    let mut bytes = 0_usize;
    while let (Some(x), Some(y)) = (ra.next().expect("a"), rb.next().expect("b")) {
        for i in 0..6 {
            bytes += std::hint::black_box(x.get_ref(i).expect("x"))
                .as_bytes()
                .map_or(8, <[u8]>::len);
            bytes += std::hint::black_box(y.get_ref(i).expect("y"))
                .as_bytes()
                .map_or(8, <[u8]>::len);
        }
        seen += 1;
    }
    let elapsed = started.elapsed();
    assert_eq!(seen, rows);
    std::hint::black_box(bytes);
    elapsed
}

fn source(path: &Path) -> SqliteSource<i64> {
    SqliteSource::new(open(path), "users", "id", &COLUMNS)
}

fn reconcile(old: &Path, new: &Path, rows: usize) -> Duration {
    let started = Instant::now();
    let report = Reconcile::new(source(old), source(new))
        .run()
        .expect("reconcile");
    let elapsed = started.elapsed();
    assert_eq!((report.equal, report.found()), (rows as u64, 0));
    elapsed
}

fn reconcile_concurrent(old: &Path, new: &Path, rows: usize) -> Duration {
    let started = Instant::now();
    let report = Reconcile::new(source(old), source(new))
        .with_concurrent_reads()
        .run()
        .expect("reconcile");
    let elapsed = started.elapsed();
    assert_eq!((report.equal, report.found()), (rows as u64, 0));
    elapsed
}

fn reconcile_digests(old: &Path, new: &Path, rows: usize, fast: bool) -> Duration {
    let started = Instant::now();
    let digested = |path: &Path| {
        if fast {
            source(path).with_fast_digest(&COLUMNS).expect("digest")
        } else {
            source(path).with_digest(&COLUMNS).expect("digest")
        }
    };
    let report = Reconcile::new(digested(old), digested(new))
        .run_with_digests(10_000)
        .expect("reconcile");
    let elapsed = started.elapsed();
    assert_eq!(
        (report.rows_in_equal_ranges, report.old_rows, report.found()),
        (rows as u64, 0, 0)
    );
    elapsed
}

/// Median and range of rows per second over the rounds.
fn rates(rows: usize, times: &[Duration]) -> (f64, f64, f64) {
    let mut rates: Vec<f64> = times
        .iter()
        .map(|t| rows as f64 / t.as_secs_f64())
        .collect();
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}

fn print(name: &str, rows: usize, times: &[Duration], reference: Option<f64>) -> f64 {
    let (median, low, high) = rates(rows, times);
    let against = reference.map_or(String::new(), |r| {
        format!("  {:>5.1} %", 100.0 * median / r)
    });
    println!(
        "{name:<26} {:>10.0} rows/s  ({:.0}..{:.0}){against}",
        median, low, high
    );
    median
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let rows = env("DW_BENCH_ROWS", 100_000);
    let rounds = env("DW_BENCH_ROUNDS", 5).max(1);
    let batch = env("DW_BENCH_BATCH", 1_000);
    let dir = std::env::temp_dir().join(format!("dualwrite-bench-backfill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let old = fresh(&dir, "old.db");
    history(&old, rows);
    println!(
        "{rows} rows, {rounds} rounds, batches of {batch}; median rows/s (range), share of the raw case"
    );

    // `DW_BENCH_ONLY`: a comma-separated list of cases or groups to run.
    let only = std::env::var("DW_BENCH_ONLY").unwrap_or_default();
    let only: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|case| !case.is_empty())
        .collect();
    let wanted =
        |case: &str, group: &str| only.is_empty() || only.contains(&case) || only.contains(&group);

    let new = dir.join("new.db");
    if wanted("backfill", "backfill") {
        let (mut raw, mut listed, mut copied) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ahead, mut parallel) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let new = fresh(&dir, "raw.db");
            raw.push(raw_copy(&old, &new, false));
            let new = fresh(&dir, "listed.db");
            listed.push(raw_copy(&old, &new, true));
            let new = fresh(&dir, "parallel.db");
            parallel.push(parallel_backfill(&old, &new, batch, rows, 2));
            let new = fresh(&dir, "ahead.db");
            ahead.push(backfill(&old, &new, batch, rows, true));
            let new = fresh(&dir, "new.db");
            copied.push(backfill(&old, &new, batch, rows, false));
        }
        let raw = print("raw copy, SELECT *", rows, &raw, None);
        let listed = print("raw copy, SELECT columns", rows, &listed, Some(raw));
        for (name, times) in [
            ("backfill", &copied),
            ("backfill, read ahead", &ahead),
            ("backfill, 2 workers", &parallel),
        ] {
            let rate = print(name, rows, times, Some(raw));
            println!(
                "{:<26} {:>37.1} % of SELECT columns",
                "",
                100.0 * rate / listed
            );
        }
    } else {
        // The reconciliation cases compare `old.db` with an equal copy.
        raw_copy(&old, &fresh(&dir, "new.db"), false);
    }

    let (mut scans, mut rowwise, mut both) = (Vec::new(), Vec::new(), Vec::new());
    let (mut digests, mut fast) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        if wanted("scan", "reconcile") {
            scans.push(dual_scan(&old, &new, rows));
        }
        if wanted("rowwise", "reconcile") {
            rowwise.push(reconcile(&old, &new, rows));
        }
        if wanted("concurrent", "reconcile") {
            both.push(reconcile_concurrent(&old, &new, rows));
        }
        if wanted("md5", "reconcile") {
            digests.push(reconcile_digests(&old, &new, rows, false));
        }
        if wanted("fast", "reconcile") {
            fast.push(reconcile_digests(&old, &new, rows, true));
        }
    }
    let scan = (!scans.is_empty()).then(|| print("raw dual scan", rows, &scans, None));
    let rate = |name: &str, times: &[Duration]| {
        (!times.is_empty()).then(|| print(name, rows, times, scan))
    };
    let by_row = rate("reconcile, row by row", &rowwise);
    let by_row_both = rate("reconcile, concurrent reads", &both);
    let digest = rate("reconcile, md5 digests", &digests);
    let fast = rate("reconcile, fast digests", &fast);
    for (name, reference) in [
        ("row by row", by_row),
        ("row by row with concurrent reads", by_row_both),
    ] {
        let Some(reference) = reference.filter(|_| digest.is_some() || fast.is_some()) else {
            continue;
        };
        let ratio =
            |rate: Option<f64>| rate.map_or("-".to_owned(), |r| format!("{:.1}x", r / reference));
        println!(
            "digests / {name}: md5 {}, fast {}",
            ratio(digest),
            ratio(fast)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    #[cfg(feature = "postgres")]
    if !wanted("postgres", "postgres") {
        return;
    }
    #[cfg(feature = "postgres")]
    match std::env::var("DUALWRITE_POSTGRES_URL") {
        Ok(url) => postgres::run(&url, rows, rounds, batch),
        Err(_) => println!("PostgreSQL: skipped (set DUALWRITE_POSTGRES_URL)"),
    }
}

/// PostgreSQL to PostgreSQL (feature `postgres`, `DUALWRITE_POSTGRES_URL`):
/// the same table in two tables of one server, over loopback.
#[cfg(feature = "postgres")]
mod postgres {
    use std::time::{Duration, Instant};

    use dualwrite_runtime::backfill::Backfill;
    use dualwrite_runtime::backfill::sqlx::SqlTable;
    use dualwrite_runtime::backfill::sqlx::postgres::{PgCheckpoint, PgSink, PgSource};
    use dualwrite_runtime::reconcile::Reconcile;
    use sqlx::{AssertSqlSafe, Connection, PgConnection};

    use super::{COLUMNS, print};

    const OLD: &str = "dw_bench_backfill_old";
    const NEW: &str = "dw_bench_backfill_new";

    fn table(name: &str) -> SqlTable {
        SqlTable::new(name, "id", &COLUMNS).expect("table")
    }

    fn schema(name: &str) -> String {
        format!(
            "DROP TABLE IF EXISTS {name};
             CREATE TABLE {name} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, email TEXT,
                 created_at TIMESTAMP NOT NULL, score DOUBLE PRECISION NOT NULL, active BOOLEAN NOT NULL);"
        )
    }

    fn run_sql(rt: &tokio::runtime::Runtime, conn: &mut PgConnection, sql: String) {
        rt.block_on(sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn))
            .expect("PostgreSQL statement");
    }

    /// `COPY old TO STDOUT` piped into `COPY new FROM STDIN` on a second
    /// connection, chunk by chunk.
    fn copy_pipe(rt: &tokio::runtime::Runtime, url: &str) -> Duration {
        rt.block_on(async {
            let mut from = PgConnection::connect(url).await.expect("connect");
            let mut to = PgConnection::connect(url).await.expect("connect");
            let started = Instant::now();
            let mut out = from
                .copy_out_raw(&format!("COPY {OLD} TO STDOUT"))
                .await
                .expect("copy out");
            let mut copy_in = to
                .copy_in_raw(&format!("COPY {NEW} FROM STDIN"))
                .await
                .expect("copy in");
            while let Some(chunk) = std::future::poll_fn(|cx| out.as_mut().poll_next(cx)).await {
                copy_in.send(chunk.expect("chunk")).await.expect("send");
            }
            copy_in.finish().await.expect("finish");
            started.elapsed()
        })
    }

    pub fn run(url: &str, rows: usize, rounds: usize, batch: usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut conn = rt.block_on(PgConnection::connect(url)).expect("connect");
        run_sql(&rt, &mut conn, schema(OLD));
        run_sql(
            &rt,
            &mut conn,
            format!(
                "INSERT INTO {OLD} SELECT i * 3, 'Firstname' || i || ' Lastname' || (i % 977),
                 CASE WHEN i % 11 = 0 THEN NULL ELSE 'user' || i || '@example.com' END,
                 timestamp '2024-01-01 12:34:56' + (i % 300) * interval '1 day',
                 (i % 10000) / 7.0, i % 2 = 1
             FROM generate_series(1, {rows}) AS i;
             ANALYZE {OLD};"
            ),
        );
        println!("PostgreSQL (loopback, one server, synchronous_commit on)");
        let (mut raw, mut copied) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            run_sql(&rt, &mut conn, schema(NEW));
            raw.push(copy_pipe(&rt, url));
            run_sql(&rt, &mut conn, schema(NEW));
            let mut checkpoint = PgCheckpoint::connect(url, "bench").expect("checkpoint");
            dualwrite_runtime::backfill::Checkpoint::clear(&mut checkpoint).expect("clear");
            let started = Instant::now();
            let report = Backfill::new(
                PgSource::<i64>::connect(url, &table(OLD)).expect("source"),
                PgSink::<i64>::connect(url, &table(NEW)).expect("sink"),
            )
            .with_batch(batch)
            .with_checkpoint(checkpoint)
            .run_read_ahead()
            .expect("backfill");
            copied.push(started.elapsed());
            assert_eq!(report.written, rows as u64);
        }
        let raw = print("raw COPY out | COPY in", rows, &raw, None);
        print("backfill, read ahead", rows, &copied, Some(raw));
        let (mut rowwise, mut digests, mut fast) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let started = Instant::now();
            let report = Reconcile::new(
                PgSource::<i64>::connect(url, &table(OLD)).expect("old"),
                PgSource::<i64>::connect(url, &table(NEW)).expect("new"),
            )
            .run()
            .expect("reconcile");
            rowwise.push(started.elapsed());
            assert_eq!(report.equal, rows as u64);
            for (is_fast, times) in [(false, &mut digests), (true, &mut fast)] {
                let started = Instant::now();
                let digested = |name| {
                    PgSource::<i64>::connect(url, &table(name))
                        .and_then(|source| {
                            if is_fast {
                                source.with_fast_digest(&COLUMNS)
                            } else {
                                source.with_digest(&COLUMNS)
                            }
                        })
                        .expect("digest")
                };
                let report = Reconcile::new(digested(OLD), digested(NEW))
                    .run_with_digests(10_000)
                    .expect("reconcile");
                times.push(started.elapsed());
                assert_eq!(
                    (report.rows_in_equal_ranges, report.old_rows),
                    (rows as u64, 0)
                );
            }
        }
        let by_row = print("reconcile, row by row", rows, &rowwise, None);
        let digest = print("reconcile, md5 digests", rows, &digests, None);
        let fast = print("reconcile, fast digests", rows, &fast, None);
        println!(
            "digests / row by row: md5 {:.1}x, fast {:.1}x",
            digest / by_row,
            fast / by_row
        );
        run_sql(
            &rt,
            &mut conn,
            format!("DROP TABLE {OLD}; DROP TABLE {NEW};"),
        );
        run_sql(
            &rt,
            &mut conn,
            "DELETE FROM dualwrite_backfill_checkpoint WHERE job = 'bench'".to_owned(),
        );
    }
}
