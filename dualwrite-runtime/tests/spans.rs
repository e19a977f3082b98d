//! `tracing` spans of routed calls, captured by a recording layer: one span
//! per call with its trait, method, key, phase and route; the events of a
//! failed secondary write, a retry and a dead letter inside them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dualwrite_runtime::{LaneConfig, Migration, Phase, PhaseChange, SyncMode, dual_write};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

#[dual_write]
pub trait Kv {
    #[dual_write(key = key)]
    fn put(&self, key: u64, value: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    fn get(&self, key: u64) -> Result<Option<u64>, String>;
}

/// A store whose writes of one key fail.
#[derive(Default)]
struct Mem {
    map: Mutex<HashMap<u64, u64>>,
    failing: Option<u64>,
}

impl Kv for Mem {
    fn put(&self, key: u64, value: u64) -> Result<(), String> {
        if self.failing == Some(key) {
            return Err(format!("key {key} refused"));
        }
        self.map.lock().unwrap().insert(key, value);
        Ok(())
    }

    fn get(&self, key: u64) -> Result<Option<u64>, String> {
        Ok(self.map.lock().unwrap().get(&key).copied())
    }
}

/// A span as the layer saw it: its name, fields, and whether it closed.
#[derive(Debug, Clone, Default)]
struct SeenSpan {
    name: String,
    fields: BTreeMap<String, String>,
    closed: bool,
}

/// An event: its message and the names of its enclosing spans.
#[derive(Debug, Clone)]
struct SeenEvent {
    message: String,
    spans: Vec<String>,
}

#[derive(Default)]
struct Seen {
    spans: Vec<SeenSpan>,
    by_id: HashMap<u64, usize>,
    events: Vec<SeenEvent>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Seen>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut span = SeenSpan {
            name: attrs.metadata().name().to_owned(),
            ..SeenSpan::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        let mut seen = self.0.lock().unwrap();
        let index = seen.spans.len();
        seen.spans.push(span);
        seen.by_id.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        let index = seen.by_id[&id.into_u64()];
        values.record(&mut Fields(&mut seen.spans[index].fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let spans = ctx
            .event_scope(event)
            .map(|scope| scope.map(|span| span.name().to_owned()).collect())
            .unwrap_or_default();
        self.0.lock().unwrap().events.push(SeenEvent {
            message: fields.remove("message").unwrap_or_default(),
            spans,
        });
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        if let Some(&index) = seen.by_id.get(&id.into_u64()) {
            seen.spans[index].closed = true;
        }
    }
}

/// Runs `f` with the recorder as this thread's subscriber; what it saw.
fn capture(f: impl FnOnce()) -> Seen {
    let recorder = Recorder::default();
    let subscriber = Registry::default().with(recorder.clone());
    tracing::subscriber::with_default(subscriber, f);
    std::mem::take(&mut *recorder.0.lock().unwrap())
}

fn named<'a>(seen: &'a Seen, name: &str) -> Vec<&'a SeenSpan> {
    seen.spans.iter().filter(|span| span.name == name).collect()
}

fn field<'a>(span: &'a SeenSpan, name: &str) -> &'a str {
    span.fields
        .get(name)
        .map_or_else(|| panic!("no field {name} in {span:?}"), String::as_str)
}

#[test]
fn every_routed_call_has_a_span_with_its_trait_method_key_phase_and_route() {
    let seen = capture(|| {
        let adapter = KvDualWrite::new(
            Mem::default(),
            Mem {
                failing: Some(2),
                ..Mem::default()
            },
            Migration::new(Phase::DualWrite),
        )
        .with_sync_mode(SyncMode::Tolerant);
        for key in [1, 2, 3] {
            assert!(adapter.put(key, key * 10).is_ok());
        }
        assert_eq!(adapter.get(1), Ok(Some(10)));
        adapter
            .migration()
            .change(PhaseChange::to(Phase::Cutover).for_key(&7_u64).forced())
            .expect("an override of key 7");
        assert!(adapter.put(7, 70).is_ok());
    });

    let writes = named(&seen, "dualwrite.write");
    assert_eq!(writes.len(), 4, "{writes:#?}");
    for (span, key) in writes.iter().zip(["1", "2", "3"]) {
        assert_eq!(field(span, "trait"), "Kv");
        assert_eq!(field(span, "method"), "put");
        assert_eq!(field(span, "key"), key);
        assert_eq!(field(span, "phase"), "dual_write");
        assert_eq!(field(span, "route"), "old -> new");
        assert_eq!(field(span, "primary_ok"), "true");
        assert!(span.closed, "{span:?}");
    }
    assert_eq!(field(writes[0], "secondary_ok"), "true");
    assert_eq!(field(writes[1], "secondary_ok"), "false");
    // The per-key override: New is the primary, Old the secondary.
    assert_eq!(field(writes[3], "phase"), "cutover");
    assert_eq!(field(writes[3], "route"), "new -> old");

    let reads = named(&seen, "dualwrite.read");
    assert_eq!(reads.len(), 1);
    assert_eq!(field(reads[0], "method"), "get");
    assert_eq!(field(reads[0], "key"), "1");
    assert_eq!(field(reads[0], "route"), "old");
    assert!(reads[0].closed);

    // The failed secondary write of key 2 is logged inside its call's span.
    let dead: Vec<&SeenEvent> = seen
        .events
        .iter()
        .filter(|event| event.message.contains("kept as a dead letter"))
        .collect();
    assert_eq!(dead.len(), 1, "{:#?}", seen.events);
    assert_eq!(dead[0].spans, ["dualwrite.write"]);
}

#[test]
fn a_lane_applies_each_secondary_write_in_a_span_with_its_retry_and_dead_letter() {
    // Lane threads log through the global subscriber: install the recorder
    // globally in this test binary only here (the other tests use scoped
    // ones, which see only their own thread).
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(Registry::default().with(recorder.clone()))
        .expect("the only global subscriber of this binary");
    let adapter = KvDualWrite::new(
        Mem::default(),
        Mem {
            failing: Some(5),
            ..Mem::default()
        },
        Migration::new(Phase::DualWrite),
    )
    .with_async_secondary(
        LaneConfig::default()
            .with_lanes(1)
            .with_max_attempts(2)
            .with_initial_backoff(Duration::from_millis(1)),
    );
    assert!(adapter.put(4, 40).is_ok());
    assert!(adapter.put(5, 50).is_ok());
    adapter.flush(Duration::from_secs(30)).expect("flushed");
    let seen = std::mem::take(&mut *recorder.0.lock().unwrap());

    let lane: Vec<&SeenSpan> = named(&seen, "dualwrite.secondary")
        .into_iter()
        .filter(|span| span.fields.get("key").is_some_and(|k| k == "4" || k == "5"))
        .collect();
    assert_eq!(lane.len(), 2, "{lane:#?}");
    for span in &lane {
        assert_eq!(field(span, "trait"), "Kv");
        assert_eq!(field(span, "method"), "put");
        assert_eq!(field(span, "target"), "new");
        assert_eq!(field(span, "lane"), "0");
        assert!(span.closed);
    }
    let inside = |text: &str| {
        seen.events
            .iter()
            .filter(|event| event.message.contains(text))
            .map(|event| event.spans.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(inside("retrying"), [["dualwrite.secondary"]]);
    assert_eq!(inside("kept as a dead letter"), [["dualwrite.secondary"]]);
}
