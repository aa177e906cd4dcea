//! Mentions as Matrix shows them: a pill (a `matrix.to` link to the user id) and the user id in
//! `m.mentions.user_ids`, which is what notifies a Matrix user.
//!
//! Inbound ([`inbound`]), pills name the configured network, and the names of people relayed
//! from other networks become mentions of them: a pill of the bot's own account whose text is
//! such a name (what a client makes of a relayed sender), and such names written as words. Outbound ([`outbound`]), mentions of Matrix users become pills
//! and the others the names they are shown under here; [`mentioned`] lists whom to notify.
//! Must not: notify anyone the text does not mention (the reply's author aside, as the spec
//! asks), or know any other network's syntax.

use crate::model::{Delivery, EventBody};
use crate::richtext::FormattedText;
use crate::richtext::html::{self, MATRIX_NETWORK};
use crate::richtext::mention::{detect_mentions, map_mentions, mentioned_users, rewrite_mentions};
use crate::richtext::model::{Inline, Mention, MentionTarget};
use crate::vocab::People;

/// The text of an event said on Matrix network `network` (the bot being `own_user`), with its
/// pills naming `network` and the names of people relayed from elsewhere as their mentions.
pub fn inbound(text: &mut FormattedText, people: &People, network: &str, own_user: &str) {
    map_mentions(text, &mut |mention: Mention| {
        let Mention {
            display,
            target:
                MentionTarget::User {
                    network: of,
                    user_id,
                },
        } = mention
        else {
            return Inline::Mention(mention);
        };
        let of = if of == MATRIX_NETWORK {
            network.to_owned()
        } else {
            of
        };
        // Only a pill of the bot's own account stands for a relayed person: a pill of anyone
        // else is that Matrix user, whatever their name.
        let relayed = (of == network && user_id == own_user)
            .then(|| people.shown_as(network, display.trim_start_matches('@')))
            .flatten();
        Inline::Mention(Mention {
            display,
            target: relayed.unwrap_or(MentionTarget::User {
                network: of,
                user_id,
            }),
        })
    });
    if !people.is_empty() {
        detect_mentions(text, &|word| people.shown_as(network, word));
    }
}

/// The text of a delivery to Matrix network `network`: Matrix users as pills showing their
/// current display name (a person linked to a Matrix account here in `[[identity]]` is that
/// account), everyone else as the name they are shown under here.
pub fn outbound(delivery: &mut Delivery, people: &People, network: &str) {
    if let EventBody::Text { text, .. } | EventBody::Edit { text, .. } = &mut delivery.body {
        // A Matrix user id is the same user on every homeserver: a pill from another Matrix
        // network (or stored before pills named their network) stays a pill here.
        map_mentions(text, &mut |mention: Mention| {
            let global = matches!(&mention.target, MentionTarget::User { network: of, user_id }
                if of != network && html::pill_user_id(&html::pill_url(user_id)).is_some());
            if global && let MentionTarget::User { user_id, .. } = mention.target {
                return Inline::Mention(Mention {
                    display: mention.display,
                    target: MentionTarget::User {
                        network: network.to_owned(),
                        user_id,
                    },
                });
            }
            // A person linked to a Matrix account here (`[[identity]]`) is that account.
            if let MentionTarget::User {
                network: of,
                user_id,
            } = &mention.target
                && let Some(account) = people.identities().account_on(of, user_id, network)
            {
                return Inline::Mention(Mention {
                    display: mention.display.trim_start_matches('@').to_owned(),
                    target: MentionTarget::User {
                        network: network.to_owned(),
                        user_id: account.to_owned(),
                    },
                });
            }
            Inline::Mention(mention)
        });
        rewrite_mentions(
            text,
            network,
            &|user_id, display| {
                let shown = people
                    .current(network, user_id)
                    .map_or_else(|| display.to_owned(), |(_, shown)| shown);
                Some(Mention {
                    display: shown,
                    target: MentionTarget::User {
                        network: network.to_owned(),
                        user_id: user_id.to_owned(),
                    },
                })
            },
            &|other, user_id| people.current(other, user_id).map(|(_, shown)| shown),
        );
    }
}

/// The Matrix users a delivery to `network` notifies (`m.mentions.user_ids`): those its text
/// mentions, and the author of the message it replies to when that is a Matrix user there.
#[must_use]
pub fn mentioned(delivery: &Delivery, network: &str) -> Vec<String> {
    let mut users = match &delivery.body {
        EventBody::Text { text, .. } | EventBody::Edit { text, .. } => {
            mentioned_users(text, network)
        }
        _ => Vec::new(),
    };
    if let Some(replied) = &delivery.replied
        && replied.network == network
        && delivery.reply_to.is_some()
        && !users.contains(&replied.author.id)
    {
        users.push(replied.author.id.clone());
    }
    users
}

/// Whether the text (after [`crate::richtext::mention::neutralise_mass_pings`]) still
/// notifies the whole room.
#[must_use]
pub fn mentions_room(text: &FormattedText) -> bool {
    let mut room = false;
    map_mentions(&mut text.clone(), &mut |mention: Mention| {
        room |= mention.target == MentionTarget::Room;
        Inline::Mention(mention)
    });
    room
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn people() -> People {
        let people = People::new(HashMap::from([
            ("irc".to_owned(), crate::vocab::CaseMapping::Rfc1459),
            ("mx".to_owned(), crate::vocab::CaseMapping::Exact),
        ]));
        people.saw("irc", "dave", "dave");
        people.saw("mx", "@carol:hs", "Carol");
        people
    }

    fn targets(text: &FormattedText) -> Vec<String> {
        let mut found = mentioned_users(text, "irc");
        found.extend(mentioned_users(text, "mx"));
        found
    }

    #[test]
    fn a_pill_of_the_bot_showing_a_relayed_name_is_that_person() {
        let people = people();
        let mut text = html::parse(
            "<a href=\"https://matrix.to/#/@bot:hs\">dave</a>: hi <a href=\"https://matrix.to/#/@carol:hs\">Carol</a>",
        );
        inbound(&mut text, &people, "mx", "@bot:hs");
        assert_eq!(targets(&text), ["dave", "@carol:hs"]);
        let mut typed = FormattedText::plain("thanks dave, and the rest");
        inbound(&mut typed, &people, "mx", "@bot:hs");
        assert_eq!(targets(&typed), ["dave"]);
    }

    #[test]
    fn mentions_of_matrix_users_are_pills_and_notify_them() {
        let people = people();
        let mut delivery = Delivery::sample(
            1,
            crate::model::ChannelRef::new("irc", "#a"),
            crate::model::ChannelRef::new("mx", "!r"),
            "",
        );
        let mut text = crate::richtext::irc::parse("carol: look, dave");
        crate::connector::irc::mentions::detect(&mut text, &people, "irc");
        delivery.body = EventBody::formatted(crate::model::TextStyle::Normal, text);
        outbound(&mut delivery, &people, "mx");
        let EventBody::Text { text, .. } = &delivery.body else {
            unreachable!()
        };
        assert_eq!(
            html::render(text).formatted_body.as_deref(),
            Some("<a href=\"https://matrix.to/#/@carol:hs\">Carol</a>: look, dave")
        );
        assert_eq!(mentioned(&delivery, "mx"), ["@carol:hs"]);
    }

    #[test]
    fn a_pill_from_another_matrix_network_stays_a_pill() {
        let people = people();
        let mut delivery = Delivery::sample(
            1,
            crate::model::ChannelRef::new("mx2", "!o"),
            crate::model::ChannelRef::new("mx", "!r"),
            "",
        );
        let mut text = html::parse("<a href=\"https://matrix.to/#/@zoe:other\">Zoe</a> hi");
        inbound(&mut text, &people, "mx2", "@bot2:other");
        delivery.body = EventBody::formatted(crate::model::TextStyle::Normal, text);
        outbound(&mut delivery, &people, "mx");
        assert_eq!(mentioned(&delivery, "mx"), ["@zoe:other"]);
    }

    #[test]
    fn a_linked_persons_irc_nick_is_a_pill_of_their_matrix_account() {
        let people = people();
        people.link(vec![crate::vocab::Identity {
            name: None,
            accounts: vec![
                ("irc".into(), "alice".into()),
                ("mx".into(), "@alice:hs".into()),
            ],
            nickserv_password: None,
        }]);
        let mut delivery = Delivery::sample(
            1,
            crate::model::ChannelRef::new("irc", "#a"),
            crate::model::ChannelRef::new("mx", "!r"),
            "",
        );
        let mut from_irc = crate::richtext::irc::parse("alice: look");
        // IRC's own detection makes her nick a mention of her IRC account.
        crate::richtext::mention::detect_mentions(&mut from_irc, &|word| {
            (word == "alice").then(|| MentionTarget::User {
                network: "irc".into(),
                user_id: word.into(),
            })
        });
        delivery.body = EventBody::formatted(crate::model::TextStyle::Normal, from_irc);
        outbound(&mut delivery, &people, "mx");
        assert_eq!(mentioned(&delivery, "mx"), ["@alice:hs"]);
    }
}
