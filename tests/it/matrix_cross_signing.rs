//! The bridge's Matrix device cross-signed by its account, through the real daemon and a real
//! Synapse: a person on a client set up as Element is since April 2026 (room keys shared only
//! with cross-signed devices, events decrypted only from them, the person's own device
//! cross-signed) talks with IRC through an encrypted room; the signatures are checked over
//! `/keys/query` as any client checks them; the identity survives a restart, a lost state
//! (restored with the recovery key through `tribridge matrix-recover`), and a reset made
//! elsewhere is told loudly and not overwritten.

use std::path::Path;
use std::time::{Duration, Instant};

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::encryption::vodozemac::{Ed25519PublicKey, Ed25519Signature};
use matrix_sdk::room::Room;
use serde_json::{Value, json};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::{irc_network, matrix_network, one_gateway as config};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::matrix_client::{MatrixUser, register};
use crate::support::servers::{free_port, shared_inspircd, shared_synapse};

/// The bridge's configuration in these tests: IRC `irc` and Matrix `mx` (account `bot`) in one
/// gateway linking `channel` and `#alias_name:localhost`; `matrix_edit` (`(from, to)`, replaced
/// once) changes the Matrix section, `metrics_port` turns the metrics listener on.
#[allow(clippy::too_many_arguments)]
fn bridge_config(
    irc_port: u16,
    nick: &str,
    channel: &str,
    url: &str,
    bot: &str,
    alias_name: &str,
    matrix_edit: Option<(&str, &str)>,
    metrics_port: Option<u16>,
) -> String {
    let mut matrix = matrix_network("mx", url, bot);
    if let Some((from, to)) = matrix_edit {
        assert!(matrix.contains(from), "the Matrix section has no `{from}`");
        matrix = matrix.replacen(from, to, 1);
    }
    let text = config(
        &[irc_network("irc", irc_port, nick), matrix],
        &[
            ("irc", channel),
            ("mx", &format!("#{alias_name}:localhost")),
        ],
    );
    match metrics_port {
        Some(port) => text.replacen(
            "\n\n",
            &format!("\nmetrics_listen = \"127.0.0.1:{port}\"\n\n"),
            1,
        ),
        None => text,
    }
}

/// A person's client as Element is since April 2026: cross-signing bootstrapped at login (the
/// person's own device signed), room keys shared by identity, only cross-signed senders
/// decrypted.
async fn element_client(url: &str, user: &str, dir: &Path) -> Client {
    use matrix_sdk::encryption::EncryptionSettings;
    use matrix_sdk_crypto::{CollectStrategy, DecryptionSettings, TrustRequirement};
    let client = Client::builder()
        .homeserver_url(url)
        .sqlite_store(dir, None)
        .with_encryption_settings(EncryptionSettings {
            auto_enable_cross_signing: true,
            ..Default::default()
        })
        .with_room_key_recipient_strategy(CollectStrategy::IdentityBasedStrategy)
        .with_decryption_settings(DecryptionSettings {
            sender_device_trust_requirement: TrustRequirement::CrossSigned,
        })
        .build()
        .await
        .unwrap();
    client
        .matrix_auth()
        .login_username(user, "password")
        .send()
        .await
        .unwrap();
    client
        .encryption()
        .wait_for_e2ee_initialization_tasks()
        .await;
    let status = client.encryption().cross_signing_status().await.unwrap();
    assert!(status.is_complete(), "the person's identity: {status:?}");
    client
}

/// `/keys/query` for `user`, as any client asks it.
async fn keys_query(base: &str, token: &str, user: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/_matrix/client/v3/keys/query"))
        .bearer_auth(token)
        .json(&json!({"device_keys": {user: []}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "keys/query");
    response.json().await.unwrap()
}

/// The one ed25519 key of a cross-signing key object (`keys: {"ed25519:<key>": "<key>"}`).
fn signing_key(object: &Value) -> Ed25519PublicKey {
    let keys = object["keys"].as_object().expect("keys");
    assert_eq!(keys.len(), 1, "{object}");
    Ed25519PublicKey::from_base64(keys.values().next().unwrap().as_str().unwrap()).unwrap()
}

/// Whether `object` carries a valid signature of `user` by `key` (over its canonical JSON,
/// without `signatures` and `unsigned`).
fn signed_by(object: &Value, user: &str, key: &Ed25519PublicKey) -> bool {
    let Some(signature) = object["signatures"][user][format!("ed25519:{}", key.to_base64())]
        .as_str()
        .and_then(|s| Ed25519Signature::from_base64(s).ok())
    else {
        return false;
    };
    let mut unsigned = object.clone();
    let map = unsigned.as_object_mut().unwrap();
    map.remove("signatures");
    map.remove("unsigned");
    let canonical = matrix_sdk::ruma::canonical_json::to_canonical_value(&unsigned).unwrap();
    key.verify(canonical.to_string().as_bytes(), &signature)
        .is_ok()
}

/// Check, as a client does, that `device` of `user` is signed by the account's self-signing
/// key, itself signed by the master key; returns the master key.
fn cross_signed_master(keys: &Value, user: &str, device: &str) -> Result<String, String> {
    let master = &keys["master_keys"][user];
    if master.is_null() {
        return Err(format!("no master key: {keys}"));
    }
    let master_key = signing_key(master);
    let self_signing = &keys["self_signing_keys"][user];
    if self_signing.is_null() {
        return Err(format!("no self-signing key: {keys}"));
    }
    let self_signing_key = signing_key(self_signing);
    if !signed_by(self_signing, user, &master_key) {
        return Err(format!(
            "self-signing key not signed by the master key: {keys}"
        ));
    }
    let device_keys = &keys["device_keys"][user][device];
    if device_keys.is_null() {
        return Err(format!("no device {device}: {keys}"));
    }
    if !signed_by(device_keys, user, &self_signing_key) {
        return Err(format!(
            "device {device} not signed by the self-signing key: {keys}"
        ));
    }
    Ok(master_key.to_base64())
}

/// The bridge's device, from its saved session.
fn bridge_device(state: &Path, network: &str) -> String {
    let session: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join(format!("matrix-{network}/session.json"))).unwrap(),
    )
    .unwrap();
    session["device_id"]
        .as_str()
        .or_else(|| session["meta"]["device_id"].as_str())
        .expect("device id in session.json")
        .to_owned()
}

/// Wait until `/keys/query` shows `device` of `user` cross-signed; returns the master key.
async fn wait_cross_signed(base: &str, token: &str, user: &str, device: &str) -> String {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        match cross_signed_master(&keys_query(base, token, user).await, user, device) {
            Ok(master) => return master,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `/metrics` value of the bridge, e.g. `tribridge_matrix_cross_signed{network="mx"}`.
async fn metric(port: u16, series: &str) -> Option<i64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    #[allow(clippy::cast_possible_truncation)]
    crate::support::sample(&text, series).map(|value| value as i64)
}

async fn wait_metric(port: u16, series: &str, value: i64) {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let now = metric(port, series).await;
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now:?}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sync the person's client until the bot is a joined member of `room`.
async fn wait_joined(client: &Client, settings: &mut SyncSettings, room: &Room, bot: &str) {
    let bot = matrix_sdk::ruma::UserId::parse(bot).unwrap();
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let response = client.sync_once(settings.clone()).await.unwrap();
        *settings = settings.clone().token(response.next_batch);
        let member = room.get_member_no_sync(&bot).await.unwrap();
        if member.is_some_and(|m| {
            *m.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "the bot never joined");
    }
}

/// Sync the person's client until a message containing `marker` arrives in `room`: its body
/// when it decrypted, `Err` with what arrived instead when it did not.
async fn wait_message(
    client: &Client,
    settings: &mut SyncSettings,
    room: &Room,
    marker: &str,
    timeout: Duration,
) -> Result<String, String> {
    use matrix_sdk::ruma::events::{
        AnySyncMessageLikeEvent, AnySyncTimelineEvent, SyncMessageLikeEvent,
    };
    let deadline = Instant::now() + timeout;
    let mut undecrypted = 0;
    loop {
        let response = client.sync_once(settings.clone()).await.unwrap();
        *settings = settings.clone().token(response.next_batch.clone());
        for event in response
            .rooms
            .joined
            .get(room.room_id())
            .into_iter()
            .flat_map(|update| &update.timeline.events)
        {
            match event.raw().deserialize() {
                Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                    SyncMessageLikeEvent::Original(message),
                ))) if message.content.body().contains(marker) => {
                    assert!(
                        event.encryption_info().is_some(),
                        "sent in the clear: {}",
                        message.content.body()
                    );
                    return Ok(message.content.body().to_owned());
                }
                Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomEncrypted(
                    _,
                ))) => undecrypted += 1,
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no decrypted message with {marker:?}; {undecrypted} undecryptable events"
            ));
        }
    }
}

/// An encrypted room created by `client` with `alias_name`.
async fn encrypted_room(client: &Client, alias_name: &str) -> Room {
    use matrix_sdk::ruma::api::client::room::create_room;
    use matrix_sdk::ruma::events::InitialStateEvent;
    use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
    let mut request = create_room::v3::Request::new();
    request.room_alias_name = Some(alias_name.to_owned());
    request.preset = Some(create_room::v3::RoomPreset::PublicChat);
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    client.create_room(request).await.unwrap()
}

/// An Element-like person and IRC talk through an encrypted room; the bridge trusts only
/// cross-signed devices too (`trust = "cross-signed"`). The bridge's device is cross-signed
/// (checked over `/keys/query`), its recovery key is in a 0600 file and logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_element_person_and_irc_talk_through_an_encrypted_room_with_a_cross_signed_bridge() {
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    let bot_id = format!("@{bot}:localhost");
    register(&url, &bot, "password").await;
    let alice = unique("alice");
    register(&url, &alice, "password").await;
    let alice_dir = tempfile::tempdir().unwrap();
    let client = element_client(&url, &alice, alice_dir.path()).await;
    let token = client.access_token().unwrap();
    let alice_id = client.user_id().unwrap().to_string();
    let alice_device = client.device_id().unwrap().to_string();
    // The person's own device is cross-signed, as Element requires of it.
    wait_cross_signed(&url, &token, &alice_id, &alice_device).await;
    let alias_name = unique("secret");
    let room = encrypted_room(&client, &alias_name).await;
    let mut settings = SyncSettings::default().timeout(Duration::from_secs(2));
    let response = client.sync_once(settings.clone()).await.unwrap();
    settings = settings.token(response.next_batch);

    let channel = unique("#secret");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let bridge = Bridge::start(
        dir.path(),
        &bridge_config(
            irc_port,
            &nick,
            &channel,
            &url,
            &bot,
            &alias_name,
            Some(("\n\n", "\ntrust = \"cross-signed\"\n\n")),
            Some(metrics_port),
        ),
    );
    irc.wait_join(&nick, &channel).await;
    wait_joined(&client, &mut settings, &room, &bot_id).await;
    let state = dir.path().join("state");
    let device = bridge_device(&state, "mx");
    let master = wait_cross_signed(&url, &token, &bot_id, &device).await;
    wait_metric(
        metrics_port,
        "tribridge_matrix_cross_signed{network=\"mx\"}",
        1,
    )
    .await;

    room.send(RoomMessageEventContent::text_plain("secret hello"))
        .await
        .unwrap();
    assert_eq!(
        texts(&irc.texts_until(&channel, "secret hello").await),
        vec![format!("<{alice}> secret hello")]
    );
    irc.say(&channel, "hello back");
    let body = wait_message(
        &client,
        &mut settings,
        &room,
        "hello back",
        Duration::from_mins(1),
    )
    .await
    .unwrap();
    assert_eq!(body, format!("<{}> hello back", irc.nick));

    // The recovery key: a file only its owner reads, and one log line that says what it is.
    let key_file = state.join("matrix-mx.recovery-key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let key = key.trim();
    assert!(!key.is_empty());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let logs = bridge.logs();
    assert_eq!(logs.matches(key).count(), 1, "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains(key) && l.contains("matrix-recover")),
        "{logs}"
    );
    assert!(logs.contains(&master), "the master key is logged: {logs}");
}

/// With `trust = "cross-signed"` the bridge reads and writes for cross-signed devices only: a
/// person on a client that never cross-signed its device (an older client) is not relayed (the
/// drop is logged and counted), and cannot read what the bridge says; the Element-like person
/// in the same room is relayed both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trust_cross_signed_an_unsigned_device_neither_reaches_irc_nor_reads_the_bridge() {
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    let bot_id = format!("@{bot}:localhost");
    register(&url, &bot, "password").await;
    let alice = unique("alice");
    register(&url, &alice, "password").await;
    let alice_dir = tempfile::tempdir().unwrap();
    let client = element_client(&url, &alice, alice_dir.path()).await;
    let alias_name = unique("secret");
    let room = encrypted_room(&client, &alias_name).await;
    let mut settings = SyncSettings::default().timeout(Duration::from_secs(2));
    let response = client.sync_once(settings.clone()).await.unwrap();
    settings = settings.token(response.next_batch);
    // Bob's client shares keys with every device and never cross-signs his own.
    let bob = unique("bob");
    register(&url, &bob, "password").await;
    let bob_dir = tempfile::tempdir().unwrap();
    let bob_client = Client::builder()
        .homeserver_url(&url)
        .sqlite_store(bob_dir.path(), None)
        .build()
        .await
        .unwrap();
    bob_client
        .matrix_auth()
        .login_username(&bob, "password")
        .send()
        .await
        .unwrap();
    let alias = format!("#{alias_name}:localhost");
    bob_client
        .join_room_by_id_or_alias(
            &matrix_sdk::ruma::OwnedRoomOrAliasId::try_from(alias.as_str()).unwrap(),
            &[],
        )
        .await
        .unwrap();
    let mut bob_settings = SyncSettings::default().timeout(Duration::from_secs(2));
    let response = bob_client.sync_once(bob_settings.clone()).await.unwrap();
    bob_settings = bob_settings.token(response.next_batch);
    let bob_room = bob_client.get_room(room.room_id()).unwrap();

    let channel = unique("#secret");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let bridge = Bridge::start(
        dir.path(),
        &bridge_config(
            irc_port,
            &nick,
            &channel,
            &url,
            &bot,
            &alias_name,
            Some(("\n\n", "\ntrust = \"cross-signed\"\n\n")),
            Some(metrics_port),
        ),
    );
    irc.wait_join(&nick, &channel).await;
    wait_joined(&client, &mut settings, &room, &bot_id).await;
    wait_joined(&bob_client, &mut bob_settings, &bob_room, &bot_id).await;

    bob_room
        .send(RoomMessageEventContent::text_plain(
            "from an unsigned device",
        ))
        .await
        .unwrap();
    bridge
        .wait_for_log_line(&["could not be decrypted", "SenderIdentityNotTrusted"])
        .await;
    wait_metric(
        metrics_port,
        "tribridge_matrix_undecryptable_events_total{network=\"mx\"}",
        1,
    )
    .await;
    // Alice's line after it arrives alone: Bob's never reached IRC.
    room.send(RoomMessageEventContent::text_plain(
        "from a cross-signed device",
    ))
    .await
    .unwrap();
    assert_eq!(
        texts(
            &irc.texts_until(&channel, "from a cross-signed device")
                .await
        ),
        vec![format!("<{alice}> from a cross-signed device")]
    );

    irc.say(&channel, "for signed devices");
    let body = wait_message(
        &client,
        &mut settings,
        &room,
        "for signed devices",
        Duration::from_mins(1),
    )
    .await
    .unwrap();
    assert_eq!(body, format!("<{}> for signed devices", irc.nick));
    // Bob's device got no key for it (nor for Alice's line): they arrive, undecryptable.
    let for_bob = wait_message(
        &bob_client,
        &mut bob_settings,
        &bob_room,
        "for signed devices",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        for_bob
            .as_ref()
            .is_err_and(|why| !why.contains("; 0 undecryptable")),
        "{for_bob:?}"
    );
}

/// The identity stays the same over a restart; a lost state is told loudly and not replaced
/// by a new identity; `tribridge matrix-recover` with the recovery key gives the new device
/// the same identity, signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_survives_a_restart_and_a_lost_state_restored_with_the_recovery_key() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    let bot_id = format!("@{bot}:localhost");
    register(&url, &bot, "password").await;
    let mut person = MatrixUser::new(&url, &unique("alice")).await;
    let alias_name = unique("room");
    let room = person.create_room(&alias_name).await;
    let channel = unique("#cs");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let mut bridge = Bridge::start(
        dir.path(),
        &bridge_config(
            irc_port,
            &nick,
            &channel,
            &url,
            &bot,
            &alias_name,
            None,
            Some(metrics_port),
        ),
    );
    irc.wait_join(&nick, &channel).await;
    let state = dir.path().join("state");
    bridge
        .wait_for_log("cross-signed by its account's identity")
        .await;
    let first_device = bridge_device(&state, "mx");
    let token = &person_token(&url, &person).await;
    let master = wait_cross_signed(&url, token, &bot_id, &first_device).await;

    // A restart: the same device, the same identity, no new recovery key.
    assert_eq!(bridge.terminate(), Some(0));
    bridge.restart();
    bridge
        .wait_for_log_count("cross-signed by its account's identity", 2)
        .await;
    assert_eq!(bridge_device(&state, "mx"), first_device);
    assert_eq!(
        wait_cross_signed(&url, token, &bot_id, &first_device).await,
        master
    );
    assert_eq!(
        bridge.logs().matches("It is shown only this once").count(),
        1
    );

    // The SDK's state lost: the new device is not signed, and the bridge says so instead of
    // making a new identity over the old one.
    assert_eq!(bridge.terminate(), Some(0));
    let key_file = state.join("matrix-mx.recovery-key");
    assert!(key_file.exists());
    std::fs::remove_dir_all(state.join("matrix-mx")).unwrap();
    bridge.restart();
    bridge
        .wait_for_log("whose keys this device does not hold")
        .await;
    wait_metric(
        metrics_port,
        "tribridge_matrix_cross_signed{network=\"mx\"}",
        0,
    )
    .await;
    let keys = keys_query(&url, token, &bot_id).await;
    let lost_device = bridge_device(&state, "mx");
    assert_ne!(lost_device, first_device);
    assert_eq!(
        signing_key(&keys["master_keys"][&bot_id]).to_base64(),
        master
    );
    assert!(cross_signed_master(&keys, &bot_id, &lost_device).is_err());

    // A wrong key is refused with a clear error.
    assert_eq!(bridge.terminate(), Some(0));
    std::fs::remove_dir_all(state.join("matrix-mx")).unwrap();
    let wrong = dir.path().join("wrong.key");
    std::fs::write(
        &wrong,
        "EsTc 5QGU 7Rnf XdWS PmGm S9BE dsnc sk6D 2wn9 aBJi 1qJP aJFt",
    )
    .unwrap();
    let config_file = dir.path().join("bridges.toml");
    let (code, _, stderr) = recover_cli(&config_file, "mx", &wrong);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("mx: the recovery key did not open the account's secret storage"),
        "{stderr}"
    );

    // Restored with the recovery key: a new device again, signed by the same identity.
    std::fs::remove_dir_all(state.join("matrix-mx")).unwrap();
    let (code, stdout, stderr) = recover_cli(&config_file, "mx", &key_file);
    let output_ok = code == 0;
    assert!(output_ok, "{stdout}\n{stderr}");
    assert!(stdout.contains(&master), "{stdout}");
    let recovered_device = bridge_device(&state, "mx");
    assert_ne!(recovered_device, lost_device);
    assert_eq!(
        wait_cross_signed(&url, token, &bot_id, &recovered_device).await,
        master
    );
    bridge.restart();
    bridge
        .wait_for_log_count("cross-signed by its account's identity", 3)
        .await;
    wait_metric(
        metrics_port,
        "tribridge_matrix_cross_signed{network=\"mx\"}",
        1,
    )
    .await;
    assert_eq!(bridge_device(&state, "mx"), recovered_device);
    assert_eq!(
        bridge.logs().matches("It is shown only this once").count(),
        1
    );
    // And it still bridges.
    person.mark().await;
    person.say(&room, "after recovery").await;
    assert_eq!(
        texts(&irc.texts_until(&channel, "after recovery").await),
        vec![format!(
            "<{}> after recovery",
            crate::support::matrix_client::local_part(&person.user_id)
        )]
    );
}

/// The account's identity reset from another device while the bridge runs: the bridge says
/// so in its log and in `/metrics`, and does not make a new identity over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_reset_elsewhere_is_told_loudly_and_not_overwritten() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    let bot_id = format!("@{bot}:localhost");
    register(&url, &bot, "password").await;
    let person = MatrixUser::new(&url, &unique("alice")).await;
    let alias_name = unique("room");
    person.create_room(&alias_name).await;
    let channel = unique("#cs");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let bridge = Bridge::start(
        dir.path(),
        &bridge_config(
            irc_port,
            &nick,
            &channel,
            &url,
            &bot,
            &alias_name,
            None,
            Some(metrics_port),
        ),
    );
    irc.wait_join(&nick, &channel).await;
    bridge
        .wait_for_log("cross-signed by its account's identity")
        .await;
    wait_metric(
        metrics_port,
        "tribridge_matrix_cross_signed{network=\"mx\"}",
        1,
    )
    .await;
    let token = &person_token(&url, &person).await;
    let old = wait_cross_signed(
        &url,
        token,
        &bot_id,
        &bridge_device(&dir.path().join("state"), "mx"),
    )
    .await;

    // Someone logs in as the bot elsewhere and makes a new identity.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Client::builder()
        .homeserver_url(&url)
        .sqlite_store(other_dir.path(), None)
        .build()
        .await
        .unwrap();
    other
        .matrix_auth()
        .login_username(&bot, "password")
        .send()
        .await
        .unwrap();
    let reset = other.encryption().reset_cross_signing().await.unwrap();
    if let Some(handle) = reset {
        let matrix_sdk::encryption::CrossSigningResetAuthType::Uiaa(info) = handle.auth_type()
        else {
            panic!("Synapse asks for a password");
        };
        let mut password = matrix_sdk::ruma::api::client::uiaa::Password::new(
            matrix_sdk::ruma::api::client::uiaa::UserIdentifier::Matrix(
                matrix_sdk::ruma::api::client::uiaa::MatrixUserIdentifier::new(bot.clone()),
            ),
            "password".to_owned(),
        );
        password.session = info.session.clone();
        handle
            .auth(Some(
                matrix_sdk::ruma::api::client::uiaa::AuthData::Password(password),
            ))
            .await
            .unwrap();
    }
    let new =
        signing_key(&keys_query(&url, token, &bot_id).await["master_keys"][&bot_id]).to_base64();
    assert_ne!(new, old);

    bridge
        .wait_for_log("identity changed under the bridge")
        .await;
    wait_metric(
        metrics_port,
        "tribridge_matrix_identity_changes_total{network=\"mx\"}",
        1,
    )
    .await;
    wait_metric(
        metrics_port,
        "tribridge_matrix_cross_signed{network=\"mx\"}",
        0,
    )
    .await;
    // Not overwritten: the account keeps the identity made elsewhere.
    let keys = keys_query(&url, token, &bot_id).await;
    assert_eq!(signing_key(&keys["master_keys"][&bot_id]).to_base64(), new);
    assert_eq!(
        bridge
            .logs()
            .matches("over the account's previous one")
            .count(),
        0
    );

    // Told to (`reset_cross_signing = true`), the bridge makes its own identity again, signs
    // its device with it and keeps a new recovery key, the old one set aside.
    let mut bridge = bridge;
    assert_eq!(bridge.terminate(), Some(0));
    let config_file = dir.path().join("bridges.toml");
    let text = std::fs::read_to_string(&config_file).unwrap().replacen(
        "password = \"password\"\n",
        "password = \"password\"\nreset_cross_signing = true\n",
        1,
    );
    std::fs::write(&config_file, text).unwrap();
    let state = dir.path().join("state");
    let old_key = std::fs::read_to_string(state.join("matrix-mx.recovery-key")).unwrap();
    bridge.restart();
    bridge.wait_for_log("over the account's previous one").await;
    bridge
        .wait_for_log_count("cross-signed by its account's identity", 2)
        .await;
    let taken_back = wait_cross_signed(&url, token, &bot_id, &bridge_device(&state, "mx")).await;
    assert_ne!(taken_back, new);
    assert_ne!(taken_back, old);
    wait_metric(
        metrics_port,
        "tribridge_matrix_cross_signed{network=\"mx\"}",
        1,
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(state.join("matrix-mx.recovery-key.old")).unwrap(),
        old_key
    );
    bridge
        .wait_for_log_count("It is shown only this once", 2)
        .await;
    let new_key = std::fs::read_to_string(state.join("matrix-mx.recovery-key")).unwrap();
    assert_ne!(new_key, old_key);
}

/// An account configured with an access token only: the homeserver (Synapse, MSC3967) lets its
/// first identity be published without the password, so the bridge's device is cross-signed
/// all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_only_account_gets_its_identity_without_a_password() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    let bot_id = format!("@{bot}:localhost");
    register(&url, &bot, "password").await;
    let bot_login = MatrixUser::login(&url, &bot, "password").await;
    let bot_token = person_token(&url, &bot_login).await;
    let person = MatrixUser::new(&url, &unique("alice")).await;
    let alias_name = unique("room");
    person.create_room(&alias_name).await;
    let channel = unique("#cs");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(
        dir.path(),
        &bridge_config(
            irc_port,
            &nick,
            &channel,
            &url,
            &bot,
            &alias_name,
            Some((
                "password = \"password\"\n",
                &format!("access_token = \"{bot_token}\"\n"),
            )),
            None,
        ),
    );
    irc.wait_join(&nick, &channel).await;
    bridge
        .wait_for_log("cross-signed by its account's identity")
        .await;
    let token = &person_token(&url, &person).await;
    wait_cross_signed(
        &url,
        token,
        &bot_id,
        &bridge_device(&dir.path().join("state"), "mx"),
    )
    .await;
    assert!(dir.path().join("state/matrix-mx.recovery-key").exists());
}

/// `tribridge matrix-recover`: exit code, stdout, stderr.
fn recover_cli(config: &Path, network: &str, key_file: &Path) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .arg("matrix-recover")
        .arg("--config")
        .arg(config)
        .arg("--network")
        .arg(network)
        .arg("--recovery-key-file")
        .arg(key_file)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `matrix-recover` names what is wrong before it connects anywhere: a network that is not
/// Matrix, an unknown one, a key file that cannot be read.
#[test]
fn matrix_recover_refuses_a_wrong_network_or_key_file_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("bridges.toml");
    std::fs::write(
        &config_file,
        config(
            &[
                irc_network("irc", 6667, "bridge"),
                matrix_network("mx", "http://127.0.0.1:9", "bot"),
            ],
            &[("irc", "#a"), ("mx", "#a:localhost")],
        ),
    )
    .unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "key").unwrap();
    let (code, _, stderr) = recover_cli(&config_file, "irc", &key);
    assert_eq!(
        (code, stderr.trim()),
        (1, "irc: network `irc` is not a Matrix network")
    );
    let (code, _, stderr) = recover_cli(&config_file, "nope", &key);
    assert_eq!(
        (code, stderr.trim()),
        (1, "nope: no network `nope` in the configuration")
    );
    let missing = dir.path().join("missing");
    let (code, _, stderr) = recover_cli(&config_file, "mx", &missing);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!(
            "mx: cannot read the recovery key file {}: ",
            missing.display()
        )),
        "{stderr}"
    );
}

/// The person's access token (the plain-HTTP test user logs in on its own).
async fn person_token(url: &str, person: &MatrixUser) -> String {
    let reply: Value = reqwest::Client::new()
        .post(format!("{url}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password",
                      "identifier": {"type": "m.id.user", "user": person.user_id},
                      "password": "password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["access_token"].as_str().unwrap().to_owned()
}
