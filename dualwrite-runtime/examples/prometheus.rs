//! The adapter's metrics in the Prometheus text format: a recorder from
//! `metrics-exporter-prometheus` (no HTTP server: the text is rendered and
//! printed), an adapter whose new store refuses some writes, a lane that
//! retries them and keeps dead letters, a shadow read that disagrees.
//!
//! ```text
//! cargo run -p dualwrite-runtime --example prometheus
//! ```
//!
//! A service would serve `handle.render()` on its `/metrics` endpoint, or
//! use the exporter's own listener (its `http-listener` feature).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use dualwrite_runtime::backfill::BackfillProgress;
use dualwrite_runtime::reconcile::ReconcileReport;
use dualwrite_runtime::{LaneConfig, Migration, Phase, dual_write};
use metrics_exporter_prometheus::PrometheusBuilder;

#[dual_write]
pub trait Accounts {
    #[dual_write(key = id)]
    fn put(&self, id: u64, balance: i64) -> Result<(), String>;
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Result<Option<i64>, String>;
}

/// An in-memory store that refuses writes of some keys.
#[derive(Default)]
struct Store {
    rows: Mutex<HashMap<u64, i64>>,
    refused: HashSet<u64>,
}

impl Accounts for Store {
    fn put(&self, id: u64, balance: i64) -> Result<(), String> {
        if self.refused.contains(&id) {
            return Err(format!("account {id}: constraint violated"));
        }
        self.rows
            .lock()
            .map_err(|_| "poisoned".to_owned())?
            .insert(id, balance);
        Ok(())
    }

    fn get(&self, id: u64) -> Result<Option<i64>, String> {
        Ok(self
            .rows
            .lock()
            .map_err(|_| "poisoned".to_owned())?
            .get(&id)
            .copied())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: the publisher registers its handles with it.
    let handle = PrometheusBuilder::new().install_recorder()?;

    let new = Store {
        refused: [7, 13].into_iter().collect(),
        ..Store::default()
    };
    let adapter = AccountsDualWrite::new(Store::default(), new, Migration::new(Phase::DualWrite))
        .with_async_secondary(
            LaneConfig::default()
                .with_lanes(2)
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(1)),
        );
    let publisher = adapter
        .core()
        .metrics_publisher()
        .with_label("adapter", "accounts-eu");
    let backfill = BackfillProgress::default();
    publisher.watch_backfill("accounts", backfill);

    for id in 0..50 {
        adapter.put(id, 100 * id as i64)?;
    }
    adapter.flush(Duration::from_secs(10))?;

    // Shadow reads: accounts 7 and 13 never reached the new store.
    adapter.migration().set_phase(Phase::Backfill)?;
    adapter.migration().set_phase(Phase::ShadowRead)?;
    for id in [1, 7, 13, 20] {
        adapter.get(id)?;
    }
    // A reconciliation would find and repair them.
    publisher.record_reconcile(&ReconcileReport {
        missing_in_new: 2,
        ..ReconcileReport::default()
    });

    publisher.publish();
    let stats = adapter.stats();
    println!(
        "# adapter.stats(): {} secondary writes failed, {} retries, {} dead letters, {} of {} shadow reads matched\n",
        stats.secondary_writes_failed,
        stats.secondary_retries,
        stats.dead_letters,
        stats.reads_matched,
        stats.reads_compared
    );
    println!("{}", handle.render());
    Ok(())
}
