//! Criterion benchmarks of the router + store path: an inbound event to committed outbox rows,
//! and a delivery acknowledged, on a real `SQLite` file (WAL).

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::fmt::Write as _;

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tribridge::model::{Author, ChannelRef, EventBody, Inbound, TextStyle};
use tribridge::router::{Router, Wake};
use tribridge::store::{PendingDelivery, Store};

struct NoWake;
impl Wake for NoWake {
    fn wake(&self, _destination: &ChannelRef) {}
}

fn config(channels_per_gateway: usize) -> tribridge::config::Config {
    let mut text = String::from(
        "[network.one]\ntype = \"irc\"\nserver = \"127.0.0.1:1\"\nnick = \"bench\"\n\n[[gateway]]\nname = \"g\"\nchannels = [\n",
    );
    for n in 0..channels_per_gateway {
        let _ = writeln!(text, "  {{ network = \"one\", channel = \"#c{n}\" }},");
    }
    text.push_str("]\n");
    tribridge::config::parse(&text, std::path::Path::new("."), &[]).expect("bench config")
}

fn inbound(n: u64) -> Inbound {
    Inbound {
        origin: ChannelRef::new("one", "#c0"),
        remote_id: Some(format!("msgid-{n}")),
        author: Author {
            id: "alice".into(),
            display_name: "alice".into(),
        },
        timestamp_ms: 1_700_000_000_000,
        body: EventBody::text(
            TextStyle::Normal,
            "a typical chat line of about sixty bytes, give or take a few",
        ),
        permalink: None,
    }
}

fn bench_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_store");
    group.throughput(Throughput::Elements(1));
    for destinations in [1usize, 2, 10] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let router = Router::new(
            Arc::new(config(destinations + 1).topology()),
            Arc::clone(&store),
            Arc::new(NoWake),
        );
        let mut n = 0u64;
        group.bench_function(format!("commit_inbound/{destinations}_destinations"), |b| {
            b.iter(|| {
                n += 1;
                router.submit_blocking(&inbound(n)).expect("commit")
            });
        });
    }
    // One delivery: read the head of a queue and acknowledge it.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let router = Router::new(
        Arc::new(config(2).topology()),
        Arc::clone(&store),
        Arc::new(NoWake),
    );
    let destination = ChannelRef::new("one", "#c1");
    let mut n = 1_000_000u64;
    group.bench_function("next_pending+complete_delivery", |b| {
        b.iter_batched(
            || {
                n += 1;
                router.submit_blocking(&inbound(n)).expect("commit");
            },
            |()| {
                let PendingDelivery {
                    seq: delivery_seq, ..
                } = store
                    .next_pending(&destination)
                    .expect("read")
                    .expect("pending");
                store
                    .complete_delivery(delivery_seq, Some("remote"))
                    .expect("complete");
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_commit);
criterion_main!(benches);
