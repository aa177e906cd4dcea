//! Mentions as Mattermost shows them: `@username`, which notifies that user.
//!
//! Inbound ([`inbound`]), an `@name` that is no user of this server but the name of a person
//! relayed from another network becomes a mention of that person, and such names written as
//! words too. Outbound ([`outbound`]), mentions of this server's users become `@username`
//! (the directory knows them by user id, and their username is the name they are shown under),
//! the others the names they are shown under here. With `remote_users`, a person who has a
//! remote user here is that user both ways: `@alice-irc` is a mention of alice of IRC, and a
//! mention of her from elsewhere is `@alice-irc` ([`inbound_with`], [`outbound_text_with`]).
//! A person linked to an account here in `[[identity]]` is that account: a mention of any of
//! their accounts is `@username`.
//! Must not: know any other network's syntax.

use crate::model::{Delivery, EventBody};
use crate::richtext::FormattedText;
use crate::richtext::mention::{detect_mentions, map_mentions, rewrite_mentions};
use crate::richtext::model::{Inline, Mention, MentionTarget};
use crate::vocab::People;

/// The text of a post on Mattermost network `network`, with the names of people relayed from
/// elsewhere as their mentions.
pub fn inbound(text: &mut FormattedText, people: &People, network: &str) {
    inbound_with(text, people, network, &|_| None);
}

/// [`inbound`], where `remote` names the person (origin network, their id there) a remote
/// user of this network stands for, by username: `@alice-irc` is a mention of `alice` on IRC.
pub fn inbound_with(
    text: &mut FormattedText,
    people: &People,
    network: &str,
    remote: &dyn Fn(&str) -> Option<(String, String)>,
) {
    map_mentions(text, &mut |mention: Mention| {
        let relayed = match &mention.target {
            MentionTarget::User {
                network: of,
                user_id,
            } if of == network => match remote(user_id) {
                Some((origin, author)) => Some(MentionTarget::User {
                    network: origin,
                    user_id: author,
                }),
                None if !people.is_native(network, user_id) => people.shown_as(network, user_id),
                None => None,
            },
            _ => None,
        };
        Inline::Mention(match relayed {
            Some(target) => Mention { target, ..mention },
            None => mention,
        })
    });
    if !people.is_empty() {
        detect_mentions(text, &|word| people.shown_as(network, word));
    }
}

/// The text of a delivery to Mattermost network `network`: its users as `@username`, everyone
/// else as the name they are shown under here.
pub fn outbound(delivery: &mut Delivery, people: &People, network: &str) {
    if let EventBody::Text { text, .. } | EventBody::Edit { text, .. } = &mut delivery.body {
        outbound_text(text, people, network);
    }
}

/// [`outbound`] of one text.
pub fn outbound_text(text: &mut FormattedText, people: &People, network: &str) {
    outbound_text_with(text, people, network, &|_, _| None);
}

/// [`outbound_text`], where `remote` gives the username of the remote user a person (origin
/// network, their id there) has here: they are mentioned as `@username`, which notifies them.
pub fn outbound_text_with(
    text: &mut FormattedText,
    people: &People,
    network: &str,
    remote: &dyn Fn(&str, &str) -> Option<String>,
) {
    // People of other networks with a remote user here are that user: a mention of it.
    map_mentions(text, &mut |mention: Mention| {
        let username = match &mention.target {
            MentionTarget::User {
                network: other,
                user_id,
            } if other != network => {
                let current = people.current(other, user_id);
                let id = current
                    .as_ref()
                    .map_or(user_id.as_str(), |(id, _)| id.as_str());
                // A person linked to an account here (`[[identity]]`) is that account.
                people
                    .identities()
                    .account_on(other, id, network)
                    .map(str::to_owned)
                    .or_else(|| remote(other, id))
            }
            _ => None,
        };
        Inline::Mention(match username {
            Some(username) => Mention {
                display: format!("@{username}"),
                target: MentionTarget::User {
                    network: network.to_owned(),
                    user_id: username,
                },
            },
            None => mention,
        })
    });
    rewrite_mentions(
        text,
        network,
        &|user_id, _| {
            let username = people
                .current(network, user_id)
                .map_or_else(|| user_id.to_owned(), |(_, username)| username);
            Some(Mention {
                display: format!("@{username}"),
                target: MentionTarget::User {
                    network: network.to_owned(),
                    user_id: username,
                },
            })
        },
        &|other, user_id| people.current(other, user_id).map(|(_, shown)| shown),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::richtext::markdown;
    use std::collections::HashMap;

    #[test]
    fn a_relayed_person_is_named_with_at_and_a_user_here_becomes_their_username() {
        let people = People::new(HashMap::from([
            ("mm".to_owned(), crate::vocab::CaseMapping::Ascii),
            ("mx".to_owned(), crate::vocab::CaseMapping::Exact),
        ]));
        people.saw("mm", "u1", "erin");
        people.saw("mx", "@carol:hs", "carol");
        let mut text = markdown::parse_for_network("@carol and @erin, see", "mm");
        inbound(&mut text, &people, "mm");
        assert_eq!(
            crate::richtext::mention::mentioned_users(&text, "mx"),
            ["@carol:hs"]
        );
        let mut delivery = Delivery::sample(
            1,
            crate::model::ChannelRef::new("irc", "#a"),
            crate::model::ChannelRef::new("mm", "town"),
            "",
        );
        let mut from_irc = crate::richtext::irc::parse("erin: look");
        from_irc = {
            let mut t = from_irc;
            detect_mentions(&mut t, &|word| people.shown_as("irc", word));
            t
        };
        delivery.body = EventBody::formatted(crate::model::TextStyle::Normal, from_irc);
        outbound(&mut delivery, &people, "mm");
        let EventBody::Text { text, .. } = &delivery.body else {
            unreachable!()
        };
        assert_eq!(markdown::render(text), "@erin: look");
    }

    #[test]
    fn a_linked_persons_irc_nick_is_their_username_here() {
        let people = People::new(HashMap::from([
            ("irc".to_owned(), crate::vocab::CaseMapping::Rfc1459),
            ("mm".to_owned(), crate::vocab::CaseMapping::Ascii),
        ]));
        people.link(vec![crate::vocab::Identity {
            name: Some("Alice Example".into()),
            accounts: vec![
                ("irc".into(), "alice".into()),
                ("mm".into(), "alicem".into()),
            ],
            nickserv_password: None,
        }]);
        let mut delivery = Delivery::sample(
            1,
            crate::model::ChannelRef::new("irc", "#a"),
            crate::model::ChannelRef::new("mm", "town"),
            "",
        );
        let mut from_irc = crate::richtext::irc::parse("ALICE: look");
        // IRC's own detection makes her nick a mention of her IRC account.
        crate::richtext::mention::detect_mentions(&mut from_irc, &|word| {
            (word == "ALICE").then(|| MentionTarget::User {
                network: "irc".into(),
                user_id: word.into(),
            })
        });
        delivery.body = EventBody::formatted(crate::model::TextStyle::Normal, from_irc);
        outbound(&mut delivery, &people, "mm");
        let EventBody::Text { text, .. } = &delivery.body else {
            unreachable!()
        };
        assert_eq!(markdown::render(text), "@alicem: look");
    }
}
