//! How long a phase change takes to reach another instance through a
//! PostgreSQL phase source: two migrations, each with its own connections
//! (as two service instances would have), one changing a tenant's phase,
//! the other waiting until it routes by the change.
//!
//! ```sh
//! DUALWRITE_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p dualwrite-runtime --features postgres --example phase_propagation
//! ```
//!
//! `DW_CHANGES=N` sets the number of changes (200 unless set). The tables
//! (prefix `dw_phase_example`) are kept for a look at the audit log
//! (`dualwrite --phase-db URL --tables dw_phase_example audit`) and reused
//! by the next run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dualwrite_runtime::phase_source::{PhaseSync, PhaseTables, PostgresPhaseSource, SyncOptions};
use dualwrite_runtime::{Migration, Phase, PhaseChange};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("DUALWRITE_POSTGRES_URL") else {
        eprintln!("set DUALWRITE_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/test");
        std::process::exit(2);
    };
    let changes: usize = std::env::var("DW_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
        .max(1);
    let tables = PhaseTables::with_prefix("dw_phase_example");

    let a = Migration::new(Phase::DualWrite);
    let b = Migration::new(Phase::Prepare);
    let source_a = PostgresPhaseSource::connect_with(&url, tables.clone())?;
    let source_b = PostgresPhaseSource::connect_with(&url, tables)?;
    let _sync_a = PhaseSync::follow_with(&a, Arc::new(source_a), SyncOptions::new().actor("a"))?;
    let sync_b = PhaseSync::follow_with(&b, Arc::new(source_b), SyncOptions::new().actor("b"))?;

    let mut propagation = Vec::with_capacity(changes);
    let mut change_call = Vec::with_capacity(changes);
    for i in 0..changes {
        let phase = if i % 2 == 0 {
            Phase::Backfill
        } else {
            Phase::DualWrite
        };
        let started = Instant::now();
        a.change(PhaseChange::to(phase).for_key("tenant-7"))?;
        change_call.push(started.elapsed());
        if !sync_b.wait_for_version(a.source_version(), Duration::from_secs(10)) {
            return Err(format!("change {i} did not reach the other instance in 10 s").into());
        }
        propagation.push(started.elapsed());
        assert_eq!(b.phase_for(Some(&"tenant-7")), phase);
    }
    propagation.sort();
    change_call.sort();
    let at = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!("{changes} changes of a tenant's phase, PostgreSQL phase source, two instances:");
    println!(
        "  change call -> other instance routes by it: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        at(&propagation, 0.5),
        at(&propagation, 0.9),
        at(&propagation, 0.99),
        propagation[changes - 1]
    );
    println!(
        "  the change call itself (CAS transaction + NOTIFY): p50 {:?}  max {:?}",
        at(&change_call, 0.5),
        change_call[changes - 1]
    );
    Ok(())
}
