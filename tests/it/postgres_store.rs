//! The PostgreSQL store under the daemon: existing scenarios run as they are, with every bridge
//! they start keeping its state in a database of its own on the shared PostgreSQL
//! ([`on_postgres`]), so the two backends pass the same tests, not copies of them.

use crate::support::bridge::on_postgres;
use crate::{irc_relay, mattermost_relay};

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
