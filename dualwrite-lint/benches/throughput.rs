//! Throughput of `check` against the physical limit of a syn-based tool.
//!
//! Corpus: every `.rs` file under `$DUALWRITE_BENCH_CORPUS`, or else the
//! cargo registry sources (`$CARGO_HOME/registry/src`, default
//! `~/.cargo/registry/src`). Measures
//!
//! (a) raw parallel `syn::parse_file` over the files `check` would parse
//!     (read into memory first; only parsing is timed; spans invalidated
//!     after each file, as the lint does, so memory stays bounded), and
//! (b) the full `check` pipeline on the same directory: walk, read,
//!     pre-checks, summarize, analyze, suppressions (output not rendered),
//!
//! and prints files, MB, files/s and MB/s for both, the ratio check/parse
//! (target <= 1.25) and the peak RSS. (a) and (b) alternate, in turns
//! first, `DUALWRITE_BENCH_RUNS` times (default 6); the best of each counts,
//! and the ratio of each pair and the CPU times are printed as well.
//!
//! `cargo bench -p dualwrite-lint --bench throughput`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dualwrite_lint::check::{self, CheckOptions, PARSE_STACK_SIZE};
use dualwrite_lint::config::Config;
use dualwrite_lint::intake;
use dualwrite_lint::walk::{self, WalkOptions};
use rayon::prelude::*;

fn corpus() -> PathBuf {
    if let Some(dir) = std::env::var_os("DUALWRITE_BENCH_CORPUS") {
        return PathBuf::from(dir);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("set CARGO_HOME, HOME or DUALWRITE_BENCH_CORPUS");
    cargo_home.join("registry/src")
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time used by the process so far (all threads, user + system), from
/// `/proc/self/stat` in clock ticks of 10 ms (`USER_HZ` is 100 on Linux).
/// Time the machine gave to other guests is not in it, which makes it
/// steadier than wall time on a shared VM.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// (a): parses every text in parallel, invalidating spans per file as
/// `check` does; returns how many parse.
fn raw_parse(pool: &rayon::ThreadPool, texts: &[String]) -> usize {
    pool.install(|| {
        texts
            .par_iter()
            .filter(|text| {
                let ok = syn::parse_file(text).is_ok();
                proc_macro2::extra::invalidate_current_thread_spans();
                ok
            })
            .count()
    })
}

fn rate(files: usize, bytes: u64, time: Duration) -> String {
    let secs = time.as_secs_f64();
    format!(
        "{:>8.3} s  {:>9.0} files/s  {:>7.1} MB/s",
        secs,
        files as f64 / secs,
        bytes as f64 / 1e6 / secs
    )
}

fn main() {
    let root = corpus()
        .canonicalize()
        .expect("the corpus directory exists");
    let runs: usize = std::env::var("DUALWRITE_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let config = Config::default();
    let walked = walk::walk(&WalkOptions {
        root: root.clone(),
        paths: vec![root.clone()],
        exclude: config.exclude.clone(),
        skip_test_files: false,
    });
    // The files `check` parses: the same intake (size, UTF-8, nesting).
    let texts: Vec<String> = walked
        .files
        .iter()
        .filter_map(|f| intake::read_source(&f.abs, config.max_file_size, config.max_nesting).ok())
        .collect();
    let bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
    println!(
        "corpus {}: {} .rs files walked, {} parsable by size/encoding/nesting, {:.1} MB",
        root.display(),
        walked.files.len(),
        texts.len(),
        bytes as f64 / 1e6
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .stack_size(PARSE_STACK_SIZE)
        .build()
        .expect("a thread pool");
    println!("threads: {}", pool.current_num_threads());

    let options = CheckOptions {
        paths: vec![root.clone()],
        root: Some(root.clone()),
        ..CheckOptions::default()
    };
    // (a) and (b) alternate, so drift on a shared machine hits both alike;
    // the best of each counts, and the ratio of each pair is shown too.
    let mut best_parse = Duration::MAX;
    let mut best_check = Duration::MAX;
    let mut pair_ratios = Vec::new();
    let mut cpu_parse = Duration::MAX;
    let mut cpu_check = Duration::MAX;
    let mut parsed_ok = 0;
    let mut report = None;
    // `DUALWRITE_BENCH_ONLY=parse|check` runs one side once and stops (to
    // count the instructions of each under callgrind).
    let only = std::env::var("DUALWRITE_BENCH_ONLY").ok();
    if only.is_some() {
        let start = Instant::now();
        let what = if only.as_deref() == Some("check") {
            let report = check::run(&options).expect("check runs");
            format!("check: {} findings", report.findings.len())
        } else {
            let parsed = raw_parse(&pool, &texts);
            format!("raw parse: {parsed} files parse")
        };
        println!("{what} in {:.3} s", start.elapsed().as_secs_f64());
        return;
    }
    // Each side's wall time and CPU time.
    let time = |work: &mut dyn FnMut()| {
        let cpu_start = cpu_time();
        let start = Instant::now();
        work();
        let wall = start.elapsed();
        let cpu = cpu_start.zip(cpu_time()).map(|(a, b)| b - a);
        (wall, cpu)
    };
    let mut raw_parse = || {
        parsed_ok = raw_parse(&pool, &texts);
    };
    let mut run_check = || report = Some(check::run(&options).expect("check runs"));
    for run in 0..runs {
        // The order alternates too, so neither side always runs second.
        let (parse, checked) = if run % 2 == 0 {
            let parse = time(&mut raw_parse);
            (parse, time(&mut run_check))
        } else {
            let checked = time(&mut run_check);
            (time(&mut raw_parse), checked)
        };
        best_parse = best_parse.min(parse.0);
        best_check = best_check.min(checked.0);
        if let (Some(a), Some(b)) = (parse.1, checked.1) {
            cpu_parse = cpu_parse.min(a);
            cpu_check = cpu_check.min(b);
        }
        pair_ratios.push(checked.0.as_secs_f64() / parse.0.as_secs_f64());
    }
    let report = report.expect("at least one run");

    println!(
        "(a) raw syn::parse_file : {}  ({} of {} parse)",
        rate(texts.len(), bytes, best_parse),
        parsed_ok,
        texts.len()
    );
    println!(
        "(b) dualwrite-lint check: {}  ({} files, {} findings)",
        rate(report.files_checked, report.bytes_checked, best_check),
        report.files_checked,
        report.findings.len()
    );
    println!(
        "ratio check/parse: {:.2} (target <= 1.25); run by run: {}",
        best_check.as_secs_f64() / best_parse.as_secs_f64(),
        pair_ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if cpu_parse != Duration::MAX {
        println!(
            "CPU time (all threads, best run): raw parse {:.2} s, check {:.2} s, ratio {:.2}",
            cpu_parse.as_secs_f64(),
            cpu_check.as_secs_f64(),
            cpu_check.as_secs_f64() / cpu_parse.as_secs_f64()
        );
    }
    if let Some(rss) = peak_rss_mib() {
        println!(
            "peak RSS: {rss:.0} MiB (corpus {:.0} MB held in memory for (a))",
            bytes as f64 / 1e6
        );
    }
    let mut dw000 = std::collections::BTreeMap::<String, usize>::new();
    for f in report
        .findings
        .iter()
        .filter(|f| f.rule == dualwrite_lint::finding::RuleId::DW000)
    {
        *dw000.entry(f.fingerprint.callee.clone()).or_default() += 1;
    }
    println!("DW000 by kind: {dw000:?}");
    for f in report
        .findings
        .iter()
        .filter(|f| f.rule == dualwrite_lint::finding::RuleId::DW000)
    {
        println!(
            "  {}:{}: {}",
            f.location.file, f.location.start_line, f.message
        );
    }

    // Where the time goes, one run each: the stages of `check` separately.
    let start = Instant::now();
    let walked = walk::walk(&WalkOptions {
        root: root.clone(),
        paths: vec![root.clone()],
        exclude: config.exclude.clone(),
        skip_test_files: false,
    });
    let walk_time = start.elapsed();
    let start = Instant::now();
    let read: Vec<String> = pool.install(|| {
        walked
            .files
            .par_iter()
            .filter_map(|f| {
                intake::read_source(&f.abs, config.max_file_size, config.max_nesting).ok()
            })
            .collect()
    });
    let read_time = start.elapsed();
    let start = Instant::now();
    // As `check` does: files that declare annotated traits first, then the
    // rest with only the calls of interest recorded.
    let summarize_pass = |interest: Option<&dualwrite_lint::analysis::Interest>| {
        pool.install(|| {
            read.par_iter()
                .zip(walked.files.par_iter())
                .filter(|(text, _)| {
                    interest.is_some() != dualwrite_lint::analysis::declares_annotated_traits(text)
                })
                .filter_map(|(text, file)| {
                    let summary = dualwrite_lint::analysis::summarize_with(
                        dualwrite_lint::analysis::SourceFile {
                            path: &file.rel,
                            text,
                            is_test_file: file.is_test_file,
                            dir: file.abs.parent(),
                        },
                        interest,
                    )
                    .ok();
                    proc_macro2::extra::invalidate_current_thread_spans();
                    summary
                })
                .collect::<Vec<_>>()
        })
    };
    let mut summaries = summarize_pass(None);
    let interest =
        dualwrite_lint::analysis::Interest::new(&config.analysis_config().apis, &summaries);
    summaries.extend(summarize_pass(Some(&interest)));
    let summarize_time = start.elapsed();
    let start = Instant::now();
    let scanned: usize = pool.install(|| {
        read.par_iter()
            .map(|text| dualwrite_lint::suppress::scan("f.rs", text).len())
            .sum()
    });
    let scan_time = start.elapsed();
    let start = Instant::now();
    let analysis =
        pool.install(|| dualwrite_lint::analysis::analyze(&summaries, &config.analysis_config()));
    let analyze_time = start.elapsed();
    println!(
        "breakdown (one run): walk {:.3} s, read+pre-checks {:.3} s, summarize {:.3} s, suppression scan {:.3} s ({scanned}), analyze {:.3} s ({} findings)",
        walk_time.as_secs_f64(),
        read_time.as_secs_f64(),
        summarize_time.as_secs_f64(),
        scan_time.as_secs_f64(),
        analyze_time.as_secs_f64(),
        analysis.len()
    );
}
