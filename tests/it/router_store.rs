//! The router and the store as pure code: scenario tables over a real `SQLite` file, no network.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tribridge::config::{Config, Direction, GatewayChannel, GatewayConfig};
use tribridge::model::{Author, ChannelRef, EventBody, Inbound, TextStyle};
use tribridge::richtext::FormattedText;
use tribridge::router::{Router, Wake};
use tribridge::store::{CommitOutcome, MappingRole, PendingDelivery, Store};

#[derive(Default)]
struct Bells(Mutex<Vec<ChannelRef>>);

impl Wake for Bells {
    fn wake(&self, destination: &ChannelRef) {
        self.0.lock().unwrap().push(destination.clone());
    }
}

fn channel(network: &str, channel: &str, direction: Direction) -> GatewayChannel {
    GatewayChannel {
        network: network.into(),
        channel: channel.into(),
        direction,
    }
}

fn config(gateways: Vec<(&str, Vec<GatewayChannel>)>) -> Config {
    // Networks only matter to the router as ids and protocol names; parse a minimal file for them.
    let mut text = String::new();
    for id in ["one", "two", "three"] {
        let _ = write!(
            text,
            "[network.{id}]\ntype = \"irc\"\nserver = \"127.0.0.1:1\"\nnick = \"b{id}\"\n"
        );
    }
    let mut parsed = tribridge::config::parse(&text, std::path::Path::new("."), &[]).unwrap();
    parsed.gateways = gateways
        .into_iter()
        .map(|(name, channels)| GatewayConfig {
            name: name.into(),
            channels,
            long_text: tribridge::richtext::long_text::LongTextPolicy::default(),
            allow_mass_pings: false,
            edit_policy: tribridge::richtext::edits::EditPolicy::default(),
            original_time_after: Some(tribridge::connector::DEFAULT_ORIGINAL_TIME_AFTER),
            irc_replies: tribridge::vocab::gateway::IrcReplies::default(),
            remote_nick_format: None,
            history: tribridge::vocab::gateway::HistoryPolicy::default(),
        })
        .collect();
    parsed
}

fn said(network: &str, channel: &str, remote_id: Option<&str>, text: &str) -> Inbound {
    Inbound {
        origin: ChannelRef::new(network, channel),
        remote_id: remote_id.map(str::to_owned),
        author: Author {
            id: "alice".into(),
            display_name: "alice".into(),
        },
        timestamp_ms: 1_700_000_000_000,
        body: EventBody::text(TextStyle::Normal, text),
        permalink: None,
    }
}

struct Scenario {
    router: Router,
    store: Arc<Store>,
    bells: Arc<Bells>,
    _dir: tempfile::TempDir,
}

/// Every scenario ends with the store intact: the writer does not enforce foreign keys, so
/// each test checks what they would have.
impl Drop for Scenario {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(
                self.store.integrity_problems().unwrap(),
                Vec::<String>::new()
            );
        }
    }
}

impl Scenario {
    fn new(gateways: Vec<(&str, Vec<GatewayChannel>)>) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::support::bridge::open_test_store(dir.path()));
        Self::with_store(gateways, store, dir)
    }

    fn with_store(
        gateways: Vec<(&str, Vec<GatewayChannel>)>,
        store: Arc<Store>,
        dir: tempfile::TempDir,
    ) -> Scenario {
        let topology = Arc::new(config(gateways).topology());
        let bells = Arc::new(Bells::default());
        let router = Router::new(topology, Arc::clone(&store), bells.clone());
        Scenario {
            router,
            store,
            bells,
            _dir: dir,
        }
    }

    fn pending(&self, network: &str, channel: &str) -> Vec<String> {
        let destination = ChannelRef::new(network, channel);
        let mut texts = Vec::new();
        // Drain a copy: read in order by completing each head.
        while let Some(PendingDelivery {
            delivery,
            seq: delivery_seq,
            ..
        }) = self.store.next_pending(&destination).unwrap()
        {
            if let EventBody::Text { text, .. } = &delivery.body {
                texts.push(text.to_plain_text());
            }
            self.store
                .complete_delivery(delivery_seq, Some(&format!("{}-{}", channel, delivery.id)))
                .unwrap();
        }
        texts
    }
}

fn two_way() -> Vec<(&'static str, Vec<GatewayChannel>)> {
    vec![(
        "g",
        vec![
            channel("one", "#a", Direction::InOut),
            channel("two", "#b", Direction::InOut),
        ],
    )]
}

#[test]
pub(crate) fn relay_commits_one_outbox_row_per_destination_and_wakes_it() {
    let scenario = Scenario::new(two_way());
    let outcome = scenario
        .router
        .submit_blocking(&said("one", "#a", Some("m1"), "hello"))
        .unwrap();
    assert!(
        matches!(outcome, CommitOutcome::Committed { ref destinations, .. } if destinations == &[ChannelRef::new("two", "#b")])
    );
    assert_eq!(
        *scenario.bells.0.lock().unwrap(),
        vec![ChannelRef::new("two", "#b")]
    );
    assert_eq!(scenario.pending("two", "#b"), vec!["hello"]);
    assert_eq!(scenario.pending("one", "#a"), Vec::<String>::new());
}

#[test]
fn channel_names_match_case_insensitively() {
    let scenario = Scenario::new(two_way());
    scenario
        .router
        .submit_blocking(&said("one", "#A", None, "hi"))
        .unwrap();
    assert_eq!(scenario.pending("two", "#b"), vec!["hi"]);
}

#[test]
pub(crate) fn echo_of_our_own_delivery_is_dropped() {
    let scenario = Scenario::new(two_way());
    scenario
        .router
        .submit_blocking(&said("one", "#a", Some("m1"), "hello"))
        .unwrap();
    // Delivered to #b, where the destination called it "b-1".
    let PendingDelivery {
        seq: delivery_seq, ..
    } = scenario
        .store
        .next_pending(&ChannelRef::new("two", "#b"))
        .unwrap()
        .unwrap();
    scenario
        .store
        .complete_delivery(delivery_seq, Some("b-1"))
        .unwrap();
    // The same event seen coming back from #b.
    let outcome = scenario
        .router
        .submit_blocking(&said("two", "#b", Some("b-1"), "<alice> hello"))
        .unwrap();
    assert!(matches!(outcome, CommitOutcome::Echo { .. }), "{outcome:?}");
    assert_eq!(scenario.pending("one", "#a"), Vec::<String>::new());
    // The mapping of the message: its origin and its delivery, kept for edits and replies.
    let CommitOutcome::Echo { message_id } = outcome else {
        unreachable!()
    };
    let mappings = scenario.store.mappings_of(message_id).unwrap();
    assert_eq!(
        mappings,
        vec![
            (
                ChannelRef::new("one", "#a"),
                "m1".to_owned(),
                MappingRole::Origin
            ),
            (
                ChannelRef::new("two", "#b"),
                "b-1".to_owned(),
                MappingRole::Delivery
            ),
        ]
    );
}

#[test]
pub(crate) fn the_same_event_twice_is_committed_once() {
    let scenario = Scenario::new(two_way());
    let event = said("one", "#a", Some("m1"), "hello");
    scenario.router.submit_blocking(&event).unwrap();
    let again = scenario.router.submit_blocking(&event).unwrap();
    assert!(matches!(again, CommitOutcome::Duplicate { .. }));
    assert_eq!(scenario.pending("two", "#b"), vec!["hello"]);
}

#[test]
pub(crate) fn three_channel_gateway_fans_out_to_the_two_others() {
    let scenario = Scenario::new(vec![(
        "g",
        vec![
            channel("one", "#x", Direction::InOut),
            channel("one", "#y", Direction::InOut),
            channel("two", "#z", Direction::InOut),
        ],
    )]);
    scenario
        .router
        .submit_blocking(&said("one", "#x", Some("1"), "from x"))
        .unwrap();
    scenario
        .router
        .submit_blocking(&said("one", "#y", Some("2"), "from y"))
        .unwrap();
    scenario
        .router
        .submit_blocking(&said("two", "#z", Some("3"), "from z"))
        .unwrap();
    assert_eq!(scenario.pending("one", "#x"), vec!["from y", "from z"]);
    assert_eq!(scenario.pending("one", "#y"), vec!["from x", "from z"]);
    assert_eq!(scenario.pending("two", "#z"), vec!["from x", "from y"]);
}

#[test]
fn directions_in_and_out_are_respected() {
    let scenario = Scenario::new(vec![(
        "g",
        vec![
            channel("one", "#in", Direction::In),
            channel("one", "#out", Direction::Out),
            channel("two", "#both", Direction::InOut),
        ],
    )]);
    scenario
        .router
        .submit_blocking(&said("one", "#in", None, "i"))
        .unwrap();
    scenario
        .router
        .submit_blocking(&said("one", "#out", None, "o"))
        .unwrap();
    scenario
        .router
        .submit_blocking(&said("two", "#both", None, "b"))
        .unwrap();
    assert_eq!(scenario.pending("one", "#in"), Vec::<String>::new());
    assert_eq!(scenario.pending("one", "#out"), vec!["i", "b"]);
    assert_eq!(scenario.pending("two", "#both"), vec!["i"]);
    assert_eq!(
        scenario
            .router
            .stats()
            .unrouted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_channel_in_two_gateways_gets_each_message_once() {
    let scenario = Scenario::new(vec![
        (
            "g1",
            vec![
                channel("one", "#a", Direction::InOut),
                channel("two", "#b", Direction::InOut),
            ],
        ),
        (
            "g2",
            vec![
                channel("one", "#a", Direction::InOut),
                channel("two", "#b", Direction::InOut),
                channel("three", "#c", Direction::InOut),
            ],
        ),
    ]);
    scenario
        .router
        .submit_blocking(&said("one", "#a", Some("1"), "hi"))
        .unwrap();
    assert_eq!(scenario.pending("two", "#b"), vec!["hi"]);
    assert_eq!(scenario.pending("three", "#c"), vec!["hi"]);
}

#[test]
fn restart_keeps_pending_deliveries_and_replays_nothing_done() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    {
        let store = Arc::new(Store::open(&path).unwrap());
        let scenario = Scenario::with_store(two_way(), store, tempfile::tempdir().unwrap());
        for n in 1..=3 {
            scenario
                .router
                .submit_blocking(&said(
                    "one",
                    "#a",
                    Some(&format!("m{n}")),
                    &format!("msg {n}"),
                ))
                .unwrap();
        }
        // Deliver the first only, then "crash" (drop everything).
        let PendingDelivery { seq: first_seq, .. } = scenario
            .store
            .next_pending(&ChannelRef::new("two", "#b"))
            .unwrap()
            .unwrap();
        scenario
            .store
            .complete_delivery(first_seq, Some("b-1"))
            .unwrap();
    }
    let store = Arc::new(Store::open(&path).unwrap());
    let scenario = Scenario::with_store(two_way(), store, dir);
    // The two undelivered ones are still there, in order, with the same delivery ids.
    assert_eq!(scenario.pending("two", "#b"), vec!["msg 2", "msg 3"]);
    // The origin ids survived: the same events seen again are duplicates, not new messages.
    let again = scenario
        .router
        .submit_blocking(&said("one", "#a", Some("m1"), "msg 1"))
        .unwrap();
    assert!(matches!(again, CommitOutcome::Duplicate { .. }));
    // And the delivered one's mapping too.
    assert!(
        scenario
            .store
            .lookup(&ChannelRef::new("two", "#b"), "b-1")
            .unwrap()
            .is_some()
    );
}

#[test]
pub(crate) fn a_failing_destination_does_not_hold_up_the_others() {
    let scenario = Scenario::new(vec![(
        "g",
        vec![
            channel("one", "#a", Direction::InOut),
            channel("two", "#b", Direction::InOut),
            channel("three", "#c", Direction::InOut),
        ],
    )]);
    for n in 1..=3 {
        scenario
            .router
            .submit_blocking(&said("one", "#a", None, &format!("m{n}")))
            .unwrap();
    }
    // #b's head fails and is deferred far into the future: #b waits, in order.
    let b = ChannelRef::new("two", "#b");
    let PendingDelivery {
        delivery: head,
        seq: head_seq,
        ..
    } = scenario.store.next_pending(&b).unwrap().unwrap();
    scenario
        .store
        .defer_delivery(head_seq, i64::MAX / 2, "server down")
        .unwrap();
    let PendingDelivery {
        delivery: still_head,
        next_try_ms: next_try,
        ..
    } = scenario.store.next_pending(&b).unwrap().unwrap();
    assert_eq!(
        still_head.id, head.id,
        "order is kept: the failed head stays first"
    );
    assert_eq!(still_head.attempts, 1);
    assert!(next_try > 0);
    // #c drains regardless.
    assert_eq!(scenario.pending("three", "#c"), vec!["m1", "m2", "m3"]);
    // A permanent failure leaves the queue moving.
    scenario.store.fail_delivery(head_seq, "refused").unwrap();
    assert_eq!(scenario.pending("two", "#b"), vec!["m2", "m3"]);
}

#[test]
fn cursors_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.set_cursor("mx", "", "s123").unwrap();
        store.set_cursor("mx", "", "s124").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.cursor("mx", "").unwrap().as_deref(), Some("s124"));
    assert_eq!(store.cursor("mx", "#other").unwrap(), None);
}

fn event(network: &str, channel: &str, remote_id: &str, body: EventBody) -> Inbound {
    Inbound {
        body,
        ..said(network, channel, Some(remote_id), "")
    }
}

#[test]
pub(crate) fn edits_deletes_reactions_and_replies_resolve_to_the_destination_ids() {
    let scenario = Scenario::new(two_way());
    let b = ChannelRef::new("two", "#b");
    let a = ChannelRef::new("one", "#a");
    scenario
        .router
        .submit_blocking(&said("one", "#a", Some("m1"), "helo"))
        .unwrap();
    // Before #b acknowledged the message, an edit is queued behind it.
    scenario
        .router
        .submit_blocking(&event(
            "one",
            "#a",
            "e1",
            EventBody::Edit {
                target: "m1".into(),
                style: TextStyle::Normal,
                text: FormattedText::plain("hello"),
            },
        ))
        .unwrap();
    let PendingDelivery {
        delivery: original,
        seq: original_seq,
        ..
    } = scenario.store.next_pending(&b).unwrap().unwrap();
    scenario
        .store
        .complete_delivery(original_seq, Some("b-1"))
        .unwrap();
    // The edit, resolved when it is taken from the queue: #b's id for the message.
    let PendingDelivery {
        delivery: edit,
        seq: edit_seq,
        ..
    } = scenario.store.next_pending(&b).unwrap().unwrap();
    assert_eq!(
        edit.target.as_ref().unwrap().remote_id.as_deref(),
        Some("b-1")
    );
    assert_eq!(
        edit.target.as_ref().unwrap().message_id,
        original.message_id
    );
    // What it replaces, for destinations that show a correction as a diff.
    assert_eq!(edit.previous_text, Some(FormattedText::plain("helo")));
    scenario.store.complete_delivery(edit_seq, None).unwrap();
    // A second edit replaces the first edit's text, not the original's.
    scenario
        .router
        .submit_blocking(&event(
            "one",
            "#a",
            "e2",
            EventBody::Edit {
                target: "m1".into(),
                style: TextStyle::Normal,
                text: FormattedText::plain("hello!"),
            },
        ))
        .unwrap();
    let PendingDelivery {
        delivery: second_edit,
        seq: second_edit_seq,
        ..
    } = scenario.store.next_pending(&b).unwrap().unwrap();
    assert_eq!(
        second_edit.previous_text,
        Some(FormattedText::plain("hello"))
    );
    scenario
        .store
        .complete_delivery(second_edit_seq, None)
        .unwrap();

    // Someone on #b replies to the relayed message and reacts to it: #a gets its own ids.
    scenario
        .router
        .submit_blocking(&event(
            "two",
            "#b",
            "r1",
            EventBody::Text {
                style: TextStyle::Normal,
                text: FormattedText::plain("a reply"),
                reply_to: Some("b-1".into()),
                attachments: Vec::new(),
                thread_root: Some("b-1".into()),
            },
        ))
        .unwrap();
    scenario
        .router
        .submit_blocking(&event(
            "two",
            "#b",
            "x1",
            EventBody::Reaction {
                target: "b-1".into(),
                key: "👍".into(),
                removed: false,
            },
        ))
        .unwrap();
    let PendingDelivery {
        delivery: reply,
        seq: reply_seq,
        ..
    } = scenario.store.next_pending(&a).unwrap().unwrap();
    assert_eq!(
        reply.reply_to.as_ref().unwrap().remote_id.as_deref(),
        Some("m1")
    );
    assert_eq!(reply.target, None);
    // The thread root is resolved apart from the reply, to the destination's id too.
    assert_eq!(
        reply.thread_root.as_ref().unwrap().remote_id.as_deref(),
        Some("m1")
    );
    scenario
        .store
        .complete_delivery(reply_seq, Some("a-2"))
        .unwrap();
    let PendingDelivery {
        delivery: reaction,
        seq: reaction_seq,
        ..
    } = scenario.store.next_pending(&a).unwrap().unwrap();
    assert_eq!(
        reaction.target.as_ref().unwrap().remote_id.as_deref(),
        Some("m1")
    );
    assert!(
        matches!(reaction.body, EventBody::Reaction { ref key, removed: false, .. } if key == "👍")
    );
    scenario
        .store
        .complete_delivery(reaction_seq, None)
        .unwrap();

    // Deleting the reply on #a's side reaches #b with #b's id of it.
    scenario
        .router
        .submit_blocking(&event(
            "one",
            "#a",
            "d1",
            EventBody::Delete {
                target: "a-2".into(),
            },
        ))
        .unwrap();
    let PendingDelivery {
        delivery: delete, ..
    } = scenario.store.next_pending(&b).unwrap().unwrap();
    assert_eq!(
        delete.target.as_ref().unwrap().remote_id.as_deref(),
        Some("r1")
    );
}

#[test]
pub(crate) fn an_edit_of_a_message_never_bridged_is_dropped_and_counted() {
    let scenario = Scenario::new(two_way());
    let outcome = scenario
        .router
        .submit_blocking(&event(
            "one",
            "#a",
            "e1",
            EventBody::Delete {
                target: "unknown".into(),
            },
        ))
        .unwrap();
    assert_eq!(outcome, CommitOutcome::UnknownTarget);
    assert_eq!(
        scenario
            .router
            .stats()
            .unknown_targets
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(scenario.pending("two", "#b"), Vec::<String>::new());
}

#[test]
fn a_version_1_database_is_migrated_with_its_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let connection = rusqlite::Connection::open(dir.path().join("tribridge.sqlite3")).unwrap();
        connection
            .execute_batch(include_str!("../../migrations/0001_init.sql"))
            .unwrap();
        connection
            .execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO messages (origin_network, origin_channel, origin_protocol,
                     origin_remote_id, author_id, author_name, kind, body, created_ms, received_ms)
                 VALUES ('one', '#a', 'irc', 'm1', 'alice', 'alice', 'text',
                     '{\"Text\":{\"style\":\"Normal\",\"text\":\"from v1\"}}', 1, 1);
                 INSERT INTO outbox (delivery_id, message_id, network, channel, gateway, kind)
                 VALUES ('d1', 1, 'two', '#b', 'g', 'post');",
            )
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let PendingDelivery { delivery, .. } = store
        .next_pending(&ChannelRef::new("two", "#b"))
        .unwrap()
        .unwrap();
    assert_eq!(delivery.id, "d1");
    assert_eq!(delivery.body, EventBody::text(TextStyle::Normal, "from v1"));
    assert_eq!(delivery.target, None);
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
}

/// Migration 0006 rebuilds the outbox and the deliveries' record: what was pending stays
/// pending at its position, what was delivered stays recorded, and no position the old outbox
/// handed out is handed out again.
#[test]
fn a_version_5_database_keeps_its_queue_positions_and_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let connection = rusqlite::Connection::open(dir.path().join("tribridge.sqlite3")).unwrap();
        for migration in [
            include_str!("../../migrations/0001_init.sql"),
            include_str!("../../migrations/0002_targets.sql"),
            include_str!("../../migrations/0003_permalink.sql"),
            include_str!("../../migrations/0004_parallel_routes.sql"),
            include_str!("../../migrations/0005_unused_index.sql"),
        ] {
            connection.execute_batch(migration).unwrap();
        }
        connection
            .execute_batch(
                "PRAGMA user_version = 5;
                 INSERT INTO messages (origin_network, origin_channel, origin_protocol,
                     origin_remote_id, author_id, author_name, kind, body, created_ms, received_ms)
                 VALUES ('one', '#a', 'irc', 'm1', 'alice', 'alice', 'text',
                     '{\"Text\":{\"style\":\"Normal\",\"text\":\"from v5\"}}', 1, 1);
                 INSERT INTO outbox (delivery_id, message_id, network, channel, gateway)
                 VALUES ('d1', 1, 'two', '#b', 'g');
                 -- A second delivery, already acknowledged: its row is gone and its record
                 -- kept; its position (2) must never be handed out again.
                 INSERT INTO outbox (delivery_id, message_id, network, channel, gateway)
                 VALUES ('d2', 1, 'three', '#c', 'g');
                 DELETE FROM outbox WHERE delivery_id = 'd2';
                 INSERT INTO deliveries (delivery_id, message_id, network, channel, remote_id,
                     attempts, done_ms)
                 VALUES ('d2', 1, 'three', '#c', 'c-1', 1, 2);",
            )
            .unwrap();
    }
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let b = ChannelRef::new("two", "#b");
    let PendingDelivery { delivery, seq, .. } = store.next_pending(&b).unwrap().unwrap();
    assert_eq!((delivery.id.as_str(), seq), ("d1", 1));
    assert_eq!(
        store
            .delivered_count(&ChannelRef::new("three", "#c"))
            .unwrap(),
        1
    );
    let scenario = Scenario::with_store(two_way(), Arc::clone(&store), dir);
    scenario
        .router
        .submit_blocking(&said("one", "#a", Some("m2"), "after the migration"))
        .unwrap();
    let positions: Vec<i64> = store
        .pending_batch(&b, 0, 10)
        .unwrap()
        .iter()
        .map(|pending| pending.seq)
        .collect();
    assert_eq!(positions, vec![1, 3]);
    // Acknowledged by position; a second acknowledgement of it changes nothing.
    store.complete_delivery(1, Some("b-1")).unwrap();
    store.complete_delivery(1, Some("b-1")).unwrap();
    assert_eq!(store.delivered_count(&b).unwrap(), 1);
    assert_eq!(scenario.pending("two", "#b"), vec!["after the migration"]);
    assert_eq!(store.delivered_count(&b).unwrap(), 2);
}

#[test]
fn an_unreadable_queued_message_is_set_aside_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("tribridge.sqlite3");
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let scenario = Scenario::with_store(two_way(), Arc::clone(&store), dir);
    for n in 1..=2 {
        scenario
            .router
            .submit_blocking(&said(
                "one",
                "#a",
                Some(&format!("m{n}")),
                &format!("msg {n}"),
            ))
            .unwrap();
    }
    // Damage the first message's stored body, as a newer build or a broken disk might.
    let connection = rusqlite::Connection::open(&database).unwrap();
    connection
        .execute(
            "UPDATE messages SET body = '{\"Unknown\":1}' WHERE origin_remote_id = 'm1'",
            [],
        )
        .unwrap();
    let b = ChannelRef::new("two", "#b");
    assert!(matches!(
        store.next_pending(&b),
        Err(tribridge::store::StoreError::Corrupt { .. })
    ));
    // The next call gets the next message; the damaged one stays, as failed.
    assert_eq!(scenario.pending("two", "#b"), vec!["msg 2"]);
    let failed: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE state = 'failed'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(failed, 1);
}

/// Regression: a group commit used to begin as a deferred transaction, which fails at once with
/// "database is locked" when another connection restarts the WAL between its read and its
/// write (the store's checkpointer does that once the WAL is large); the load harness lost IRC
/// lines to it. Here a second connection restarts the WAL as fast as it can while 1,000
/// messages are committed through the group-commit writer: every one must commit.
#[test]
fn commits_never_fail_while_another_connection_restarts_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let path = dir.path().join("tribridge.sqlite3");
    let scenario = Scenario::with_store(two_way(), store, dir);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restarts = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let connection = rusqlite::Connection::open(path).unwrap();
            connection
                .busy_timeout(std::time::Duration::from_secs(10))
                .unwrap();
            let mut done = 0_u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                connection
                    .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
                    .unwrap();
                done += 1;
            }
            done
        })
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let failures: Vec<String> = runtime.block_on(async {
        let mut failures = Vec::new();
        for n in 0..1_000 {
            let id = format!("m{n}");
            if let Err(error) = scenario
                .router
                .submit(said("one", "#a", Some(&id), &format!("line {n}")))
                .await
            {
                failures.push(format!("{id}: {error}"));
            }
        }
        failures
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let restarts = restarts.join().unwrap();
    assert!(restarts > 0, "the WAL was never restarted");
    assert_eq!(failures, Vec::<String>::new());
    let relayed = scenario.pending("two", "#b");
    assert_eq!(relayed.len(), 1_000);
    assert_eq!(relayed[999], "line 999");
}

#[test]
fn the_people_directory_is_learnt_from_commits_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let scenario = Scenario::with_store(two_way(), Arc::new(Store::open(&path).unwrap()), dir);
    scenario
        .router
        .submit_blocking(&said("one", "#a", Some("m1"), "hi"))
        .unwrap();
    let renamed = Inbound {
        body: EventBody::Membership(tribridge::model::Membership::Renamed {
            new_name: "alice_away".into(),
        }),
        ..said("one", "#a", None, "")
    };
    scenario.router.submit_blocking(&renamed).unwrap();
    scenario.store.record_rename("two", "bob", "bob2").unwrap();
    let people = scenario.router.people();
    assert_eq!(
        people.current("one", "ALICE"),
        Some(("alice_away".into(), "alice_away".into()))
    );

    // A new start reads the same directory back (nick changes included).
    let reopened = Scenario::with_store(
        two_way(),
        Arc::new(Store::open(&path).unwrap()),
        tempfile::tempdir().unwrap(),
    );
    let people = reopened.router.people();
    assert_eq!(
        people.current("one", "alice"),
        Some(("alice_away".into(), "alice_away".into()))
    );
    assert_eq!(
        people.current("two", "bob"),
        Some(("bob2".into(), "bob2".into()))
    );
    assert_eq!(people.len(), 4);
}
