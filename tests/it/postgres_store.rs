//! The PostgreSQL store under the daemon: existing scenarios run as they are, with every bridge
//! they start keeping its state in a database of its own on the shared PostgreSQL
//! ([`on_postgres`]), so the two backends pass the same tests, not copies of them.

use crate::support::bridge::on_postgres;
use crate::{admin_socket, history_archive, irc_relay, mattermost_relay, router_store};

/// The history on PostgreSQL: a retention pass forgets what is past `retention_days` (files
/// with it), keeps what legal hold or a queued delivery keeps, and the chain verifies with the
/// forgotten messages' tombstones.
#[test]
fn retention_and_file_gc_on_postgres() {
    on_postgres(
        history_archive::retention_forgets_old_messages_and_files_but_keeps_held_and_pending_ones,
    );
}

/// The archive's chain on PostgreSQL: chained by the daemon, verified and exported (JSONL, the
/// chain checked from the export alone), `forget` leaves sealed tombstones, and `--verify` names
/// a changed tombstone or text.
#[test]
fn archive_chain_export_and_forget_on_postgres() {
    on_postgres(
        history_archive::the_archive_is_chained_exported_forgets_a_person_and_verify_names_a_changed_text,
    );
}

/// Exports from one PostgreSQL snapshot while a burst is relayed: each a consistent prefix.
#[test]
fn export_during_a_burst_on_postgres() {
    on_postgres(history_archive::an_export_during_a_relayed_burst_loses_and_doubles_nothing);
}

/// Every export format (JSONL, Slack ZIP, HTML) of a conversation of the three networks, read
/// from PostgreSQL, read back by the independent readers.
#[test]
fn every_export_format_on_postgres() {
    on_postgres(history_archive::every_export_format_holds_a_conversation_of_the_three_networks);
}

/// IRC ↔ Mattermost both ways: texts, actions, edits and deletes, no echo.
#[test]
fn relay_with_edits_and_deletes_on_postgres() {
    on_postgres(
        mattermost_relay::irc_and_mattermost_relay_text_actions_edits_and_deletes_without_echo,
    );
}

/// 200-message bursts both ways, in order, exactly once, through the group commit.
#[test]
fn bursts_in_order_exactly_once_on_postgres() {
    on_postgres(
        mattermost_relay::bursts_of_200_arrive_in_order_exactly_once_both_ways_even_when_rate_limited,
    );
}

/// A restart (SIGTERM) catches up once and replays nothing.
#[test]
fn restart_replays_nothing_on_postgres() {
    on_postgres(mattermost_relay::daemon_restart_catches_up_once_and_replays_nothing);
}

/// A SIGKILL right after relaying doubles nothing.
#[test]
fn crash_doubles_nothing_on_postgres() {
    on_postgres(
        mattermost_relay::a_crash_right_after_relaying_doubles_nothing_though_the_position_lags,
    );
}

/// The outbox of a dead destination survives a SIGKILL and is delivered in order, once.
#[test]
fn outbox_order_after_outage_and_kill_9_on_postgres() {
    on_postgres(irc_relay::dead_destination_queues_durably_across_kill_9_and_nothing_replays);
}

/// The router and the store in process, on PostgreSQL: one outbox row per destination.
#[test]
fn commits_one_outbox_row_per_destination_on_postgres() {
    on_postgres(router_store::relay_commits_one_outbox_row_per_destination_and_wakes_it);
}

/// Three channels: each line once to each other channel.
#[test]
fn fans_out_on_postgres() {
    on_postgres(router_store::three_channel_gateway_fans_out_to_the_two_others);
}

/// An echo of our own delivery is recognised by its mapping and dropped.
#[test]
fn echoes_are_dropped_on_postgres() {
    on_postgres(router_store::echo_of_our_own_delivery_is_dropped);
}

/// The same network event twice is committed once.
#[test]
fn duplicates_are_committed_once_on_postgres() {
    on_postgres(router_store::the_same_event_twice_is_committed_once);
}

/// A destination that keeps failing holds up nobody else.
#[test]
fn a_failing_destination_holds_up_nobody_on_postgres() {
    on_postgres(router_store::a_failing_destination_does_not_hold_up_the_others);
}

/// Edits, deletes, reactions and replies resolve to each destination's own ids.
#[test]
fn targets_resolve_to_destination_ids_on_postgres() {
    on_postgres(router_store::edits_deletes_reactions_and_replies_resolve_to_the_destination_ids);
}

/// An edit of a message never bridged is dropped.
#[test]
fn unknown_targets_are_dropped_on_postgres() {
    on_postgres(router_store::an_edit_of_a_message_never_bridged_is_dropped_and_counted);
}

/// `tribridge status` and `tribridge failed list|retry|drop` against a bridge whose store is
/// PostgreSQL: the same scenario as on `SQLite`.
#[test]
fn admin_status_and_failed_list_retry_drop_on_postgres() {
    on_postgres(
        admin_socket::status_and_failed_list_retry_drop_against_a_room_that_refuses_the_bot,
    );
}

/// A Mattermost post whose shown name holds a NUL character reaches IRC, the NUL as U+FFFD.
#[test]
fn a_nul_character_is_relayed_on_postgres() {
    on_postgres(mattermost_relay::a_name_with_a_nul_character_reaches_irc);
}

/// PostgreSQL refuses what `SQLite` stores (an id too long for its index): that event of a
/// group gets a clear error and the others of its group commit, through the savepoints, as on
/// `SQLite` for any failing event; nothing half-written is left. A NUL character, which
/// PostgreSQL refuses in text too, is stored as U+FFFD.
#[test]
fn one_event_postgres_refuses_fails_alone_in_its_group() {
    use tribridge::model::{Author, ChannelRef, EventBody, Inbound, TextStyle};
    use tribridge::store::{CommitOutcome, Route, StagedInbound, Store};
    let url = crate::support::servers::shared_postgres().fresh_database();
    let store = Store::open_postgres(&url).unwrap();
    let said = |id: &str, author: &str| Inbound {
        origin: ChannelRef::new("one", "#a"),
        remote_id: Some(id.to_owned()),
        author: Author {
            id: author.to_owned(),
            display_name: author.to_owned(),
        },
        timestamp_ms: 1_700_000_000_000,
        body: EventBody::text(TextStyle::Normal, "hello"),
        permalink: None,
    };
    let routes = vec![Route {
        gateway: "g".into(),
        destination: ChannelRef::new("two", "#b"),
    }];
    // 6,000 characters that do not compress: beyond what a btree index entry may hold.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let too_long: String = (0..6000)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(b'a' + (state >> 59) as u8 % 26)
        })
        .collect();
    let mut events: Vec<StagedInbound> = [
        said("m1", "alice"),
        said(&too_long, "mallory"),
        said("m3", "nul\0name"),
    ]
    .into_iter()
    .map(|inbound| StagedInbound::new(inbound, "irc", routes.clone()).unwrap())
    .collect();
    let outcome = store.commit_group(&[], &mut events);
    assert!(outcome.acks.is_ok());
    assert!(
        matches!(outcome.events[0], Ok(CommitOutcome::Committed { .. })),
        "{:?}",
        outcome.events
    );
    let error = outcome.events[1].as_ref().unwrap_err().to_string();
    assert!(error.contains("PostgreSQL"), "{error}");
    assert!(
        matches!(outcome.events[2], Ok(CommitOutcome::Committed { .. })),
        "{:?}",
        outcome.events
    );
    let destination = ChannelRef::new("two", "#b");
    assert_eq!(store.pending_count(&destination).unwrap(), 2);
    let authors: Vec<String> = store
        .pending_batch(&destination, 0, 10)
        .unwrap()
        .into_iter()
        .map(|pending| pending.delivery.author.id)
        .collect();
    assert_eq!(authors, ["alice", "nul\u{FFFD}name"]);
    assert_eq!(
        store
            .lookup(&ChannelRef::new("one", "#a"), &too_long)
            .unwrap(),
        None
    );
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
}

/// The database goes away in the middle of the talk and comes back: what was said meanwhile
/// waits (the store writes it again on a new connection once the database answers) and then
/// arrives, once and in order; nothing said before is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_and_doubles_nothing() {
    use crate::support::bridge::{Bridge, unique, with_store};
    use crate::support::config::{irc_network, one_gateway};
    use crate::support::irc_client::{IrcClient, texts};
    use crate::support::servers::{Postgres, shared_inspircd};
    let mut postgres = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = postgres.fresh_database();
    let server = shared_inspircd();
    let (channel_a, channel_b) = (unique("#pga"), unique("#pgb"));
    let (nick_one, nick_two) = (unique("brone"), unique("brtwo"));
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    let mut bob = IrcClient::connect(server.port, &unique("bob")).await;
    alice.join(&channel_a).await;
    bob.join(&channel_b).await;
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &with_store(
            &one_gateway(
                &[
                    irc_network("one", server.port, &nick_one),
                    irc_network("two", server.port, &nick_two),
                ],
                &[("one", &channel_a), ("two", &channel_b)],
            ),
            &url,
        ),
    );
    bridge.store_url = Some(url);
    alice.wait_join(&nick_one, &channel_a).await;
    bob.wait_join(&nick_two, &channel_b).await;
    for n in 1..=20 {
        alice.say(&channel_a, &format!("line {n:02}"));
    }
    let a = alice.nick.clone();
    let before = bob.texts_until(&channel_b, "line 20").await;
    let expected: Vec<String> = (1..=20).map(|n| format!("<{a}> line {n:02}")).collect();
    assert_eq!(texts(&before), expected);
    bridge.wait_outbox_drained("two", &channel_b).await;
    // Down: every session of the bridge ends; what is said now cannot be written yet.
    let mut postgres = tokio::task::spawn_blocking(move || {
        postgres.stop();
        postgres
    })
    .await
    .unwrap();
    for n in 21..=40 {
        alice.say(&channel_a, &format!("line {n:02}"));
    }
    alice.say(&channel_a, "END");
    bridge
        .wait_for_log("The PostgreSQL store is unreachable; trying again.")
        .await;
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.start_again();
        postgres
    })
    .await
    .unwrap();
    let after = bob.texts_until(&channel_b, "END").await;
    let mut expected: Vec<String> = (21..=40).map(|n| format!("<{a}> line {n:02}")).collect();
    expected.push(format!("<{a}> END"));
    assert_eq!(texts(&after), expected);
    bridge.wait_outbox_drained("two", &channel_b).await;
    let store = bridge.open_store();
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    assert_eq!(
        store
            .delivered_count(&tribridge::model::ChannelRef::new("two", &channel_b))
            .unwrap(),
        41
    );
    drop(store);
    bridge.terminate();
    drop(postgres);
}

/// One group holding what the row-by-row path decides event by event (a duplicate of an event
/// of the same group, an echo of a delivery acknowledged in it, a deletion of a message of the
/// same group and one of a message never seen, a nick change and later names) gets the same
/// outcomes and leaves the same people on PostgreSQL, where the group is written a few
/// statements at a time, as on `SQLite`.
#[test]
fn a_group_is_decided_in_order_on_both_backends_alike() {
    use tribridge::model::{Author, ChannelRef, EventBody, Inbound, Membership, TextStyle};
    use tribridge::store::{CommitOutcome, Completion, Queued, Route, StagedInbound, Store};
    let dir = tempfile::tempdir().unwrap();
    let url = crate::support::servers::shared_postgres().fresh_database();
    let stores = [
        Store::open(dir.path()).unwrap(),
        Store::open_postgres(&url).unwrap(),
    ];
    let event = |channel: &str, id: &str, author: &str, body: EventBody| Inbound {
        origin: ChannelRef::new("one", channel),
        remote_id: Some(id.to_owned()),
        author: Author {
            id: author.to_owned(),
            display_name: author.to_owned(),
        },
        timestamp_ms: 1_700_000_000_000,
        body,
        permalink: None,
    };
    let text = |words: &str| EventBody::text(TextStyle::Normal, words);
    let to_two = vec![Route {
        gateway: "g".into(),
        destination: ChannelRef::new("one", "#b"),
    }];
    let stage = |inbounds: Vec<Inbound>| -> Vec<StagedInbound> {
        inbounds
            .into_iter()
            .map(|inbound| StagedInbound::new(inbound, "irc", to_two.clone()).unwrap())
            .collect()
    };
    let mut seen = Vec::new();
    for store in &stores {
        let mut first = stage(vec![event("#a", "m0", "alice", text("first"))]);
        let outcome = store.commit_group(&[], &mut first);
        let Some(Queued::Announced(pending)) = outcome.queued.first() else {
            panic!("{outcome:?}");
        };
        // Acknowledged as `r0` in #b; `r0` then comes back from #b in the same group.
        let ack = Completion::of(&pending.delivery, pending.seq, Some("r0".into()));
        let mut group = stage(vec![
            event("#b", "r0", "bridge", text("first")),
            event("#a", "m1", "bob", text("second")),
            event("#a", "m1", "bob", text("second")),
            event(
                "#a",
                "d1",
                "bob",
                EventBody::Delete {
                    target: "m1".into(),
                },
            ),
            event(
                "#a",
                "d2",
                "bob",
                EventBody::Delete {
                    target: "zz".into(),
                },
            ),
            event(
                "#a",
                "n1",
                "bob",
                EventBody::Membership(Membership::Renamed {
                    new_name: "robert".into(),
                }),
            ),
        ]);
        let outcome = store.commit_group(&[ack.clone(), ack], &mut group);
        assert!(outcome.acks.is_ok(), "{outcome:?}");
        let m1 = match outcome.events[1] {
            Ok(CommitOutcome::Committed { message_id, .. }) => message_id,
            ref other => panic!("{other:?}"),
        };
        let kinds: Vec<String> = outcome
            .events
            .iter()
            .map(|outcome| match outcome {
                Ok(CommitOutcome::Committed { .. }) => "committed".to_owned(),
                Ok(CommitOutcome::Echo { .. }) => "echo".to_owned(),
                Ok(CommitOutcome::Duplicate { message_id }) => {
                    format!("duplicate of m1: {}", *message_id == m1)
                }
                Ok(CommitOutcome::UnknownTarget) => "unknown target".to_owned(),
                Err(error) => format!("error {error}"),
            })
            .collect();
        // Later names in a group without a nick change: one row per person, the last name.
        let mut named = stage(vec![
            event("#a", "m2", "carol", text("third")),
            event("#a", "m3", "robert", text("fourth")),
        ]);
        named[1] = StagedInbound::new(
            Inbound {
                author: Author {
                    id: "carol".into(),
                    display_name: "Carol".into(),
                },
                ..event("#a", "m3", "carol", text("fourth"))
            },
            "irc",
            to_two.clone(),
        )
        .unwrap();
        let outcome = store.commit_group(&[], &mut named);
        assert!(outcome.events.iter().all(Result::is_ok), "{outcome:?}");
        let mut people: Vec<_> = store
            .people()
            .unwrap()
            .into_iter()
            .map(|p| (p.user_id, p.display_name, p.renamed_to))
            .collect();
        people.sort();
        let destination = ChannelRef::new("one", "#b");
        seen.push((
            kinds,
            people,
            store.pending_count(&destination).unwrap(),
            store.delivered_count(&destination).unwrap(),
            store.integrity_problems().unwrap(),
        ));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(
        seen[0].0,
        [
            "echo",
            "committed",
            "duplicate of m1: true",
            "committed",
            "unknown target",
            "committed"
        ]
    );
    // m1, d1, n1, m2, m3 queued; m0 delivered once though acknowledged twice.
    assert_eq!((seen[0].2, seen[0].3), (5, 1));
}

/// The history decided alike on both backends, in process: the same events chained (the
/// records read back the same, field for field but the receiving time, which is each store's
/// clock), the same retention pass (what is forgotten with its edit, what a queued delivery
/// keeps) and the same verdict of the chain with its tombstones.
#[test]
fn the_history_is_chained_and_pruned_alike_on_both_backends() {
    use tribridge::archive::chain::{self, Verdict};
    use tribridge::model::{Author, ChannelRef, EventBody, Inbound, TextStyle};
    use tribridge::store::{Route, Store, StoreError};
    use tribridge::vocab::gateway::{Direction, GatewayChannel, GatewayConfig, HistoryPolicy};
    let dir = tempfile::tempdir().unwrap();
    let url = crate::support::servers::shared_postgres().fresh_database();
    let stores = [
        Store::open(dir.path()).unwrap(),
        Store::open_postgres(&url).unwrap(),
    ];
    let channel = |name: &str| GatewayChannel {
        network: "one".into(),
        channel: name.into(),
        direction: Direction::InOut,
    };
    let gateway = GatewayConfig {
        name: "g".into(),
        channels: vec![channel("#a"), channel("#b")],
        long_text: tribridge::richtext::long_text::LongTextPolicy::default(),
        allow_mass_pings: false,
        edit_policy: tribridge::richtext::edits::EditPolicy::default(),
        original_time_after: None,
        irc_replies: tribridge::vocab::gateway::IrcReplies::default(),
        remote_nick_format: None,
        history: HistoryPolicy {
            archive: true,
            retention_days: Some(1),
            legal_hold: false,
        },
    };
    let retention = tribridge::archive::Retention::from_gateways(&[gateway]);
    let destination = ChannelRef::new("one", "#b");
    let routes = vec![Route {
        gateway: "g".into(),
        destination: destination.clone(),
    }];
    let event = |id: &str, body: EventBody| Inbound {
        origin: ChannelRef::new("one", "#a"),
        remote_id: Some(id.to_owned()),
        author: Author {
            id: "alice".into(),
            display_name: "Alice \"A\" Ünïcode".into(),
        },
        timestamp_ms: 1_700_000_000_000,
        body,
        permalink: None,
    };
    let text = |words: &str| EventBody::text(TextStyle::Normal, words);
    let mut seen = Vec::new();
    for store in &stores {
        store
            .commit_inbound(&event("m1", text("the minutes")), "irc", &routes)
            .unwrap();
        let edit = EventBody::Edit {
            target: "m1".into(),
            style: TextStyle::Normal,
            text: tribridge::richtext::FormattedText::plain("the minutes, approved"),
        };
        store
            .commit_inbound(&event("e1", edit), "irc", &routes)
            .unwrap();
        store
            .commit_inbound(&event("m2", text("a \\ backslash")), "irc", &routes)
            .unwrap();
        // Everything delivered but the last: its delivery stays queued.
        for pending in store.pending_batch(&destination, 0, 100).unwrap() {
            store
                .complete_delivery(pending.seq, Some(&format!("r{}", pending.seq)))
                .unwrap();
        }
        store
            .commit_inbound(&event("m3", text("stuck")), "irc", &routes)
            .unwrap();
        let chained = chain::chain_new(store, &retention).unwrap();
        let mut records = store
            .read_history(|history| {
                Ok::<_, StoreError>(
                    history
                        .chain_page("g", 0, 100)?
                        .into_iter()
                        .map(|row| {
                            let record = row.record.expect("each message is still there");
                            assert_eq!(record.hash(), row.record_hash);
                            record
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap();
        for record in &mut records {
            record.received_ms = 0;
        }
        let pruned = tribridge::archive::prune(
            store,
            None,
            &retention,
            tribridge::model::now_ms() + 3 * 86_400_000,
            || {},
        )
        .unwrap();
        let verdict = store
            .read_history(|history| chain::verify(history, "g"))
            .unwrap();
        let Verdict::Intact {
            records: chain_rows,
            tombstones,
            ..
        } = verdict
        else {
            panic!("{verdict:?}");
        };
        seen.push((
            chained.records,
            records,
            (pruned.messages, pruned.kept_pending, pruned.deliveries),
            (chain_rows, tombstones),
            store.footprint().unwrap().0,
            store.integrity_problems().unwrap(),
        ));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].0, 4);
    // m1 with its edit and m2 forgotten (their 3 deliveries with them); m3 kept for its queued
    // delivery.
    assert_eq!(seen[0].2, (3, 1, 3));
    assert_eq!(seen[0].3, (4, 3));
    assert_eq!(seen[0].4, 1);
}
