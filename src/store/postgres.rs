//! The PostgreSQL backend of the store: the same tables, operations and invariants as the
//! `SQLite` one, in a database several hosts can reach (`[general] store = "postgres://…"`).
//!
//! Two sessions: the writer (the group commit's thread and every other write) and a reader (the
//! outbox's queue reads and the connectors' lookups), each behind a lock. The client is the
//! synchronous `postgres` crate (it drives `tokio-postgres` on a runtime of its own), which fits
//! the store's synchronous methods; a call made on a thread of the daemon's runtime is run on a
//! scoped thread of its own, since the client may not block a runtime's thread. A session whose
//! connection broke (the database restarted) is connected again on its next use; the operation
//! that found it broken fails with the error, and its caller retries as it does for `SQLite`'s.
//!
//! PostgreSQL refuses U+0000 (NUL) in text, and the `\u0000` escape in `jsonb` (which the
//! `message_files` trigger reads a body as), where `SQLite` stores both: an event that holds one
//! is written with each NUL replaced by U+FFFD (REPLACEMENT CHARACTER), in its names, ids and
//! body alike, and the deliveries announced from it carry the same text, so that what the other
//! sides see does not depend on whether a delivery was read back from the store
//! ([`without_nul`]). The same holds for a destination's error text.
//!
//! Migrations are `migrations/postgres/NNNN_*.sql`, numbered as the `SQLite` ones and meaning
//! the same; the last one applied is recorded in `tribridge_schema`. Instances starting together
//! take an advisory lock so that only one migrates.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

mod history;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Statement};

use super::{
    CommitOutcome, Completion, DeliveryReads, FAILED_DELIVERIES, FailedRow, GroupOutcome,
    LeaseTick, MappingRole, OUTBOX_BY_DESTINATION, OutboxCount, PendingRow, Recorded, Route,
    StagedInbound, StoreError, complete_row, replied_of, role_from_sql, settle, text_of,
};
use crate::model::{ChannelRef, EventBody, Inbound, Membership, Replied, TargetRef, now_ms};
use crate::richtext::FormattedText;
use crate::vocab::PendingDelivery;
use crate::vocab::lease::{Lease, WHOLE_INSTANCE};

/// Numbered migrations, applied in order, the same numbers as the `SQLite` ones.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_targets.sql"),
    include_str!("../../migrations/postgres/0003_permalink.sql"),
    include_str!("../../migrations/postgres/0004_parallel_routes.sql"),
    include_str!("../../migrations/postgres/0005_unused_index.sql"),
    include_str!("../../migrations/postgres/0006_integer_keys.sql"),
    include_str!("../../migrations/postgres/0007_people.sql"),
    include_str!("../../migrations/postgres/0008_history.sql"),
    include_str!("../../migrations/postgres/0009_history_indexes.sql"),
    include_str!("../../migrations/postgres/0010_leases.sql"),
    include_str!("../../migrations/postgres/0011_instances.sql"),
];

/// How long an operation waits for a lost database to come back before it fails.
const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// The advisory lock key of the migrations ("tribridg" in ASCII): instances that start
/// together migrate one after the other.
const MIGRATION_LOCK: i64 = 0x7472_6962_7269_6467;

// Each operation's query text, once.
const LOOKUP: &str = "SELECT message_id, role FROM mappings
     WHERE network = $1 AND channel = $2 AND remote_id = $3";
const INSERT_MESSAGE: &str = "INSERT INTO messages (origin_network, origin_channel,
     origin_protocol, origin_remote_id, author_id, author_name, kind, body, created_ms,
     received_ms, target_message_id, reply_to_message_id, permalink)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id";
const INSERT_ORIGIN: &str = "INSERT INTO mappings (network, channel, remote_id, message_id, role)
     VALUES ($1, $2, $3, $4, 'origin')";
const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (delivery_id, message_id, network, channel, gateway)
     VALUES ($1, $2, $3, $4, $5) RETURNING seq";
const DELETE_OUTBOX: &str = "DELETE FROM outbox WHERE seq = $1";
const INSERT_DELIVERED: &str = "INSERT INTO deliveries
     (delivery_id, message_id, network, channel, remote_id, attempts, done_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const INSERT_DELIVERY_MAPPING: &str = "INSERT INTO mappings (network, channel, remote_id,
     message_id, role, delivery_id) VALUES ($1, $2, $3, $4, 'delivery', $5)
     ON CONFLICT DO NOTHING";
// A lookup only, no write, while the name stays the same (nearly every message).
const UPSERT_PERSON: &str =
    "INSERT INTO people (network, user_id, display_name) VALUES ($1, $2, $3)
     ON CONFLICT (network, user_id) DO UPDATE
     SET display_name = excluded.display_name, renamed_to = NULL
     WHERE people.display_name IS DISTINCT FROM excluded.display_name
        OR people.renamed_to IS NOT NULL";
const RENAME_PERSON: &str = "INSERT INTO people (network, user_id, display_name, renamed_to)
     VALUES ($1, $2, $2, $3)
     ON CONFLICT (network, user_id) DO UPDATE SET renamed_to = excluded.renamed_to";
const OUTBOX_ROW: &str = "SELECT delivery_id, message_id, network, channel, attempts FROM outbox
     WHERE seq = $1";
const PENDING_BATCH: &str = "SELECT o.delivery_id, o.message_id, o.gateway, o.attempts,
        o.next_try_ms, m.origin_network, m.origin_channel, m.origin_protocol, m.author_id,
        m.author_name, m.body, m.created_ms, m.target_message_id, m.reply_to_message_id,
        m.permalink, o.seq
     FROM outbox o JOIN messages m ON m.id = o.message_id
     WHERE o.network = $1 AND o.channel = $2 AND o.state = 'pending' AND o.seq > $3
     ORDER BY o.seq LIMIT $4";
const SET_FAILED_CORRUPT: &str =
    "UPDATE outbox SET state = 'failed', last_error = $2 WHERE seq = $1";
const RESOLVE_TARGET: &str = "SELECT remote_id FROM mappings
     WHERE message_id = $1 AND network = $2 AND channel = $3
     ORDER BY role = 'delivery' DESC LIMIT 1";
const REPLIED: &str = "SELECT origin_network, author_id, author_name, body, origin_remote_id
     FROM messages WHERE id = $1";
const PREVIOUS_EDIT: &str = "SELECT body FROM messages
     WHERE target_message_id = $1 AND kind = 'edit' AND id < $2
     ORDER BY id DESC LIMIT 1";
const MESSAGE_BODY: &str = "SELECT body FROM messages WHERE id = $1";
const DEFER: &str = "UPDATE outbox SET attempts = attempts + 1, next_try_ms = $2, last_error = $3
     WHERE seq = $1";
const FAIL: &str = "UPDATE outbox SET attempts = attempts + 1, state = 'failed', last_error = $2
     WHERE seq = $1";
const DANGLING: &str = "SELECT 'outbox row ' || seq || ' points at a missing messages row'
       FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = o.message_id)
     UNION ALL
     SELECT 'deliveries row ' || id || ' points at a missing messages row'
       FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = d.message_id)
     UNION ALL
     SELECT 'mappings row ' || network || '/' || channel || '/' || remote_id
            || ' points at a missing messages row'
       FROM mappings p WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = p.message_id)";
const PENDING_DESTINATIONS: &str =
    "SELECT DISTINCT network, channel FROM outbox WHERE state = 'pending' ORDER BY 1, 2";
const OUTBOX_DEPTH: &str = "SELECT network, state, COUNT(*) FROM outbox GROUP BY network, state";
const PENDING_COUNT: &str = "SELECT COUNT(*) FROM outbox
     WHERE network = $1 AND channel = $2 AND state = 'pending'";
const DELIVERED_COUNT: &str = "SELECT COUNT(*) FROM deliveries WHERE network = $1 AND channel = $2";
const MAPPINGS_OF: &str = "SELECT network, channel, remote_id, role FROM mappings
     WHERE message_id = $1 ORDER BY role DESC, network, channel";
const CURSOR: &str = "SELECT value FROM cursors WHERE network = $1 AND channel = $2";
const CURSORS_WITH_PREFIX: &str = "SELECT channel, value FROM cursors
     WHERE network = $1 AND starts_with(channel, $2) ORDER BY channel";
const SET_CURSOR: &str = "INSERT INTO cursors (network, channel, value) VALUES ($1, $2, $3)
     ON CONFLICT (network, channel) DO UPDATE SET value = excluded.value";
const PARALLEL_ROUTES: &str = "SELECT origin_network, origin_channel, destination_network,
        destination_channel, account FROM parallel_routes";
const SET_PARALLEL_ROUTE: &str = "INSERT INTO parallel_routes (origin_network, origin_channel,
        destination_network, destination_channel, account, since_ms)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (origin_network, origin_channel, destination_network, destination_channel)
     DO UPDATE SET account = excluded.account, since_ms = excluded.since_ms";
const UNSET_PARALLEL_ROUTE: &str = "DELETE FROM parallel_routes
     WHERE origin_network = $1 AND origin_channel = $2
       AND destination_network = $3 AND destination_channel = $4";
const PEOPLE: &str = "SELECT network, user_id, display_name, renamed_to FROM people";
const IDLE_IN_TRANSACTION: &str = "SET idle_in_transaction_session_timeout = '2s'";
// A standby waits at most this long behind a lock on the lease row, then tries again later.
const LEASE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '1s'";
// The lease (src/vocab/lease.rs): the one fence statement of a write transaction, which also
// holds the lease row against a take-over until the transaction ends.
const FENCE: &str = "SELECT 1 FROM leases WHERE scope = $1 AND holder = $2 AND token = $3
     FOR SHARE";
// The per-network fence: which of the networks of a write transaction this instance still
// holds (and with which token), their rows held against a take-over until the transaction ends.
const FENCE_NETWORKS: &str = "SELECT scope, token FROM leases
     WHERE scope = ANY($1) AND holder = $2 FOR SHARE";
// Every held network's lease extended in one statement; the renewed ones are returned.
const RENEW_NETWORKS: &str = "UPDATE leases AS l
     SET expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond'
     FROM unnest($2::text[], $3::int8[]) AS h(scope, token)
     WHERE l.scope = h.scope AND l.token = h.token AND l.holder = $1
     RETURNING l.scope";
const HEARTBEAT: &str = "INSERT INTO instances (name, heartbeat_at) VALUES ($1, clock_timestamp())
     ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at";
const LIVE_INSTANCES: &str = "SELECT count(*) FROM instances
     WHERE heartbeat_at > clock_timestamp() - $1::float8 * interval '1 millisecond'";
const FORGET_INSTANCE: &str = "DELETE FROM instances WHERE name = $1";
const ALL_LEASES: &str = "SELECT scope, holder, expires_at > clock_timestamp() FROM leases";
// Tells the other instances that deliveries to a network were queued (their LISTEN wakes the
// workers of its destinations); sent at commit, dropped on rollback.
const NOTIFY_OUTBOX: &str = "SELECT pg_notify('tribridge_outbox', $1)";
const LISTEN_OUTBOX: &str = "LISTEN tribridge_outbox";
const LEASE_ROW: &str = "INSERT INTO leases (scope, holder, token, expires_at)
     VALUES ($1, '', 0, '-infinity') ON CONFLICT (scope) DO NOTHING";
// Taken when expired, or held under this instance's name by a run of it that ended; the token
// grows on every take and is never reused.
const TAKE_LEASE: &str = "UPDATE leases SET holder = $2, token = token + 1,
     expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond'
     WHERE scope = $1 AND (expires_at < clock_timestamp() OR holder = $2) RETURNING token";
const RENEW_LEASE: &str = "UPDATE leases
     SET expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond'
     WHERE scope = $1 AND holder = $2 AND token = $3";
// The holder goes too, so that a renewal sent before the release cannot extend it again.
const RELEASE_LEASE: &str = "UPDATE leases SET expires_at = '-infinity', holder = ''
     WHERE scope = $1 AND holder = $2 AND token = $3";
const LEASE_HOLDER: &str = "SELECT holder, token, expires_at > clock_timestamp() FROM leases
     WHERE scope = $1";

// The admin socket's writes (`tribridge failed retry|drop`); its reads are shared with
// `SQLite` (`OUTBOX_BY_DESTINATION`, `FAILED_DELIVERIES`).
/// The outbox's writers in line, across instances (the per-network mode): a worker reads its
/// queue past the last `seq` it read, so a row must never become visible after a row with a
/// higher `seq`. With one writer session (one instance) commit order is `seq` order; with
/// several instances writing at once it is not, and a row committed late under a lower `seq`
/// was passed over for good (a message lost or sent out of order). Every write transaction of
/// that mode takes this lock first, before the sequence gives any `seq`, and holds it until it
/// commits. The key is this store's own, fixed.
const QUEUE_WRITERS_IN_LINE: &str = "SELECT pg_advisory_xact_lock(7238561004)";
/// A failed delivery queued again at the end of its destination's queue, in one statement.
const REQUEUE_FAILED: &str = "WITH old AS (
        DELETE FROM outbox WHERE seq = $1 AND state = 'failed'
        RETURNING delivery_id, message_id, network, channel, gateway, last_error
     )
     INSERT INTO outbox (delivery_id, message_id, network, channel, gateway, attempts,
                         next_try_ms, state, last_error)
     SELECT delivery_id, message_id, network, channel, gateway, 0, 0, 'pending', last_error
     FROM old
     RETURNING seq, network, channel";
const DROP_FAILED: &str = "DELETE FROM outbox WHERE seq = $1 AND state = 'failed'";

// The group commit's statements: a few per group, whatever its size, each taking one array
// per column (see `record_group`).
/// A group's acknowledgements: outbox rows gone, `deliveries` rows and delivery mappings for
/// those whose row was still there (as `record_known_completion`, row by row).
const COMPLETE_GROUP: &str = "WITH done AS (
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                             $6::text[], $7::bigint[]) WITH ORDINALITY
            AS d(seq, delivery_id, message_id, network, channel, remote_id, attempts, n)
     ), gone AS (
        DELETE FROM outbox o USING done d WHERE o.seq = d.seq RETURNING o.seq
     ), delivered AS (
        INSERT INTO deliveries
            (delivery_id, message_id, network, channel, remote_id, attempts, done_ms)
        SELECT d.delivery_id, d.message_id, d.network, d.channel, d.remote_id, d.attempts, $8
        FROM done d JOIN gone g ON g.seq = d.seq ORDER BY d.n
     )
     INSERT INTO mappings (network, channel, remote_id, message_id, role, delivery_id)
     SELECT d.network, d.channel, d.remote_id, d.message_id, 'delivery', d.delivery_id
     FROM done d JOIN gone g ON g.seq = d.seq WHERE d.remote_id IS NOT NULL ORDER BY d.n
     ON CONFLICT DO NOTHING";
/// A group's reads, in one round trip: the mappings of every id its events name (their own,
/// their targets', their replies'), and ids for its messages ($4) and outbox rows ($5) taken
/// from the tables' own sequences (the ones an event not needing them leaves unused).
const PREPARE_GROUP: &str = "SELECT ids.a, seqs.a, f.networks, f.channels, f.remote_ids,
        f.message_ids, f.roles
     FROM (SELECT ARRAY(SELECT nextval(pg_get_serial_sequence('messages', 'id')::regclass)
                        FROM generate_series(1, $4::bigint))) ids(a),
          (SELECT ARRAY(SELECT nextval(pg_get_serial_sequence('outbox', 'seq')::regclass)
                        FROM generate_series(1, $5::bigint))) seqs(a),
          (SELECT array_agg(m.network), array_agg(m.channel), array_agg(m.remote_id),
                  array_agg(m.message_id), array_agg(m.role)
           FROM mappings m
           JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(network, channel, remote_id)
             ON m.network = k.network AND m.channel = k.channel AND m.remote_id = k.remote_id)
          f(networks, channels, remote_ids, message_ids, roles)";
/// A group's new messages, their origin mappings, their outbox rows and their authors in the
/// people directory (as `record_inbound` and `UPSERT_PERSON`, row by row). The foreign keys are
/// checked at the end of the statement, when every row is in.
const RECORD_GROUP: &str = "WITH message AS (
        INSERT INTO messages (id, origin_network, origin_channel, origin_protocol,
            origin_remote_id, author_id, author_name, kind, body, created_ms, received_ms,
            target_message_id, reply_to_message_id, permalink)
        SELECT m.id, m.network, m.channel, m.protocol, m.remote_id, m.author_id, m.author_name,
            m.kind, m.body, m.created_ms, $14, m.target, m.reply_to, m.permalink
        FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[],
                    $12::bigint[], $13::text[])
            AS m(id, network, channel, protocol, remote_id, author_id, author_name, kind, body,
                 created_ms, target, reply_to, permalink)
     ), origin AS (
        INSERT INTO mappings (network, channel, remote_id, message_id, role)
        SELECT o.network, o.channel, o.remote_id, o.message_id, 'origin'
        FROM unnest($15::text[], $16::text[], $17::text[], $18::bigint[])
            AS o(network, channel, remote_id, message_id)
     ), queued AS (
        INSERT INTO outbox (seq, delivery_id, message_id, network, channel, gateway)
        SELECT * FROM unnest($19::bigint[], $20::text[], $21::bigint[], $22::text[],
                             $23::text[], $24::text[])
     )
     INSERT INTO people (network, user_id, display_name)
     SELECT * FROM unnest($25::text[], $26::text[], $27::text[])
     ON CONFLICT (network, user_id) DO UPDATE
     SET display_name = excluded.display_name, renamed_to = NULL
     WHERE people.display_name IS DISTINCT FROM excluded.display_name
        OR people.renamed_to IS NOT NULL";

/// How to reach the database: the client's settings and the TLS the URL asks for.
pub(super) struct Target {
    config: postgres::Config,
    /// `None`: no TLS (`sslmode=disable`). Otherwise TLS is used when the server offers it
    /// (`prefer`, the default) or required (`require`, `verify-ca`, `verify-full`), and the
    /// server's certificate is always verified, against `sslrootcert` when given.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Parse a `postgres://` (or `postgresql://`) URL. The libpq TLS options the client crate
/// does not read (`sslmode=verify-ca|verify-full`, `sslrootcert`) are taken out and applied
/// here. Errors never repeat the URL (it may hold the password).
pub(super) fn parse_url(url: &str) -> Result<Target, StoreError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::Url(
            "must start with `postgres://` (e.g. postgres://tribridge:PASSWORD@db.example/tribridge)"
                .into(),
        ));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = "prefer".to_owned();
    let mut root_cert = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => value.clone_into(&mut mode),
            "sslrootcert" => root_cert = Some(percent_decode(value)),
            _ => kept.push(pair),
        }
    }
    let client_mode = match mode.as_str() {
        "disable" => "disable",
        "prefer" => "prefer",
        "require" | "verify-ca" | "verify-full" => "require",
        other => {
            return Err(StoreError::Url(format!(
                "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    kept.push(match client_mode {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let rebuilt = format!("{base}?{}", kept.join("&"));
    let mut config = postgres::Config::from_str(&rebuilt)
        .map_err(|error| StoreError::Url(format!("cannot be read: {error}")))?;
    if config.get_dbname().is_none() {
        return Err(StoreError::Url(
            "names no database (…/DATABASE after the host)".into(),
        ));
    }
    config.application_name("tribridge");
    let tls = if client_mode == "disable" {
        None
    } else {
        Some(Arc::new(tls_config(root_cert.as_deref())?))
    };
    Ok(Target { config, tls })
}

/// `%XX` escapes of a URL's query value decoded (a path with spaces, say).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(hex) = value.get(index + 1..index + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The TLS settings: the CA certificates in `root_cert` (a PEM file), else the system's and
/// the web's roots; the server's name is always checked.
fn tls_config(root_cert: Option<&str>) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = root_cert {
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|error| StoreError::Url(format!("sslrootcert `{path}`: {error}")))?;
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|error| StoreError::Url(format!("sslrootcert `{path}`: {error}")))?;
        }
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for certificate in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(certificate);
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
    .map_err(|error| StoreError::Url(format!("TLS settings: {error}")))
}

/// Run `work` where the client may block: here, unless this thread runs the daemon's tokio
/// runtime (or was lent by it), in which case on a scoped thread of its own.
fn off_runtime<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return work();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(work)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One connection and its prepared statements.
struct Session {
    client: Option<Client>,
    statements: HashMap<&'static str, Statement>,
}

impl Session {
    fn connect(target: &Target) -> Result<Client, StoreError> {
        let mut client = Self::open(target)?;
        // A process stopped inside a transaction (SIGSTOP, a partition) must not hold its
        // locks (the lease row's among them) until it comes back: the server ends its session.
        client.batch_execute(IDLE_IN_TRANSACTION)?;
        Ok(client)
    }

    fn open(target: &Target) -> Result<Client, StoreError> {
        Ok(match &target.tls {
            Some(tls) => target
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (**tls).clone(),
                ))?,
            None => target.config.connect(NoTls)?,
        })
    }
}

/// Prepare `sql` once per connection.
fn statement(
    cache: &mut HashMap<&'static str, Statement>,
    client: &mut impl GenericClient,
    sql: &'static str,
) -> Result<Statement, postgres::Error> {
    if let Some(statement) = cache.get(sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(sql)?;
    cache.insert(sql, statement.clone());
    Ok(statement)
}

/// A session's connection with its statement cache, in or out of a transaction.
struct On<'s, C: GenericClient> {
    client: &'s mut C,
    cache: &'s mut HashMap<&'static str, Statement>,
}

impl<C: GenericClient> On<'_, C> {
    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let statement = statement(self.cache, self.client, sql)?;
        Ok(self.client.execute(&statement, params)?)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let statement = statement(self.cache, self.client, sql)?;
        Ok(self.client.query(&statement, params)?)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<postgres::Row>, StoreError> {
        let statement = statement(self.cache, self.client, sql)?;
        Ok(self.client.query_opt(&statement, params)?)
    }

    fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<postgres::Row, StoreError> {
        let statement = statement(self.cache, self.client, sql)?;
        Ok(self.client.query_one(&statement, params)?)
    }
}

/// What a fenced single write belongs to.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// A network's own row (a cursor).
    Network(&'a str),
    /// An outbox row, by its queue position: the network it delivers to.
    Row(i64),
}

/// The networks a group commit writes for: its acknowledgements' destinations and its events'
/// origins.
fn group_networks(acknowledged: &[Completion], events: &[StagedInbound]) -> Vec<String> {
    let networks: BTreeSet<&str> = acknowledged
        .iter()
        .map(|completion| completion.destination.network.as_str())
        .chain(
            events
                .iter()
                .map(|event| event.inbound.origin.network.as_str()),
        )
        .collect();
    networks.into_iter().map(str::to_owned).collect()
}

/// The PostgreSQL store.
pub(super) struct PostgresStore {
    target: Target,
    writer: Mutex<Session>,
    reader: Mutex<Session>,
    /// The lease's own session, so that a renewal never waits behind a group commit.
    leases: Mutex<Session>,
    /// This instance's lease, once the daemon runs for failover: every write transaction that
    /// completes a delivery or commits an event checks its fencing token.
    lease: OnceLock<Arc<Lease>>,
    clock_skew_ms: AtomicI64,
}

impl PostgresStore {
    /// Connect to the database at `url` and apply pending migrations.
    pub(super) fn open(url: &str) -> Result<Self, StoreError> {
        let target = parse_url(url)?;
        off_runtime(|| {
            let mut writer = Session::connect(&target)?;
            migrate(&mut writer)?;
            let reader = Session::connect(&target)?;
            Ok(Self {
                leases: Mutex::new(Session {
                    client: None,
                    statements: HashMap::new(),
                }),
                lease: OnceLock::new(),
                writer: Mutex::new(Session {
                    client: Some(writer),
                    statements: HashMap::new(),
                }),
                reader: Mutex::new(Session {
                    client: Some(reader),
                    statements: HashMap::new(),
                }),
                target,
                clock_skew_ms: AtomicI64::new(0),
            })
        })
    }

    pub(super) fn set_clock_skew_ms(&self, skew_ms: i64) {
        self.clock_skew_ms.store(skew_ms, Ordering::Relaxed);
    }

    fn received_now(&self) -> i64 {
        now_ms() + self.clock_skew_ms.load(Ordering::Relaxed)
    }

    /// Run `work` on the writer's session (`write`) or the reader's, connected.
    ///
    /// When the connection is lost under it (the database restarted, the network dropped),
    /// `work` runs again on a new connection, waiting up to [`RECONNECT_FOR`] for the database
    /// to come back: what was in flight is not lost. Its transaction either committed or not; if
    /// the commit's answer was lost after it committed, running it again changes nothing (an
    /// event is recognised by its origin mapping, an acknowledgement finds no outbox row). An
    /// error of the statement itself is returned at once.
    fn with<R: Send>(
        &self,
        write: bool,
        work: impl FnMut(&mut Client, &mut HashMap<&'static str, Statement>) -> Result<R, StoreError>
        + Send,
    ) -> Result<R, StoreError> {
        self.on_session(if write { &self.writer } else { &self.reader }, work)
    }

    /// [`PostgresStore::with`] on `session`.
    fn on_session<R: Send>(
        &self,
        session: &Mutex<Session>,
        mut work: impl FnMut(
            &mut Client,
            &mut HashMap<&'static str, Statement>,
        ) -> Result<R, StoreError>
        + Send,
    ) -> Result<R, StoreError> {
        off_runtime(|| {
            // A panic while holding the lock leaves at worst an open transaction, which the
            // server rolls back: a poisoned lock is still safe to use.
            let mut session = session
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Session { client, statements } = &mut *session;
            let deadline = std::time::Instant::now() + RECONNECT_FOR;
            let mut pause = std::time::Duration::from_millis(50);
            loop {
                if client.as_ref().is_none_or(Client::is_closed) {
                    statements.clear();
                    *client = None;
                    match Session::connect(&self.target) {
                        Ok(connected) => *client = Some(connected),
                        Err(error) if std::time::Instant::now() < deadline => {
                            tracing::warn!(error = %error, "The PostgreSQL store is unreachable; trying again.");
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(std::time::Duration::from_secs(1));
                            continue;
                        }
                        Err(error) => return Err(error),
                    }
                }
                let connected = client.as_mut().expect("connected just above");
                let result = work(connected, statements);
                match &result {
                    Err(StoreError::Postgres(error))
                        if connection_lost(error, connected)
                            && std::time::Instant::now() < deadline =>
                    {
                        tracing::warn!(error = %error, "The connection to the PostgreSQL store was lost; writing again on a new one.");
                        *client = None;
                    }
                    _ => return result,
                }
            }
        })
    }

    /// One statement on a session, outside any explicit transaction.
    fn run<R: Send>(
        &self,
        write: bool,
        mut work: impl FnMut(&mut On<'_, Client>) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        self.with(write, |client, cache| work(&mut On { client, cache }))
    }

    pub(super) fn commit_inbound(
        &self,
        inbound: &Inbound,
        origin_protocol: &'static str,
        routes: &[Route],
    ) -> Result<CommitOutcome, StoreError> {
        let mut staged = StagedInbound::new(inbound.clone(), origin_protocol, routes.to_vec())?;
        without_nul(&mut staged);
        let received_ms = self.received_now();
        let recorded = self.with(true, |client, cache| {
            let mut transaction = client.transaction()?;
            let mut on = On {
                client: &mut transaction,
                cache,
            };
            self.fence_one(&mut on, &staged.inbound.origin.network)?;
            let recorded = record_inbound(&mut on, &staged, received_ms)?;
            self.notify_queued(&mut on, std::iter::once(&staged))?;
            transaction.commit()?;
            Ok(recorded)
        })?;
        Ok(settle(&mut staged, recorded, &mut Vec::new()))
    }

    /// Group commit, as the `SQLite` store's: one transaction, written with a few statements
    /// for the whole group ([`record_group`]); after a failure, again row by row with a
    /// savepoint for the acknowledgements and one per event, so that an event the database
    /// refuses fails alone.
    pub(super) fn commit_group(
        &self,
        acknowledged: &[Completion],
        events: &mut [StagedInbound],
    ) -> GroupOutcome {
        let received_ms = self.received_now();
        events.iter_mut().for_each(without_nul);
        let staged: &[StagedInbound] = events;
        let plain = self.with(true, |client, cache| {
            let mut transaction = client.transaction()?;
            let mut on = On {
                client: &mut transaction,
                cache,
            };
            let networks = group_networks(acknowledged, staged);
            if !self.fence(&mut on, &networks)?.is_empty() {
                // Some of it belongs to a network this instance lost: written item by item.
                return Err(StoreError::Fenced { token: 0 });
            }
            let recorded = record_group(&mut on, acknowledged, staged, received_ms)?;
            self.notify_queued(&mut on, staged.iter())?;
            transaction.commit()?;
            Ok(recorded)
        });
        let mut refused = Vec::new();
        let (acks, recorded) = match plain {
            Ok(recorded) => (Ok(()), recorded.into_iter().map(Ok).collect()),
            Err(error) => {
                tracing::debug!(error = %error, "A group commit failed; writing it again event by event.");
                match self.group_with_savepoints(acknowledged, staged, received_ms) {
                    Ok((acks, recorded, lost)) => {
                        refused = lost;
                        (acks, recorded)
                    }
                    Err(error) => return all_failed(&error, events.len()),
                }
            }
        };
        let mut queued = Vec::new();
        let outcomes = events
            .iter_mut()
            .zip(recorded)
            .map(|(event, recorded)| recorded.map(|recorded| settle(event, recorded, &mut queued)))
            .collect();
        GroupOutcome {
            acks,
            events: outcomes,
            queued,
            refused,
        }
    }

    /// What a group whose plain transaction failed records, each part in its own savepoint;
    /// the items of networks this instance no longer holds are refused (the networks are
    /// returned last).
    #[allow(clippy::type_complexity)]
    fn group_with_savepoints(
        &self,
        acknowledged: &[Completion],
        events: &[StagedInbound],
        received_ms: i64,
    ) -> Result<
        (
            Result<(), StoreError>,
            Vec<Result<Recorded, StoreError>>,
            Vec<String>,
        ),
        StoreError,
    > {
        self.with(true, |client, cache| {
            let mut transaction = client.transaction()?;
            let refused = self.fence(
                &mut On {
                    client: &mut transaction,
                    cache: &mut *cache,
                },
                &group_networks(acknowledged, events),
            )?;
            let acknowledged: Vec<&Completion> = acknowledged
                .iter()
                .filter(|completion| !refused.contains(&completion.destination.network))
                .collect();
            let acks = if acknowledged.is_empty() {
                Ok(())
            } else {
                transaction
                    .savepoint("acks")
                    .map_err(StoreError::from)
                    .and_then(|mut savepoint| {
                        let mut on = On {
                            client: &mut savepoint,
                            cache: &mut *cache,
                        };
                        for completion in &acknowledged {
                            record_known_completion(&mut on, completion)?;
                        }
                        savepoint.commit()?;
                        Ok(())
                    })
            };
            let recorded = events
                .iter()
                .map(|event| {
                    if refused.contains(&event.inbound.origin.network) {
                        return Err(StoreError::Fenced { token: 0 });
                    }
                    transaction
                        .savepoint("event")
                        .map_err(StoreError::from)
                        .and_then(|mut savepoint| {
                            let recorded = record_inbound(
                                &mut On {
                                    client: &mut savepoint,
                                    cache: &mut *cache,
                                },
                                event,
                                received_ms,
                            )?;
                            savepoint.commit()?;
                            Ok(recorded)
                        })
                })
                .collect::<Vec<_>>();
            self.notify_queued(
                &mut On {
                    client: &mut transaction,
                    cache: &mut *cache,
                },
                events
                    .iter()
                    .zip(&recorded)
                    .filter(|(_, recorded)| recorded.is_ok())
                    .map(|(event, _)| event),
            )?;
            transaction.commit()?;
            let refused = refused.into_iter().collect();
            Ok((acks, recorded, refused))
        })
    }

    pub(super) fn pending_batch(
        &self,
        destination: &ChannelRef,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let corrupt = self.run(false, |on| {
            let rows = on.query(
                PENDING_BATCH,
                &[
                    &destination.network,
                    &destination.channel,
                    &after_seq,
                    &(limit as i64),
                ],
            )?;
            let mut batch = Vec::with_capacity(rows.len());
            for row in rows {
                let row = PendingRow {
                    id: row.try_get(0)?,
                    message_id: row.try_get(1)?,
                    gateway: row.try_get(2)?,
                    attempts: row.try_get(3)?,
                    next_try_ms: row.try_get(4)?,
                    origin_network: row.try_get(5)?,
                    origin_channel: row.try_get(6)?,
                    origin_protocol: row.try_get(7)?,
                    author_id: row.try_get(8)?,
                    author_name: row.try_get(9)?,
                    body: row.try_get(10)?,
                    created_ms: row.try_get(11)?,
                    target_message_id: row.try_get(12)?,
                    reply_to_message_id: row.try_get(13)?,
                    permalink: row.try_get(14)?,
                    seq: row.try_get(15)?,
                };
                let body: EventBody = match serde_json::from_str(&row.body) {
                    Ok(body) => body,
                    // Reported when it reaches the head of the queue.
                    Err(_) if !batch.is_empty() => break,
                    Err(error) => return Ok(Err((row.seq, row.message_id, error.to_string()))),
                };
                batch.push(complete_row(
                    &mut PostgresReads(on),
                    row,
                    body,
                    destination,
                )?);
            }
            Ok(Ok(batch))
        })?;
        match corrupt {
            Ok(batch) => Ok(batch),
            // A row this build cannot read must not hold up the queue behind it forever: it
            // is kept as `failed` (for an operator) and reported once.
            Err((seq, message_id, reason)) => {
                let stored = format!("stored message cannot be decoded: {reason}");
                self.run(true, |on| on.execute(SET_FAILED_CORRUPT, &[&seq, &stored]))?;
                Err(StoreError::Corrupt { message_id, reason })
            }
        }
    }

    pub(super) fn complete_delivery(
        &self,
        seq: i64,
        remote_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(true, |client, cache| {
            let mut transaction = client.transaction()?;
            let mut on = On {
                client: &mut transaction,
                cache,
            };
            if let Some(row) = on.query_opt(OUTBOX_ROW, &[&seq])? {
                self.fence_one(&mut on, &row.try_get::<_, String>(2)?)?;
                let attempts: i64 = row.try_get(4)?;
                record_known_completion(
                    &mut on,
                    &Completion {
                        seq,
                        delivery_id: row.try_get(0)?,
                        message_id: row.try_get(1)?,
                        destination: ChannelRef::new(
                            row.try_get::<_, String>(2)?,
                            row.try_get::<_, String>(3)?,
                        ),
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        remote_id: remote_id.map(str::to_owned),
                    },
                )?;
            }
            transaction.commit()?;
            Ok(())
        })
    }

    pub(super) fn defer_delivery(
        &self,
        seq: i64,
        next_try_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let error = nul_replaced(error);
        self.fenced(DEFER, &[&seq, &next_try_ms, &error], Scope::Row(seq))
    }

    pub(super) fn fail_delivery(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        let error = nul_replaced(error);
        self.fenced(FAIL, &[&seq, &error], Scope::Row(seq))
    }

    /// Rows that point at a missing message (PostgreSQL enforces the foreign keys, so this
    /// finds none unless they were turned off; kept for the tests' and chaos harness' check).
    pub(super) fn integrity_problems(&self) -> Result<Vec<String>, StoreError> {
        self.run(false, |on| {
            on.query(DANGLING, &[])?
                .iter()
                .map(|row| Ok(row.try_get(0)?))
                .collect()
        })
    }

    pub(super) fn pending_destinations(&self) -> Result<Vec<ChannelRef>, StoreError> {
        self.run(false, |on| {
            on.query(PENDING_DESTINATIONS, &[])?
                .iter()
                .map(|row| {
                    Ok(ChannelRef::new(
                        row.try_get::<_, String>(0)?,
                        row.try_get::<_, String>(1)?,
                    ))
                })
                .collect()
        })
    }

    pub(super) fn outbox_depth(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.run(false, |on| {
            on.query(OUTBOX_DEPTH, &[])?
                .iter()
                .map(|row| {
                    Ok((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get::<_, i64>(2)?.unsigned_abs(),
                    ))
                })
                .collect()
        })
    }

    pub(super) fn pending_count(&self, destination: &ChannelRef) -> Result<u64, StoreError> {
        self.count(PENDING_COUNT, destination)
    }

    pub(super) fn delivered_count(&self, destination: &ChannelRef) -> Result<u64, StoreError> {
        self.count(DELIVERED_COUNT, destination)
    }

    fn count(&self, sql: &'static str, destination: &ChannelRef) -> Result<u64, StoreError> {
        self.run(false, |on| {
            let row = on.query_one(sql, &[&destination.network, &destination.channel])?;
            Ok(row.try_get::<_, i64>(0)?.unsigned_abs())
        })
    }

    pub(super) fn lookup(
        &self,
        channel: &ChannelRef,
        remote_id: &str,
    ) -> Result<Option<(i64, MappingRole)>, StoreError> {
        self.run(false, |on| lookup(on, channel, remote_id))
    }

    pub(super) fn mappings_of(
        &self,
        message_id: i64,
    ) -> Result<Vec<(ChannelRef, String, MappingRole)>, StoreError> {
        self.run(false, |on| {
            on.query(MAPPINGS_OF, &[&message_id])?
                .iter()
                .map(|row| {
                    Ok((
                        ChannelRef::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?),
                        row.try_get(2)?,
                        role_from_sql(row.try_get(3)?),
                    ))
                })
                .collect()
        })
    }

    pub(super) fn cursor(
        &self,
        network: &str,
        channel: &str,
    ) -> Result<Option<String>, StoreError> {
        self.run(false, |on| {
            Ok(match on.query_opt(CURSOR, &[&network, &channel])? {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            })
        })
    }

    pub(super) fn cursors_with_prefix(
        &self,
        network: &str,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.run(false, |on| {
            on.query(CURSORS_WITH_PREFIX, &[&network, &prefix])?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
        })
    }

    pub(super) fn parallel_routes(
        &self,
    ) -> Result<Vec<(ChannelRef, ChannelRef, String)>, StoreError> {
        self.run(false, |on| {
            on.query(PARALLEL_ROUTES, &[])?
                .iter()
                .map(|row| {
                    Ok((
                        ChannelRef::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?),
                        ChannelRef::new(row.try_get::<_, String>(2)?, row.try_get::<_, String>(3)?),
                        row.try_get(4)?,
                    ))
                })
                .collect()
        })
    }

    pub(super) fn set_parallel_route(
        &self,
        origin: &ChannelRef,
        destination: &ChannelRef,
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        // Decided by the destination's worker: fenced by the destination's network.
        self.fenced_with(Scope::Network(&destination.network), |on| match account {
            Some(account) => on
                .execute(
                    SET_PARALLEL_ROUTE,
                    &[
                        &origin.network,
                        &origin.channel,
                        &destination.network,
                        &destination.channel,
                        &account,
                        &now_ms(),
                    ],
                )
                .map(|_| ()),
            None => on
                .execute(
                    UNSET_PARALLEL_ROUTE,
                    &[
                        &origin.network,
                        &origin.channel,
                        &destination.network,
                        &destination.channel,
                    ],
                )
                .map(|_| ()),
        })
    }

    pub(super) fn people(&self) -> Result<Vec<crate::vocab::KnownPerson>, StoreError> {
        self.run(false, |on| {
            on.query(PEOPLE, &[])?
                .iter()
                .map(|row| {
                    Ok(crate::vocab::KnownPerson {
                        network: row.try_get(0)?,
                        user_id: row.try_get(1)?,
                        display_name: row.try_get(2)?,
                        renamed_to: row.try_get(3)?,
                    })
                })
                .collect()
        })
    }

    pub(super) fn record_rename(
        &self,
        network: &str,
        old: &str,
        new: &str,
    ) -> Result<(), StoreError> {
        // Seen on `network`'s connection: fenced by that network.
        self.fenced_with(Scope::Network(network), |on| {
            on.execute(UPSERT_PERSON, &[&network, &new, &new])?;
            if old != new {
                on.execute(RENAME_PERSON, &[&network, &old, &new])?;
            }
            Ok(())
        })
    }

    pub(super) fn set_cursor(
        &self,
        network: &str,
        channel: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        self.fenced(
            SET_CURSOR,
            &[&network, &channel, &value],
            Scope::Network(network),
        )
    }

    /// From now on, check `lease`'s fencing token in every write transaction that completes,
    /// defers or fails a delivery, commits an inbound event or moves a cursor.
    pub(super) fn set_lease(&self, lease: Arc<Lease>) {
        let _ = self.lease.set(lease);
    }

    /// The one fence statement of a write transaction: when this instance runs with a lease,
    /// it must hold it with the token it knows, or the transaction rolls back and the instance
    /// steps down ([`Lease::lost`]). Without a lease (one instance) it checks nothing.
    ///
    /// In the per-network mode it checks, in one statement, the leases of the `networks` the
    /// transaction writes for, and returns those this instance does not hold with its token
    /// (their items must be refused; the instance stops them, [`Lease::lost_network`]).
    fn fence<C: GenericClient>(
        &self,
        on: &mut On<'_, C>,
        networks: &[String],
    ) -> Result<BTreeSet<String>, StoreError> {
        let Some(lease) = self.lease.get() else {
            return Ok(BTreeSet::new());
        };
        if lease.is_per_network() {
            on.execute(QUEUE_WRITERS_IN_LINE, &[])?;
            return Self::fence_networks(on, lease, networks);
        }
        let Some(token) = lease.fence() else {
            return Err(StoreError::Fenced {
                token: lease.view().token,
            });
        };
        if on
            .query_opt(FENCE, &[&WHOLE_INSTANCE, &lease.instance(), &token])?
            .is_none()
        {
            lease.lost("another instance took the lease over: the fencing token changed");
            return Err(StoreError::Fenced { token });
        }
        Ok(BTreeSet::new())
    }

    /// [`Self::fence`] in the per-network mode.
    fn fence_networks<C: GenericClient>(
        on: &mut On<'_, C>,
        lease: &Lease,
        networks: &[String],
    ) -> Result<BTreeSet<String>, StoreError> {
        let mut refused: BTreeSet<String> = networks
            .iter()
            .filter(|network| lease.network_fence(network).is_none())
            .cloned()
            .collect();
        let asked: Vec<&String> = networks
            .iter()
            .filter(|network| !refused.contains(*network))
            .collect();
        if asked.is_empty() {
            return Ok(refused);
        }
        let rows = on.query(FENCE_NETWORKS, &[&asked, &lease.instance()])?;
        let mut confirmed = BTreeSet::new();
        for row in rows {
            let (scope, token): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
            if lease.network_fence(&scope) == Some(token) {
                confirmed.insert(scope);
            }
        }
        for network in asked {
            if !confirmed.contains(network) {
                lease.lost_network(
                    network,
                    "another instance took the network's lease over: the fencing token changed",
                );
                refused.insert(network.clone());
            }
        }
        Ok(refused)
    }

    /// The fence of the jobs that run once per deployment (the history's chaining, retention
    /// and forgetting): the lease of scope [`WHOLE_INSTANCE`], held by the active instance in
    /// the instance mode and by the singletons' holder ([`Lease::runs_singletons`]) in the
    /// per-network mode, where no network's lease speaks for it.
    fn fence_singletons<C: GenericClient>(&self, on: &mut On<'_, C>) -> Result<(), StoreError> {
        let Some(lease) = self.lease.get() else {
            return Ok(());
        };
        if !lease.is_per_network() {
            return self.fence(on, &[]).map(|_| ());
        }
        let token = lease
            .singletons_token()
            .ok_or(StoreError::Fenced { token: 0 })?;
        if on
            .query_opt(FENCE, &[&WHOLE_INSTANCE, &lease.instance(), &token])?
            .is_none()
        {
            return Err(StoreError::Fenced { token });
        }
        Ok(())
    }

    /// [`Self::fence`] for a transaction that writes for one network only: refused as a whole.
    fn fence_one<C: GenericClient>(
        &self,
        on: &mut On<'_, C>,
        network: &str,
    ) -> Result<(), StoreError> {
        if self.fence(on, &[network.to_owned()])?.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Fenced { token: 0 })
        }
    }

    /// In the per-network mode, tell the other instances (`pg_notify`, sent when the
    /// transaction commits) that deliveries were queued to the destinations of `events` on
    /// networks this instance does not hold; its own workers are woken in process.
    fn notify_queued<'e, C: GenericClient>(
        &self,
        on: &mut On<'_, C>,
        events: impl Iterator<Item = &'e StagedInbound>,
    ) -> Result<(), StoreError> {
        let Some(lease) = self.lease.get().filter(|lease| lease.is_per_network()) else {
            return Ok(());
        };
        let networks: BTreeSet<&str> = events
            .flat_map(|event| event.routes.iter())
            .map(|route| route.destination.network.as_str())
            .filter(|network| lease.network_fence(network).is_none())
            .collect();
        for network in networks {
            on.query(NOTIFY_OUTBOX, &[&network])?;
        }
        Ok(())
    }

    /// One write statement; in a transaction with the fence when there is a lease.
    fn fenced(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
        scope: Scope<'_>,
    ) -> Result<(), StoreError> {
        self.fenced_with(scope, |on| {
            on.execute(sql, params)?;
            Ok(())
        })
    }

    /// `work` on the writer; in a transaction with the fence of `scope`'s network when there
    /// is a lease (nothing is written when `scope` is an outbox row that is gone).
    fn fenced_with(
        &self,
        scope: Scope<'_>,
        mut work: impl FnMut(&mut On<'_, postgres::Transaction<'_>>) -> Result<(), StoreError> + Send,
    ) -> Result<(), StoreError> {
        if self.lease.get().is_none() {
            return self.with(true, |client, cache| {
                let mut transaction = client.transaction()?;
                work(&mut On {
                    client: &mut transaction,
                    cache,
                })?;
                transaction.commit()?;
                Ok(())
            });
        }
        self.with(true, |client, cache| {
            let mut transaction = client.transaction()?;
            let mut on = On {
                client: &mut transaction,
                cache,
            };
            let network = match scope {
                Scope::Network(network) => network.to_owned(),
                Scope::Row(seq) => match on.query_opt(OUTBOX_ROW, &[&seq])? {
                    Some(row) => row.try_get(2)?,
                    None => return Ok(()),
                },
            };
            self.fence_one(&mut on, &network)?;
            work(&mut on)?;
            transaction.commit()?;
            Ok(())
        })
    }

    /// Take the lease of `scope` for `holder` for `ttl`: its new fencing token, or `None`
    /// while another instance holds it unexpired.
    pub(super) fn take_lease(
        &self,
        scope: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        let ttl_ms = ttl.as_secs_f64() * 1000.0;
        self.on_session(&self.leases, |client, cache| {
            let mut transaction = client.transaction()?;
            transaction.batch_execute(LEASE_LOCK_TIMEOUT)?;
            let mut on = On {
                client: &mut transaction,
                cache,
            };
            on.execute(LEASE_ROW, &[&scope])?;
            let token = match on.query_opt(TAKE_LEASE, &[&scope, &holder, &ttl_ms])? {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            };
            transaction.commit()?;
            Ok(token)
        })
    }

    /// Extend `holder`'s lease of `scope` by `ttl` if it still holds it with `token`.
    pub(super) fn renew_lease(
        &self,
        scope: &str,
        holder: &str,
        token: i64,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let ttl_ms = ttl.as_secs_f64() * 1000.0;
        self.on_session(&self.leases, |client, cache| {
            let mut on = On { client, cache };
            Ok(on.execute(RENEW_LEASE, &[&scope, &holder, &token, &ttl_ms])? == 1)
        })
    }

    /// Let the lease of `scope` go at once (a clean stop), if `holder` still holds it.
    pub(super) fn release_lease(
        &self,
        scope: &str,
        holder: &str,
        token: i64,
    ) -> Result<(), StoreError> {
        self.on_session(&self.leases, |client, cache| {
            let mut on = On { client, cache };
            on.execute(RELEASE_LEASE, &[&scope, &holder, &token])?;
            Ok(())
        })
    }

    /// The per-network mode's tick, on the lease session: stamp `instance`'s heartbeat, renew
    /// every lease it holds (`held`: scope and token) by `ttl` in one statement, and read how
    /// many instances are alive (a heartbeat within `ttl`) and who holds which lease.
    pub(super) fn lease_tick(
        &self,
        instance: &str,
        held: &[(String, i64)],
        ttl: std::time::Duration,
    ) -> Result<LeaseTick, StoreError> {
        let ttl_ms = ttl.as_secs_f64() * 1000.0;
        let scopes: Vec<&str> = held.iter().map(|(scope, _)| scope.as_str()).collect();
        let tokens: Vec<i64> = held.iter().map(|(_, token)| *token).collect();
        self.on_session(&self.leases, |client, cache| {
            let mut on = On { client, cache };
            on.execute(HEARTBEAT, &[&instance])?;
            let renewed = if held.is_empty() {
                Vec::new()
            } else {
                on.query(RENEW_NETWORKS, &[&instance, &scopes, &tokens, &ttl_ms])?
                    .iter()
                    .map(|row| row.try_get(0))
                    .collect::<Result<Vec<String>, _>>()?
            };
            let live: i64 = on.query_one(LIVE_INSTANCES, &[&ttl_ms])?.try_get(0)?;
            let mut holders = Vec::new();
            for row in on.query(ALL_LEASES, &[])? {
                let (scope, holder, unexpired): (String, String, bool) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                holders.push((scope, unexpired.then_some(holder)));
            }
            Ok(LeaseTick {
                renewed,
                live_instances: usize::try_from(live).unwrap_or(1).max(1),
                holders,
            })
        })
    }

    /// Listen for the `tribridge_outbox` notifications of the other instances on a connection
    /// of its own, on a thread of its own, calling `on_network` with each one's network, until
    /// `stop` is set (checked every half second). A lost connection is made again after a
    /// second; what was notified meanwhile is found by the workers' slower safety poll.
    pub(super) fn listen_outbox(
        &self,
        on_network: Box<dyn Fn(&str) + Send>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<std::thread::JoinHandle<()>, StoreError> {
        let target = Target {
            config: self.target.config.clone(),
            tls: self.target.tls.clone(),
        };
        std::thread::Builder::new()
            .name("tribridge-listen".to_owned())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let listened = Session::open(&target).and_then(|mut client| {
                        client.batch_execute(LISTEN_OUTBOX)?;
                        tracing::debug!("Listening for the other instances' queued deliveries.");
                        while !stop.load(Ordering::Relaxed) {
                            let mut notifications = client.notifications();
                            let mut waiting = notifications
                                .timeout_iter(std::time::Duration::from_millis(500));
                            while let Some(notification) =
                                postgres::fallible_iterator::FallibleIterator::next(&mut waiting)?
                            {
                                on_network(notification.payload());
                            }
                        }
                        Ok::<_, StoreError>(())
                    });
                    if let Err(error) = listened {
                        tracing::warn!(error = %error, "The store's notification connection was lost; listening again in a second (the workers poll meanwhile).");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            })
            .map_err(|error| StoreError::Url(format!("cannot start the listening thread: {error}")))
    }

    /// `instance` stops: its heartbeat row goes, so that the others count it out at once.
    pub(super) fn forget_instance(&self, instance: &str) -> Result<(), StoreError> {
        self.on_session(&self.leases, |client, cache| {
            let mut on = On { client, cache };
            on.execute(FORGET_INSTANCE, &[&instance])?;
            Ok(())
        })
    }

    /// Who holds the lease of `scope`, with its token and whether it is unexpired.
    pub(super) fn lease_holder(
        &self,
        scope: &str,
    ) -> Result<Option<(String, i64, bool)>, StoreError> {
        self.on_session(&self.leases, |client, cache| {
            let mut on = On { client, cache };
            Ok(match on.query_opt(LEASE_HOLDER, &[&scope])? {
                Some(row) => Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)),
                None => None,
            })
        })
    }
}

impl PostgresStore {
    pub(super) fn outbox_by_destination(&self) -> Result<Vec<OutboxCount>, StoreError> {
        self.run(false, |on| {
            on.query(OUTBOX_BY_DESTINATION, &[])?
                .iter()
                .map(|row| {
                    Ok(OutboxCount {
                        network: row.try_get(0)?,
                        channel: row.try_get(1)?,
                        state: row.try_get(2)?,
                        count: row.try_get(3)?,
                        oldest_received_ms: row.try_get(4)?,
                    })
                })
                .collect()
        })
    }

    pub(super) fn failed_deliveries(&self) -> Result<Vec<FailedRow>, StoreError> {
        self.run(false, |on| {
            on.query(FAILED_DELIVERIES, &[])?
                .iter()
                .map(|row| {
                    Ok(FailedRow {
                        seq: row.try_get(0)?,
                        delivery_id: row.try_get(1)?,
                        network: row.try_get(2)?,
                        channel: row.try_get(3)?,
                        gateway: row.try_get(4)?,
                        attempts: row.try_get(5)?,
                        last_error: row.try_get(6)?,
                        origin_network: row.try_get(7)?,
                        origin_channel: row.try_get(8)?,
                        author_name: row.try_get(9)?,
                        body: row.try_get(10)?,
                        received_ms: row.try_get(11)?,
                    })
                })
                .collect()
        })
    }

    /// Not fenced: an operator's request on a failed row, which no worker touches, served by
    /// whichever instance the admin socket reached. In the per-network mode the instance that
    /// holds the destination's network is told (`pg_notify`, as for a queued delivery).
    pub(super) fn requeue_failed(&self, seq: i64) -> Result<Option<(ChannelRef, i64)>, StoreError> {
        let per_network = self.lease.get().is_some_and(|lease| lease.is_per_network());
        self.with(true, |client, cache| {
            let mut transaction = client.transaction()?;
            let mut on = On {
                client: &mut transaction,
                cache,
            };
            if per_network {
                on.execute(QUEUE_WRITERS_IN_LINE, &[])?;
            }
            let requeued = match on.query_opt(REQUEUE_FAILED, &[&seq])? {
                Some(row) => Some((
                    ChannelRef::new(row.try_get::<_, String>(1)?, row.try_get::<_, String>(2)?),
                    row.try_get(0)?,
                )),
                None => None,
            };
            if let (Some((destination, _)), true) = (&requeued, per_network) {
                on.query(NOTIFY_OUTBOX, &[&destination.network])?;
            }
            transaction.commit()?;
            Ok(requeued)
        })
    }

    pub(super) fn drop_failed(&self, seq: i64) -> Result<bool, StoreError> {
        Ok(self.run(true, |on| on.execute(DROP_FAILED, &[&seq]))? > 0)
    }
}

impl Drop for PostgresStore {
    /// The client closes its connection on its own runtime, which may not happen on a thread
    /// of the daemon's: the sessions are dropped where they may block.
    fn drop(&mut self) {
        let sessions = [&self.writer, &self.reader, &self.leases].map(|session| {
            session
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .client
                .take()
        });
        off_runtime(move || drop(sessions));
    }
}

/// Whether `error` means the connection is gone (rather than that the statement failed): the
/// client saw it close, or the server said it is shutting down or the connection broke.
fn connection_lost(error: &postgres::Error, client: &Client) -> bool {
    use postgres::error::SqlState;
    client.is_closed()
        || error.is_closed()
        || error.code().is_some_and(|code| {
            [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(code)
                || code.code().starts_with("08")
        })
}

/// Every event of a group gets the group's error.
fn all_failed(error: &StoreError, events: usize) -> GroupOutcome {
    let message = error.to_string();
    GroupOutcome {
        acks: Err(StoreError::Group(message.clone())),
        events: (0..events)
            .map(|_| Err(StoreError::Group(message.clone())))
            .collect(),
        queued: Vec::new(),
        refused: Vec::new(),
    }
}

fn lookup<C: GenericClient>(
    on: &mut On<'_, C>,
    channel: &ChannelRef,
    remote_id: &str,
) -> Result<Option<(i64, MappingRole)>, StoreError> {
    Ok(
        match on.query_opt(LOOKUP, &[&channel.network, &channel.channel, &remote_id])? {
            Some(row) => Some((row.try_get(0)?, role_from_sql(row.try_get(1)?))),
            None => None,
        },
    )
}

/// The PostgreSQL reads of [`DeliveryReads`], on the reader's session.
struct PostgresReads<'o, 's, C: GenericClient>(&'o mut On<'s, C>);

impl<C: GenericClient> DeliveryReads for PostgresReads<'_, '_, C> {
    fn resolve_target(
        &mut self,
        message_id: i64,
        destination: &ChannelRef,
    ) -> Result<TargetRef, StoreError> {
        let remote_id = match self.0.query_opt(
            RESOLVE_TARGET,
            &[&message_id, &destination.network, &destination.channel],
        )? {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        };
        Ok(TargetRef {
            message_id,
            remote_id,
        })
    }

    fn lookup_mapping(
        &mut self,
        channel: &ChannelRef,
        remote_id: &str,
    ) -> Result<Option<(i64, MappingRole)>, StoreError> {
        lookup(self.0, channel, remote_id)
    }

    fn replied_message(&mut self, id: i64) -> Result<Option<Replied>, StoreError> {
        let Some(row) = self.0.query_opt(REPLIED, &[&id])? else {
            return Ok(None);
        };
        let body: String = row.try_get(3)?;
        Ok(replied_of(
            id,
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            &body,
            row.try_get(4)?,
        ))
    }

    fn previous_text(
        &mut self,
        target_id: i64,
        edit_id: i64,
    ) -> Result<Option<FormattedText>, StoreError> {
        let row = match self.0.query_opt(PREVIOUS_EDIT, &[&target_id, &edit_id])? {
            Some(row) => Some(row),
            None => self.0.query_opt(MESSAGE_BODY, &[&target_id])?,
        };
        Ok(match row {
            Some(row) => text_of(row.try_get(0)?),
            None => None,
        })
    }
}

/// Record an inbound event inside the caller's transaction or savepoint (as `SQLite`'s
/// `record_inbound`).
fn record_inbound<C: GenericClient>(
    on: &mut On<'_, C>,
    staged: &StagedInbound,
    received_ms: i64,
) -> Result<Recorded, StoreError> {
    let inbound = &staged.inbound;
    if let Some(remote_id) = &inbound.remote_id
        && let Some((message_id, role)) = lookup(on, &inbound.origin, remote_id)?
    {
        return Ok(Recorded::Nothing(match role {
            MappingRole::Delivery => CommitOutcome::Echo { message_id },
            MappingRole::Origin => CommitOutcome::Duplicate { message_id },
        }));
    }
    let target_message_id = match inbound.body.target() {
        Some(target) => match lookup(on, &inbound.origin, target)? {
            Some((message_id, _)) => Some(message_id),
            None => return Ok(Recorded::Nothing(CommitOutcome::UnknownTarget)),
        },
        None => None,
    };
    let reply_to_message_id = match inbound.body.reply_to() {
        Some(reply_to) => lookup(on, &inbound.origin, reply_to)?.map(|(id, _)| id),
        None => None,
    };
    let message_id: i64 = on
        .query_one(
            INSERT_MESSAGE,
            &[
                &inbound.origin.network,
                &inbound.origin.channel,
                &staged.protocol,
                &inbound.remote_id,
                &inbound.author.id,
                &inbound.author.display_name,
                &inbound.body.kind_name(),
                &staged.body,
                &inbound.timestamp_ms,
                &received_ms,
                &target_message_id,
                &reply_to_message_id,
                &inbound.permalink,
            ],
        )?
        .try_get(0)?;
    record_person(on, inbound)?;
    if let Some(remote_id) = &inbound.remote_id {
        on.execute(
            INSERT_ORIGIN,
            &[
                &inbound.origin.network,
                &inbound.origin.channel,
                remote_id,
                &message_id,
            ],
        )?;
    }
    let mut seqs = Vec::with_capacity(staged.routes.len());
    for (route, delivery) in staged.routes.iter().zip(&staged.deliveries) {
        let seq: i64 = on
            .query_one(
                INSERT_OUTBOX,
                &[
                    &delivery.id,
                    &message_id,
                    &route.destination.network,
                    &route.destination.channel,
                    &route.gateway,
                ],
            )?
            .try_get(0)?;
        seqs.push(seq);
    }
    Ok(Recorded::Message { message_id, seqs })
}

/// What the PostgreSQL store writes in place of U+0000, which PostgreSQL refuses in text.
const NUL_STAND_IN: &str = "\u{FFFD}";

/// `text` with each NUL replaced by [`NUL_STAND_IN`] (borrowed when it holds none).
fn nul_replaced(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', NUL_STAND_IN))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Replace each NUL of `text` in place; whether there was one.
fn replace_nul(text: &mut String) -> bool {
    match nul_replaced(text) {
        std::borrow::Cow::Owned(replaced) => {
            *text = replaced;
            true
        }
        std::borrow::Cow::Borrowed(_) => false,
    }
}

/// A body written as JSON with each `\u0000` escape (a NUL in one of its strings) written as
/// `\ufffd`; `None` when it holds none. Other escapes are passed over whole, so that an escaped
/// backslash followed by `u0000` is left as it is.
fn json_without_nul(json: &str) -> Option<String> {
    const NUL: &str = "\\u0000";
    if !json.contains(NUL) {
        return None;
    }
    let mut out = String::with_capacity(json.len());
    let (mut at, mut copied) = (0, 0);
    let bytes = json.as_bytes();
    while at < bytes.len() {
        if bytes[at] != b'\\' {
            at += 1;
        } else if json[at..].starts_with(NUL) {
            out.push_str(&json[copied..at]);
            out.push_str("\\ufffd");
            at += NUL.len();
            copied = at;
        } else {
            // An escape is a backslash and one ASCII character (then, for `\u`, four digits).
            at += 2;
        }
    }
    out.push_str(&json[copied..]);
    Some(out)
}

/// Make an event storable in PostgreSQL: each NUL in its origin, author, ids, permalink and body
/// replaced by [`NUL_STAND_IN`], and its announced deliveries made to carry the same text.
fn without_nul(staged: &mut StagedInbound) {
    let inbound = &mut staged.inbound;
    let mut changed = false;
    for text in [
        &mut inbound.origin.network,
        &mut inbound.origin.channel,
        &mut inbound.author.id,
        &mut inbound.author.display_name,
    ] {
        changed |= replace_nul(text);
    }
    for text in [&mut inbound.remote_id, &mut inbound.permalink]
        .into_iter()
        .flatten()
    {
        changed |= replace_nul(text);
    }
    if let Some(json) = json_without_nul(&staged.body) {
        match serde_json::from_str::<EventBody>(&json) {
            Ok(body) => {
                inbound.body = body;
                staged.body = json;
                changed = true;
            }
            // Not expected (only string contents changed); PostgreSQL then refuses the event,
            // which fails alone.
            Err(error) => {
                tracing::warn!(error = %error, "A message body with a NUL character could not be rewritten.");
            }
        }
    }
    if !changed {
        return;
    }
    tracing::info!(origin = %inbound.origin, "A NUL character in an event is stored as U+FFFD (PostgreSQL refuses NUL in text).");
    for delivery in &mut staged.deliveries {
        if let Some(announced) = &mut delivery.announced {
            announced.origin = inbound.origin.clone();
            announced.author = inbound.author.clone();
            announced.body = inbound.body.clone();
            announced.permalink.clone_from(&inbound.permalink);
        }
    }
}

/// What one key of the mappings (network, channel, remote id) maps to.
type Known = HashMap<(String, String, String), (i64, MappingRole)>;

fn known_key(channel: &ChannelRef, remote_id: &str) -> (String, String, String) {
    (
        channel.network.clone(),
        channel.channel.clone(),
        remote_id.to_owned(),
    )
}

/// A group's writes inside the caller's transaction, in three statements whatever its size:
/// its acknowledgements ([`COMPLETE_GROUP`]), the mappings its events name with ids for its
/// new rows ([`PREPARE_GROUP`]), then every new row ([`RECORD_GROUP`]). What each event is (new,
/// a duplicate, an echo, an edit of a message never bridged) is decided here as
/// `record_inbound` decides it row by row, in order: an event sees the acknowledgements and
/// the events before it in its group.
fn record_group<C: GenericClient>(
    on: &mut On<'_, C>,
    acknowledged: &[Completion],
    events: &[StagedInbound],
    received_ms: i64,
) -> Result<Vec<Recorded>, StoreError> {
    record_completions(on, acknowledged)?;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let (mut networks, mut channels, mut remote_ids) = (Vec::new(), Vec::new(), Vec::new());
    for event in events {
        let inbound = &event.inbound;
        let named = [
            inbound.remote_id.as_deref(),
            inbound.body.target(),
            inbound.body.reply_to(),
        ];
        for remote_id in named.into_iter().flatten() {
            networks.push(inbound.origin.network.as_str());
            channels.push(inbound.origin.channel.as_str());
            remote_ids.push(remote_id);
        }
    }
    let outbox_rows: usize = events.iter().map(|event| event.routes.len()).sum();
    let row = on.query_one(
        PREPARE_GROUP,
        &[
            &networks,
            &channels,
            &remote_ids,
            &(events.len() as i64),
            &(outbox_rows as i64),
        ],
    )?;
    let mut message_ids: Vec<i64> = row.try_get(0)?;
    let mut seqs: Vec<i64> = row.try_get(1)?;
    message_ids.sort_unstable();
    seqs.sort_unstable();
    let mut known = Known::new();
    if let (Some(networks), Some(channels), Some(remote_ids), Some(ids), Some(roles)) = (
        row.try_get::<_, Option<Vec<String>>>(2)?,
        row.try_get::<_, Option<Vec<String>>>(3)?,
        row.try_get::<_, Option<Vec<String>>>(4)?,
        row.try_get::<_, Option<Vec<i64>>>(5)?,
        row.try_get::<_, Option<Vec<String>>>(6)?,
    ) {
        for ((((network, channel), remote_id), id), role) in networks
            .into_iter()
            .zip(channels)
            .zip(remote_ids)
            .zip(ids)
            .zip(roles)
        {
            known.insert((network, channel, remote_id), (id, role_from_sql(&role)));
        }
    }
    let mut rows = GroupRows::default();
    let (mut message_ids, mut seqs) = (message_ids.into_iter(), seqs.into_iter());
    let mut recorded = Vec::with_capacity(events.len());
    for event in events {
        let inbound = &event.inbound;
        if let Some(remote_id) = &inbound.remote_id
            && let Some(&(message_id, role)) = known.get(&known_key(&inbound.origin, remote_id))
        {
            recorded.push(Recorded::Nothing(match role {
                MappingRole::Delivery => CommitOutcome::Echo { message_id },
                MappingRole::Origin => CommitOutcome::Duplicate { message_id },
            }));
            continue;
        }
        let target = match inbound.body.target() {
            Some(target) => {
                let Some(&(message_id, _)) = known.get(&known_key(&inbound.origin, target)) else {
                    recorded.push(Recorded::Nothing(CommitOutcome::UnknownTarget));
                    continue;
                };
                Some(message_id)
            }
            None => None,
        };
        let reply_to = inbound
            .body
            .reply_to()
            .and_then(|reply_to| known.get(&known_key(&inbound.origin, reply_to)))
            .map(|&(message_id, _)| message_id);
        let ran_out = || StoreError::Group("the database gave fewer ids than asked".into());
        let message_id = message_ids.next().ok_or_else(ran_out)?;
        rows.message(event, message_id, target, reply_to);
        if let Some(remote_id) = &inbound.remote_id {
            known.insert(
                known_key(&inbound.origin, remote_id),
                (message_id, MappingRole::Origin),
            );
        }
        let mut event_seqs = Vec::with_capacity(event.routes.len());
        for (route, delivery) in event.routes.iter().zip(&event.deliveries) {
            let seq = seqs.next().ok_or_else(ran_out)?;
            rows.outbox_seq.push(seq);
            rows.outbox_delivery.push(&delivery.id);
            rows.outbox_message.push(message_id);
            rows.outbox_network.push(&route.destination.network);
            rows.outbox_channel.push(&route.destination.channel);
            rows.outbox_gateway.push(&route.gateway);
            event_seqs.push(seq);
        }
        recorded.push(Recorded::Message {
            message_id,
            seqs: event_seqs,
        });
    }
    if !rows.ids.is_empty() {
        rows.write(on, received_ms)?;
    }
    Ok(recorded)
}

/// The rows [`RECORD_GROUP`] writes, one array per column.
#[derive(Default)]
struct GroupRows<'e> {
    ids: Vec<i64>,
    networks: Vec<&'e str>,
    channels: Vec<&'e str>,
    protocols: Vec<&'e str>,
    remote_ids: Vec<Option<&'e str>>,
    author_ids: Vec<&'e str>,
    author_names: Vec<&'e str>,
    kinds: Vec<&'e str>,
    bodies: Vec<&'e str>,
    created: Vec<i64>,
    targets: Vec<Option<i64>>,
    replies: Vec<Option<i64>>,
    permalinks: Vec<Option<&'e str>>,
    origin_network: Vec<&'e str>,
    origin_channel: Vec<&'e str>,
    origin_remote_id: Vec<&'e str>,
    origin_message: Vec<i64>,
    outbox_seq: Vec<i64>,
    outbox_delivery: Vec<&'e str>,
    outbox_message: Vec<i64>,
    outbox_network: Vec<&'e str>,
    outbox_channel: Vec<&'e str>,
    outbox_gateway: Vec<&'e str>,
    /// The people directory's writes, in the events' order.
    people: Vec<PersonWrite<'e>>,
}

/// One write to the people directory (as `record_person`).
enum PersonWrite<'e> {
    /// [`UPSERT_PERSON`]: network, user id, shown name.
    Named(&'e str, &'e str, &'e str),
    /// [`RENAME_PERSON`]: network, old nick, new nick.
    Renamed(&'e str, &'e str, &'e str),
}

impl<'e> GroupRows<'e> {
    fn message(
        &mut self,
        event: &'e StagedInbound,
        message_id: i64,
        target: Option<i64>,
        reply_to: Option<i64>,
    ) {
        let inbound = &event.inbound;
        let network = inbound.origin.network.as_str();
        self.ids.push(message_id);
        self.networks.push(network);
        self.channels.push(&inbound.origin.channel);
        self.protocols.push(event.protocol);
        self.remote_ids.push(inbound.remote_id.as_deref());
        self.author_ids.push(&inbound.author.id);
        self.author_names.push(&inbound.author.display_name);
        self.kinds.push(inbound.body.kind_name());
        self.bodies.push(&event.body);
        self.created.push(inbound.timestamp_ms);
        self.targets.push(target);
        self.replies.push(reply_to);
        self.permalinks.push(inbound.permalink.as_deref());
        if let Some(remote_id) = &inbound.remote_id {
            self.origin_network.push(network);
            self.origin_channel.push(&inbound.origin.channel);
            self.origin_remote_id.push(remote_id);
            self.origin_message.push(message_id);
        }
        let author = &inbound.author;
        if let EventBody::Membership(Membership::Renamed { new_name }) = &inbound.body {
            self.people
                .push(PersonWrite::Named(network, new_name, new_name));
            if author.id != *new_name {
                self.people
                    .push(PersonWrite::Renamed(network, &author.id, new_name));
            }
        } else {
            self.people.push(PersonWrite::Named(
                network,
                &author.id,
                &author.display_name,
            ));
        }
    }

    /// Write every row: one statement; the people directory's writes in it too unless a
    /// nick changed in the group (then they follow one by one, in order, as a rename and a
    /// later name of the same person must).
    fn write<C: GenericClient>(
        self,
        on: &mut On<'_, C>,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        let renamed = self
            .people
            .iter()
            .any(|write| matches!(write, PersonWrite::Renamed(..)));
        let (mut person_network, mut person_id, mut person_name) =
            (Vec::new(), Vec::new(), Vec::new());
        if !renamed {
            // One row per person (a statement may not update a row twice): the last name.
            let mut at: HashMap<(&str, &str), usize> = HashMap::new();
            for write in &self.people {
                if let PersonWrite::Named(network, id, name) = *write {
                    if let Some(&index) = at.get(&(network, id)) {
                        person_name[index] = name;
                    } else {
                        at.insert((network, id), person_id.len());
                        person_network.push(network);
                        person_id.push(id);
                        person_name.push(name);
                    }
                }
            }
        }
        on.execute(
            RECORD_GROUP,
            &[
                &self.ids,
                &self.networks,
                &self.channels,
                &self.protocols,
                &self.remote_ids,
                &self.author_ids,
                &self.author_names,
                &self.kinds,
                &self.bodies,
                &self.created,
                &self.targets,
                &self.replies,
                &self.permalinks,
                &received_ms,
                &self.origin_network,
                &self.origin_channel,
                &self.origin_remote_id,
                &self.origin_message,
                &self.outbox_seq,
                &self.outbox_delivery,
                &self.outbox_message,
                &self.outbox_network,
                &self.outbox_channel,
                &self.outbox_gateway,
                &person_network,
                &person_id,
                &person_name,
            ],
        )?;
        if renamed {
            for write in &self.people {
                match *write {
                    PersonWrite::Named(network, id, name) => {
                        on.execute(UPSERT_PERSON, &[&network, &id, &name])?
                    }
                    PersonWrite::Renamed(network, old, new) => {
                        on.execute(RENAME_PERSON, &[&network, &old, &new])?
                    }
                };
            }
        }
        Ok(())
    }
}

/// A group's acknowledgements in one statement ([`COMPLETE_GROUP`]), as
/// `record_known_completion` for each in order: a second acknowledgement of the same row finds
/// it gone and adds nothing.
fn record_completions<C: GenericClient>(
    on: &mut On<'_, C>,
    acknowledged: &[Completion],
) -> Result<(), StoreError> {
    if acknowledged.is_empty() {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::with_capacity(acknowledged.len());
    let mut seqs = Vec::with_capacity(acknowledged.len());
    let (mut delivery_ids, mut message_ids, mut networks, mut channels, mut remote_ids) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut attempts = Vec::with_capacity(acknowledged.len());
    for completion in acknowledged {
        if !seen.insert(completion.seq) {
            continue;
        }
        seqs.push(completion.seq);
        delivery_ids.push(completion.delivery_id.as_str());
        message_ids.push(completion.message_id);
        networks.push(completion.destination.network.as_str());
        channels.push(completion.destination.channel.as_str());
        remote_ids.push(completion.remote_id.as_deref());
        attempts.push(i64::from(completion.attempts) + 1);
    }
    on.execute(
        COMPLETE_GROUP,
        &[
            &seqs,
            &delivery_ids,
            &message_ids,
            &networks,
            &channels,
            &remote_ids,
            &attempts,
            &now_ms(),
        ],
    )?;
    Ok(())
}

/// The people directory's row of the event's author (as `SQLite`'s `record_person`).
fn record_person<C: GenericClient>(
    on: &mut On<'_, C>,
    inbound: &Inbound,
) -> Result<(), StoreError> {
    let network = &inbound.origin.network;
    let author = &inbound.author;
    if let EventBody::Membership(Membership::Renamed { new_name }) = &inbound.body {
        on.execute(UPSERT_PERSON, &[network, new_name, new_name])?;
        if author.id != *new_name {
            on.execute(RENAME_PERSON, &[network, &author.id, new_name])?;
        }
    } else {
        on.execute(UPSERT_PERSON, &[network, &author.id, &author.display_name])?;
    }
    Ok(())
}

/// Record a completion (as `SQLite`'s `record_known_completion`): the outbox row gone, a
/// `deliveries` row and the mapping of the destination's id. Idempotent.
fn record_known_completion<C: GenericClient>(
    on: &mut On<'_, C>,
    completion: &Completion,
) -> Result<(), StoreError> {
    let Completion {
        seq,
        delivery_id,
        message_id,
        destination,
        attempts,
        remote_id,
    } = completion;
    if on.execute(DELETE_OUTBOX, &[seq])? == 0 {
        // Already recorded (or never queued): nothing to add.
        return Ok(());
    }
    on.execute(
        INSERT_DELIVERED,
        &[
            delivery_id,
            message_id,
            &destination.network,
            &destination.channel,
            remote_id,
            &(i64::from(*attempts) + 1),
            &now_ms(),
        ],
    )?;
    if let Some(remote_id) = remote_id {
        on.execute(
            INSERT_DELIVERY_MAPPING,
            &[
                &destination.network,
                &destination.channel,
                remote_id,
                message_id,
                delivery_id,
            ],
        )?;
    }
    Ok(())
}

/// Apply the migrations not yet applied, each in its own transaction, under an advisory lock.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS tribridge_schema (version BIGINT NOT NULL);")?;
    let known = MIGRATIONS.len() as i64;
    loop {
        let mut transaction = client.transaction()?;
        transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        let current: i64 = transaction
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM tribridge_schema",
                &[],
            )?
            .try_get(0)?;
        if current > known {
            return Err(StoreError::TooNew {
                found: current,
                known,
            });
        }
        let Some(sql) = MIGRATIONS.get(current as usize) else {
            return Ok(());
        };
        transaction.batch_execute(sql)?;
        transaction.execute("DELETE FROM tribridge_schema", &[])?;
        transaction.execute(
            "INSERT INTO tribridge_schema (version) VALUES ($1)",
            &[&(current + 1)],
        )?;
        transaction.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_migration_numbers() {
        let numbers = |dir: &str| -> Vec<String> {
            let mut numbers: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|entry| {
                    let name = entry.unwrap().file_name().into_string().unwrap();
                    let sql = std::path::Path::new(&name)
                        .extension()
                        .is_some_and(|extension| extension == "sql");
                    sql.then(|| name[..4].to_owned())
                })
                .collect();
            numbers.sort();
            numbers
        };
        let root = env!("CARGO_MANIFEST_DIR");
        let sqlite = numbers(&format!("{root}/migrations"));
        let postgres = numbers(&format!("{root}/migrations/postgres"));
        assert_eq!(sqlite, postgres);
        assert_eq!(sqlite.len(), super::super::MIGRATIONS.len());
        assert_eq!(postgres.len(), MIGRATIONS.len());
    }

    #[test]
    fn a_nul_in_a_body_becomes_u_fffd_and_an_escaped_backslash_stays() {
        let body = EventBody::text(crate::model::TextStyle::Normal, "x");
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(json_without_nul(&json), None);
        let json = r#"{"a":"n\u0000l","b":"\\u0000 is six characters","c":"\\\u0000"}"#;
        assert_eq!(
            json_without_nul(json).unwrap(),
            r#"{"a":"n\ufffdl","b":"\\u0000 is six characters","c":"\\\ufffd"}"#
        );
        let mut staged = StagedInbound::new(
            Inbound {
                origin: ChannelRef::new("one", "#a"),
                remote_id: Some("id\0".into()),
                author: crate::model::Author {
                    id: "a".into(),
                    display_name: "n\0l".into(),
                },
                timestamp_ms: 0,
                body,
                permalink: None,
            },
            "irc",
            vec![Route {
                gateway: "g".into(),
                destination: ChannelRef::new("two", "#b"),
            }],
        )
        .unwrap();
        without_nul(&mut staged);
        assert_eq!(staged.inbound.remote_id.as_deref(), Some("id\u{FFFD}"));
        let announced = staged.deliveries[0].announced.as_ref().unwrap();
        assert_eq!(announced.author.display_name, "n\u{FFFD}l");
    }

    #[test]
    fn a_url_is_read_with_its_tls_options_and_errors_hide_the_password() {
        let target = parse_url("postgres://bridge:s3cret@db.example:5433/chat").unwrap();
        assert!(target.tls.is_some(), "prefer: TLS when offered");
        assert_eq!(target.config.get_dbname(), Some("chat"));
        let plain = parse_url("postgresql://bridge@127.0.0.1/chat?sslmode=disable").unwrap();
        assert!(plain.tls.is_none());
        let verified = parse_url("postgres://bridge@db.example/chat?sslmode=verify-full").unwrap();
        assert_eq!(
            verified.config.get_ssl_mode(),
            postgres::config::SslMode::Require
        );
        let wrong = parse_url("postgres://bridge:s3cret@db.example/chat?sslmode=sometimes")
            .err()
            .unwrap()
            .to_string();
        assert!(
            wrong.contains("sometimes") && !wrong.contains("s3cret"),
            "{wrong}"
        );
        let missing =
            parse_url("postgres://bridge:s3cret@db.example/chat?sslrootcert=/nonexistent")
                .err()
                .unwrap()
                .to_string();
        assert!(
            missing.contains("/nonexistent") && !missing.contains("s3cret"),
            "{missing}"
        );
        assert!(parse_url("mysql://x@y/z").is_err());
        assert!(parse_url("postgres://bridge@db.example").is_err());
    }
}
