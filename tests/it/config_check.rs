//! `tribridge check` and the configuration errors a user sees: one case per class of error, each
//! with the exact text (<file:line:column>: key: what is wrong and what would be valid).

use std::path::Path;
use std::process::Command;

const NET: &str =
    "[network.libera]\ntype = \"irc\"\nserver = \"irc.libera.chat:6697\"\nnick = \"tribridge\"\n";
const NET2: &str =
    "[network.oftc]\ntype = \"irc\"\nserver = \"irc.oftc.net:6697\"\nnick = \"tribridge\"\n";
const MX: &str = "[network.mx]\ntype = \"matrix\"\nhomeserver = \"https://matrix.example.org\"\nuser = \"@bridge:example.org\"\npassword = \"p\"\n";
const MXGATEWAY: &str = "[[gateway]]\nname = \"g\"\nchannels = [\n  { network = \"mx\", channel = \"#a:example.org\" },\n  { network = \"oftc\", channel = \"#b\" },\n  { network = \"mx\", channel = \"!v12roomid\" },\n]\n";
const GATEWAY: &str = "[[gateway]]\nname = \"g\"\nchannels = [\n  { network = \"libera\", channel = \"#a\" },\n  { network = \"oftc\", channel = \"#b\" },\n]\n";

fn check(text: &str) -> Vec<String> {
    let env = vec![
        ("SET_VAR".to_owned(), "from-env".to_owned()),
        (
            "STORE_URL".to_owned(),
            "postgres://bridge:s3cret@db/x?sslmode=sometimes".to_owned(),
        ),
    ];
    match tribridge::config::parse(text, Path::new("/etc/tribridge"), &env) {
        Ok(_) => Vec::new(),
        Err(issues) => issues
            .iter()
            .map(|issue| issue.display_with(Path::new("bridges.toml")))
            .collect(),
    }
}

/// (what is wrong, the file, the exact errors)
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        ("valid", format!("{NET}{NET2}{GATEWAY}"), vec![]),
        (
            "unknown key in general",
            format!("[general]\ncolour = \"red\"\n{NET}{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:2:1: general.colour: unknown field `colour`, expected one of `state_dir`, `store`, `store_file`, `store_env`, `remote_nick_format`, `media_listen`, `media_public_url`, `metrics_listen`, `reconnect_max_seconds`, `failover_after`, `failover`, `instance_name`, `max_file_size_mb`, `file_retention_days`",
            ],
        ),
        (
            "store that is not a PostgreSQL URL",
            format!("[general]\nstore = \"mysql://db/x\"\n{NET}{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:2:9: general.store: must start with `postgres://` (e.g. postgres://tribridge:PASSWORD@db.example/tribridge)",
            ],
        ),
        (
            "store URL with an unknown sslmode (the password is not repeated)",
            format!(
                "[general]\nstore_env = \"STORE_URL\"\n{NET}{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:2:13: general.store: sslmode `sometimes` is not one of disable, prefer, require, verify-ca, verify-full",
            ],
        ),
        (
            "store given twice",
            format!(
                "[general]\nstore = \"postgres://db/x\"\nstore_env = \"SET_VAR\"\n{NET}{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:3:13: general.store: give `store` one way only: `store`, `store_file` or `store_env`",
            ],
        ),
        (
            "store from an unset variable",
            format!("[general]\nstore_env = \"UNSET_VAR\"\n{NET}{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:2:13: general.store_env: environment variable `UNSET_VAR` is not set",
            ],
        ),
        (
            "an archive and a retention on the PostgreSQL store",
            format!(
                "[general]\nstore = \"postgres://db/x\"\n{NET}{NET2}{GATEWAY}archive = true\nretention_days = 7\n"
            ),
            // Both stores keep the history: accepted.
            vec![],
        ),
        (
            "failover keys without the PostgreSQL store",
            format!(
                "[general]\nfailover_after = \"5s\"\ninstance_name = \"a\"\nfailover = \"network\"\n{NET}{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:2:18: general.failover_after: `failover_after` is for failover between instances on one PostgreSQL store; set `store = \"postgres://…\"` or remove it (the SQLite store serves one instance)",
                "bridges.toml:3:17: general.instance_name: `instance_name` is for failover between instances on one PostgreSQL store; set `store = \"postgres://…\"` or remove it (the SQLite store serves one instance)",
                "bridges.toml:4:12: general.failover: `failover` is for failover between instances on one PostgreSQL store; set `store = \"postgres://…\"` or remove it (the SQLite store serves one instance)",
            ],
        ),
        (
            "failover keys out of range",
            format!(
                "[general]\nstore = \"postgres://db/x\"\nfailover_after = \"10 parsecs\"\ninstance_name = \"host one\"\nfailover = \"cluster\"\n{NET}{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:3:18: general.failover_after: `10 parsecs` is not a duration between 1s and 300s, e.g. \"10s\", \"2500ms\" or \"1m\"",
                "bridges.toml:4:17: general.instance_name: `host one` is not an instance name: 1 to 64 of the letters a-z, A-Z, digits and . _ : - @, unique among the instances on one store",
                "bridges.toml:5:12: general.failover: `cluster` is not a failover mode: \"instance\" (one lease, one active instance) or \"network\" (a lease per network, the instances split the networks)",
            ],
        ),
        (
            "failover on the PostgreSQL store",
            format!(
                "[general]\nstore = \"postgres://db/x\"\nfailover_after = \"2500ms\"\ninstance_name = \"host-1\"\nfailover = \"network\"\n{NET}{NET2}{GATEWAY}"
            ),
            vec![],
        ),
        (
            "unknown top-level table",
            format!("[networks.x]\n{NET}{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:1:2: networks: unknown field `networks`, expected one of `general`, `network`, `gateway`, `identity`",
            ],
        ),
        (
            "unknown key in a network",
            format!("{NET}port = 6697\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:1: network.libera.port: unknown field `port`, expected one of `type`, `server`, `tls`, `tls_verify`, `tls_ca_file`, `nick`, `username`, `realname`, `contact`, `server_password`, `server_password_file`, `server_password_env`, `password`, `password_file`, `password_env`, `sasl_username`, `sasl_password`, `sasl_password_file`, `sasl_password_env`, `nickserv_password`, `nickserv_password_file`, `nickserv_password_env`, `nickserv_nick`, `flood_burst`, `flood_interval_ms`, `charset`, `relay_membership`, `rejoin_after_kick`, `parallel_bridges`, `puppets`, `puppet_nick_format`, `puppet_realname`, `webirc_password`, `webirc_password_file`, `webirc_password_env`, `puppet_idle_timeout`, `max_puppets`, `puppet_connect_rate`, `history`, `remote_nick_format`",
            ],
        ),
        (
            "IRC puppet keys out of range",
            format!(
                "{NET}puppets = true\nmax_puppets = 0\npuppet_idle_timeout = -5\n\
                 puppet_connect_rate = 5000\n{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:6:15: network.libera.max_puppets: `max_puppets` must be between 1 and 100000",
                "bridges.toml:7:23: network.libera.puppet_idle_timeout: `puppet_idle_timeout` must be between 1 and 31536000",
                "bridges.toml:8:23: network.libera.puppet_connect_rate: `puppet_connect_rate` must be between 1 and 1000",
            ],
        ),
        (
            "IRC puppet nick format without the nick",
            format!("{NET}puppets = true\npuppet_nick_format = \"[m]\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:6:22: network.libera.puppet_nick_format: `puppet_nick_format` must contain {NICK} (e.g. \"{NICK}[m]\"), or every person would ask for the same nick",
            ],
        ),
        (
            "IRC history neither auto nor off",
            format!("{NET}history = \"always\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:11: network.libera.history: `history = \"always\"`: expected \"auto\" or \"off\"",
            ],
        ),
        (
            "unknown IRC charset",
            format!("{NET}charset = \"klingon\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:11: network.libera.charset: unknown charset `klingon`; use a WHATWG label such as utf-8, latin1, iso-8859-15, windows-1251, koi8-r or shift_jis",
            ],
        ),
        (
            "IRC charset that is not ASCII-compatible",
            format!("{NET}charset = \"utf-16le\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:11: network.libera.charset: charset `utf-16le` is not ASCII-compatible, so IRC commands could not be read in it; use utf-8 or an 8-bit charset",
            ],
        ),
        (
            "IRC charset on a Matrix network",
            format!("{MX}charset = \"latin1\"\n{NET2}{MXGATEWAY}"),
            vec![
                "bridges.toml:6:11: network.mx.charset: `charset` is not a key of `matrix` networks (it belongs to `irc`); remove it",
            ],
        ),
        (
            "valid IRC charset",
            format!("{NET}charset = \"iso-8859-15\"\n{NET2}{GATEWAY}"),
            vec![],
        ),
        (
            "wrong type",
            format!("{NET}tls = \"yes\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:7: network.libera.tls: wrong type: found string \"yes\", expected a boolean",
            ],
        ),
        (
            "unknown network type",
            format!("[network.x]\ntype = \"slack\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:2:8: network.x.type: unknown value `slack`, expected one of `irc`, `mattermost`, `matrix`, `api` (valid network types: irc, mattermost, matrix, api)",
            ],
        ),
        (
            "api network: a bad listen, no token, a webhook without its secret",
            format!(
                "[network.api]\ntype = \"api\"\nlisten = \"localhost\"\n\
                 webhooks = [{{ name = \"grafana\", gateway = \"ops\" }}]\n{NET2}\
                 [[gateway]]\nname = \"ops\"\nchannels = [\n  {{ network = \"api\", channel = \"ops\" }},\n  \
                 {{ network = \"oftc\", channel = \"#b\" }},\n]\n"
            ),
            vec![
                "bridges.toml:2:8: network.api.token: missing key `token`: the bearer token API clients send (or `token_file` / `token_env`)",
                "bridges.toml:3:10: network.api.listen: `localhost` is not an address to listen on; expected `ip:port`, e.g. \"127.0.0.1:4242\"",
                "bridges.toml:4:13: network.api.webhooks.secret: a webhook needs `secret` (or `secret_file` / `secret_env`): what its sender puts in `?token=` or `Authorization: Bearer`",
            ],
        ),
        (
            "api network: a webhook posting into a channel no gateway links",
            format!(
                "[network.api]\ntype = \"api\"\nlisten = \"127.0.0.1:4242\"\ntoken = \"t\"\n\
                 webhooks = [{{ name = \"grafana\", gateway = \"alerts\", secret = \"s\" }}]\n{NET2}\
                 [[gateway]]\nname = \"ops\"\nchannels = [\n  {{ network = \"api\", channel = \"ops\" }},\n  \
                 {{ network = \"oftc\", channel = \"#b\" }},\n]\n"
            ),
            vec![
                "bridges.toml:5:43: network.api.webhooks.gateway: `alerts` is not a channel of `api` in any gateway: add `{ network = \"api\", channel = \"alerts\" }` to a gateway's channels",
            ],
        ),
        (
            "valid matrix network",
            format!("{MX}{NET2}{MXGATEWAY}"),
            vec![],
        ),
        (
            "matrix: missing homeserver, user and password",
            format!("[network.mx]\ntype = \"matrix\"\n{NET2}{MXGATEWAY}"),
            vec![
                "bridges.toml:2:8: network.mx.homeserver: missing key `homeserver`: a Matrix network needs `homeserver = \"https://matrix.example.org\"`",
                "bridges.toml:2:8: network.mx.user: missing key `user`: the bot's Matrix id, e.g. \"@bridge:example.org\"",
            ],
        ),
        (
            "matrix: no password or access token",
            format!(
                "[network.mx]\ntype = \"matrix\"\nhomeserver = \"https://m.org\"\nuser = \"@b:m.org\"\n{NET2}{MXGATEWAY}"
            ),
            vec![
                "bridges.toml:2:8: network.mx.password: a Matrix network needs `password` or `access_token` (or their `_file` / `_env` forms)",
            ],
        ),
        (
            "matrix: bad homeserver URL and user id",
            format!(
                "[network.mx]\ntype = \"matrix\"\nhomeserver = \"matrix.org\"\nuser = \"bridge\"\npassword = \"p\"\n{NET2}{MXGATEWAY}"
            ),
            vec![
                "bridges.toml:3:14: network.mx.homeserver: `matrix.org` is not a homeserver URL; expected `https://host[:port]`, e.g. \"https://matrix.example.org\"",
                "bridges.toml:4:8: network.mx.user: `bridge` is not a Matrix user id; expected `@name:server`, e.g. \"@bridge:example.org\"",
            ],
        ),
        (
            "matrix: password and access token both given twice",
            format!("{MX}access_token = \"t\"\naccess_token_env = \"SET_VAR\"\n{NET2}{MXGATEWAY}"),
            vec![
                "bridges.toml:7:20: network.mx.access_token: give `access_token` one way only: `access_token`, `access_token_file` or `access_token_env`",
            ],
        ),
        (
            "matrix appservice: valid, the bot and tokens implied",
            format!(
                "[network.mx]\ntype = \"matrix\"\nmode = \"appservice\"\nhomeserver = \"https://m.org\"\nserver_name = \"m.org\"\nlisten = \"127.0.0.1:9009\"\nurl = \"http://127.0.0.1:9009\"\nghost_format = \"br_{{NETWORK}}_{{NICK}}\"\n{NET2}{MXGATEWAY}"
            ),
            vec![],
        ),
        (
            "matrix appservice: missing keys, bad values, bot-mode keys",
            format!(
                "[network.mx]\ntype = \"matrix\"\nmode = \"appservice\"\nhomeserver = \"https://m.org\"\nlisten = \"localhost\"\nuser = \"@b:m.org\"\npassword = \"p\"\nghost_format = \"{{NETWORK}}\"\nsender_localpart = \"Bot\"\n{NET2}{MXGATEWAY}"
            ),
            vec![
                "bridges.toml:2:8: network.mx.server_name: missing key `server_name`: an application service needs its homeserver's server name, e.g. `server_name = \"example.org\"`",
                "bridges.toml:2:8: network.mx.url: missing key `url`: how the homeserver reaches `listen`, e.g. `url = \"http://127.0.0.1:9009\"`",
                "bridges.toml:5:10: network.mx.listen: `localhost` is not an address to listen on; expected `ip:port`, e.g. \"127.0.0.1:9009\"",
                "bridges.toml:6:8: network.mx.user: in `mode = \"appservice\"` the bridge's bot is `@<sender_localpart>:<server_name>`; remove `user`",
                "bridges.toml:7:12: network.mx.password: `password` is a key of the bot mode; in `mode = \"appservice\"` the bridge authenticates with `as_token`",
                "bridges.toml:8:16: network.mx.ghost_format: `{NETWORK}` does not contain `{NICK}`: every person would be the same ghost; e.g. \"{NETWORK}_{NICK}\"",
                "bridges.toml:9:20: network.mx.sender_localpart: `Bot` is not a Matrix localpart; expected lower-case letters, digits and `._=-/`, e.g. \"tribridge\"",
            ],
        ),
        (
            "matrix: an appservice key in bot mode, an unknown mode",
            format!("{MX}ghost_format = \"x_{{NICK}}\"\n{NET2}{MXGATEWAY}"),
            vec![
                "bridges.toml:6:16: network.mx.ghost_format: `ghost_format` is a key of `mode = \"appservice\"`; this network is a bot account (add `mode = \"appservice\"` or remove the key)",
            ],
        ),
        (
            "matrix: an unknown mode",
            format!("{MX}mode = \"puppet\"\n{NET2}{MXGATEWAY}"),
            vec![
                "bridges.toml:6:8: network.mx.mode: `puppet` is not a mode; expected \"bot\" (a bot account, the default) or \"appservice\" (an application service with ghost users)",
            ],
        ),
        (
            "matrix: the encryption keys",
            format!(
                "{MX}trust = \"cross-signed\"\ncross_signing = true\nreset_cross_signing = false\n{NET2}{MXGATEWAY}"
            ),
            vec![],
        ),
        (
            "matrix: an unknown trust level",
            format!("{MX}trust = \"verified\"\n{NET2}{MXGATEWAY}"),
            vec![
                "bridges.toml:6:9: network.mx.trust: `verified` is not a trust level; expected \"all-devices\" (share room keys with every device, the default) or \"cross-signed\" (only with devices their owner cross-signed)",
            ],
        ),
        (
            "matrix: an IRC key on a Matrix network",
            format!("{MX}nick = \"bot\"\n{NET2}{MXGATEWAY}"),
            vec![
                "bridges.toml:6:8: network.mx.nick: `nick` is not a key of `matrix` networks (it belongs to `irc`); remove it",
            ],
        ),
        (
            "media endpoint half configured",
            format!("[general]\nmedia_listen = \"localhost\"\n{NET}{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:2:16: general.media_listen: `media_listen` needs `media_public_url` (the URL IRC users reach it by)",
            ],
        ),
        (
            "media endpoint with a bad address and a URL that is not one",
            format!(
                "[general]\nmedia_listen = \"localhost\"\nmedia_public_url = \"b.org/media\"\n{NET}{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:2:16: general.media_listen: `localhost` is not an address and port, e.g. \"127.0.0.1:8090\"",
                "bridges.toml:3:20: general.media_public_url: `b.org/media` is not a URL; expected e.g. \"https://bridge.example.org/media\"",
            ],
        ),
        (
            "a metrics endpoint that is not an address",
            format!("[general]\nmetrics_listen = \"localhost:metrics\"\n{NET}{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:2:18: general.metrics_listen: `localhost:metrics` is not an address and port, e.g. \"127.0.0.1:9184\"",
            ],
        ),
        (
            "the media endpoint is not a Matrix network key",
            format!("{MX}media_listen = \"127.0.0.1:8090\"\n{NET2}{MXGATEWAY}"),
            vec![
                "bridges.toml:6:1: network.mx.media_listen: unknown field `media_listen`, expected one of `type`, `homeserver`, `user`, `password`, `password_file`, `password_env`, `access_token`, `access_token_file`, `access_token_env`, `device_name`, `display_name`, `relay_membership`, `trust`, `cross_signing`, `reset_cross_signing`, `parallel_bridges`, `mode`, `server_name`, `listen`, `url`, `as_token`, `as_token_file`, `as_token_env`, `hs_token`, `hs_token_file`, `hs_token_env`, `sender_localpart`, `ghost_format`, `ghost_displayname`, `remote_nick_format`",
            ],
        ),
        (
            "file limits out of range",
            format!(
                "[general]\nmax_file_size_mb = -1\nfile_retention_days = 0\n{NET}{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:2:20: general.max_file_size_mb: `max_file_size_mb` must be between 0 (never copy files) and 4096",
                "bridges.toml:3:23: general.file_retention_days: `file_retention_days` must be between 1 and 3650",
            ],
        ),
        (
            "reconnect cap out of range",
            format!("[general]\nreconnect_max_seconds = 0\n{NET}{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:2:25: general.reconnect_max_seconds: `reconnect_max_seconds` must be between 1 and 3600",
            ],
        ),
        (
            "irc: a Matrix key on an IRC network",
            format!("{NET}homeserver = \"https://m.org\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:14: network.libera.homeserver: `homeserver` is not a key of `irc` networks (it belongs to `matrix`); remove it",
            ],
        ),
        (
            "matrix: a channel that is not a room",
            format!(
                "{MX}{NET2}[[gateway]]\nname = \"g\"\nchannels = [\n  {{ network = \"mx\", channel = \"#room\" }},\n  {{ network = \"oftc\", channel = \"#b\" }},\n]\n"
            ),
            vec![
                "bridges.toml:13:31: gateway[0].channels[0].channel: `#room` is not a Matrix room: give an alias (`#room:server`) or a room id (`!id` or `!id:server`)",
            ],
        ),
        (
            "valid mattermost network, token from the environment, channel by id",
            format!(
                "{NET}[network.civi]\ntype = \"mattermost\"\nurl = \"https://chat.example.org/\"\nteam = \"civicrm\"\ntoken_env = \"SET_VAR\"\n[[gateway]]\nname = \"g\"\nchannels = [\n  {{ network = \"libera\", channel = \"#a\" }},\n  {{ network = \"civi\", channel = \"id:abcdefghijklmnopqrstuvwxyz\" }},\n]\n"
            ),
            vec![],
        ),
        (
            "mattermost network without url, team or credentials",
            format!("{NET}[network.oftc]\ntype = \"mattermost\"\n{GATEWAY}"),
            vec![
                "bridges.toml:6:8: network.oftc.url: missing key `url`: a Mattermost network needs `url = \"https://chat.example.org\"`",
                "bridges.toml:6:8: network.oftc.team: missing key `team`: the team's URL name, e.g. `team = \"civicrm\"`",
            ],
        ),
        (
            "mattermost url that is not a URL, and no credentials",
            format!(
                "{NET}[network.oftc]\ntype = \"mattermost\"\nurl = \"chat.example.org\"\nteam = \"civicrm\"\n{GATEWAY}"
            ),
            vec![
                "bridges.toml:7:7: network.oftc.url: `chat.example.org` is not a server URL; expected `https://host[:port][/path]`, e.g. \"https://chat.example.org\"",
            ],
        ),
        (
            "mattermost without credentials",
            format!(
                "{NET}[network.oftc]\ntype = \"mattermost\"\nurl = \"https://chat.example.org\"\nteam = \"civicrm\"\n{GATEWAY}"
            ),
            vec![
                "bridges.toml:6:8: network.oftc.token: missing credentials: give `token` (or `token_file` / `token_env`) or `login` + `password`",
            ],
        ),
        (
            "mattermost with token and login",
            format!(
                "{NET}[network.oftc]\ntype = \"mattermost\"\nurl = \"https://chat.example.org\"\nteam = \"civicrm\"\ntoken = \"t\"\nlogin = \"bot\"\npassword = \"pw\"\n{GATEWAY}"
            ),
            vec![
                "bridges.toml:10:9: network.oftc.login: give either `token` or `login` + `password`, not both",
            ],
        ),
        (
            "mattermost login without password, and an IRC key",
            format!(
                "{NET}[network.oftc]\ntype = \"mattermost\"\nurl = \"https://chat.example.org\"\nteam = \"civicrm\"\nlogin = \"bot\"\nnick = \"x\"\n{GATEWAY}"
            ),
            vec![
                "bridges.toml:9:9: network.oftc.password: `login` needs `password` (or `password_file` / `password_env`)",
                "bridges.toml:10:8: network.oftc.nick: `nick` is not a key of `mattermost` networks (it belongs to `irc`); remove it",
            ],
        ),
        (
            "a mattermost key on an IRC network",
            format!("{NET}team = \"civicrm\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:8: network.libera.team: `team` is not a key of `irc` networks (it belongs to `mattermost`); remove it",
            ],
        ),
        (
            "a mattermost channel that is neither a name nor an id",
            format!(
                "{NET}[network.civi]\ntype = \"mattermost\"\nurl = \"https://chat.example.org\"\nteam = \"civicrm\"\ntoken = \"t\"\n[[gateway]]\nname = \"g\"\nchannels = [\n  {{ network = \"libera\", channel = \"#a\" }},\n  {{ network = \"civi\", channel = \"Town Square\" }},\n]\n"
            ),
            vec![
                "bridges.toml:14:33: gateway[0].channels[1].channel: `Town Square` is not a Mattermost channel: give its URL name (lowercase letters, digits, `-`, `_`, e.g. \"town-square\") or `id:` and its 26-character id",
            ],
        ),
        (
            "missing server",
            format!("[network.libera]\ntype = \"irc\"\nnick = \"x\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:2:8: network.libera.server: missing key `server`: an IRC network needs `server = \"host:port\"`",
            ],
        ),
        (
            "server without port",
            format!(
                "[network.libera]\ntype = \"irc\"\nserver = \"irc.libera.chat\"\nnick = \"x\"\n{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:3:10: network.libera.server: `irc.libera.chat` has no port; expected `host:port`, e.g. \"irc.libera.chat:6697\" or \"[::1]:6667\"",
            ],
        ),
        (
            "bad port",
            format!(
                "[network.libera]\ntype = \"irc\"\nserver = \"irc.libera.chat:66970\"\nnick = \"x\"\n{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:3:10: network.libera.server: `66970` is not a port number (1-65535); expected `host:port`, e.g. \"irc.libera.chat:6697\" or \"[::1]:6667\"",
            ],
        ),
        (
            "missing nick",
            format!(
                "[network.libera]\ntype = \"irc\"\nserver = \"irc.libera.chat:6697\"\n{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:2:8: network.libera.nick: missing key `nick`: the nick the bridge uses on this network",
            ],
        ),
        (
            "invalid nick",
            format!(
                "[network.libera]\ntype = \"irc\"\nserver = \"irc.libera.chat:6697\"\nnick = \"9 lives\"\n{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:4:8: network.libera.nick: an IRC nick starts with a letter or one of []\\`_^{|} and contains no spaces, commas or control characters",
            ],
        ),
        (
            "invalid network id",
            format!(
                "[network.\"li bera\"]\ntype = \"irc\"\nserver = \"a:1\"\nnick = \"x\"\n{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:1:10: network.li bera: network ids use letters, digits, `-` and `_` only",
                "bridges.toml:12:15: gateway[0].channels[0].network: unknown network `libera`; defined networks: li bera, oftc",
            ],
        ),
        (
            "duplicate network",
            format!("{NET}{NET}{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:1: (file): invalid table header\nduplicate key `libera` in table `network`",
            ],
        ),
        (
            "unreadable secret file",
            format!("{NET}password_file = \"secret.txt\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:17: network.libera.password_file: cannot read secret file `/etc/tribridge/secret.txt`: No such file or directory (os error 2)",
            ],
        ),
        (
            "secret from an unset variable",
            format!("{NET}sasl_password_env = \"UNSET_VAR\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:21: network.libera.sasl_password_env: environment variable `UNSET_VAR` is not set",
            ],
        ),
        (
            "secret given twice",
            format!(
                "{NET}nickserv_password = \"a\"\nnickserv_password_env = \"SET_VAR\"\n{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:6:25: network.libera.nickserv_password: give `nickserv_password` one way only: `nickserv_password`, `nickserv_password_file` or `nickserv_password_env`",
            ],
        ),
        (
            "sasl user without password",
            format!("{NET}sasl_username = \"me\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:17: network.libera.sasl_username: sasl_username needs sasl_password (or sasl_password_file / sasl_password_env)",
            ],
        ),
        (
            "tls_verify without tls",
            format!("{NET}tls = false\ntls_verify = false\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:7: network.libera.tls_verify: `tls_verify` has no effect with `tls = false`; remove it or turn TLS on",
            ],
        ),
        (
            "flood burst out of range",
            format!("{NET}flood_burst = 0\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:15: network.libera.flood_burst: `flood_burst` must be between 1 and 1000",
            ],
        ),
        (
            "unknown placeholder",
            format!("[general]\nremote_nick_format = \"<{{USER}}> \"\n{NET}{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:2:22: general.remote_nick_format: unknown placeholder `{USER}`; valid: {NICK} {NOPINGNICK} {NETWORK} {PROTOCOL} {CHANNEL} {GATEWAY}",
            ],
        ),
        (
            "unknown network in a gateway",
            format!("{NET}{GATEWAY}"),
            vec![
                "bridges.toml:9:15: gateway[0].channels[1].network: unknown network `oftc`; defined networks: libera",
            ],
        ),
        (
            "gateway with one channel",
            format!(
                "{NET}[[gateway]]\nname = \"g\"\nchannels = [ {{ network = \"libera\", channel = \"#a\" }} ]\n"
            ),
            vec![
                "bridges.toml:5:1: gateway[0].channels: gateway `g` has 1 channel(s); a gateway links at least two channels",
            ],
        ),
        (
            "duplicate gateway names",
            format!("{NET}{NET2}{GATEWAY}{GATEWAY}"),
            vec![
                "bridges.toml:16:8: gateway[1].name: duplicate gateway name `g`: every gateway needs its own name",
            ],
        ),
        (
            "same channel twice in a gateway",
            format!(
                "{NET}{NET2}[[gateway]]\nname = \"g\"\nchannels = [\n  {{ network = \"libera\", channel = \"#a\" }},\n  {{ network = \"libera\", channel = \"#A\" }},\n]\n"
            ),
            vec![
                "bridges.toml:13:35: gateway[0].channels[1].channel: `#A` on `libera` is listed twice in this gateway",
            ],
        ),
        (
            "not an IRC channel",
            format!(
                "{NET}{NET2}[[gateway]]\nname = \"g\"\nchannels = [\n  {{ network = \"libera\", channel = \"a\" }},\n  {{ network = \"oftc\", channel = \"#b\" }},\n]\n"
            ),
            vec![
                "bridges.toml:12:35: gateway[0].channels[0].channel: `a` is not an IRC channel name: it starts with # or & and has no spaces, commas or control characters",
            ],
        ),
        (
            "bad direction",
            format!(
                "{NET}{NET2}[[gateway]]\nname = \"g\"\nchannels = [\n  {{ network = \"libera\", channel = \"#a\", direction = \"both\" }},\n  {{ network = \"oftc\", channel = \"#b\" }},\n]\n"
            ),
            vec![
                "bridges.toml:12:53: gateway[0].channels[0].direction: unknown value `both`, expected one of `in`, `out`, `inout`",
            ],
        ),
        (
            "gateway that relays nothing",
            format!(
                "{NET}{NET2}[[gateway]]\nname = \"g\"\nchannels = [\n  {{ network = \"libera\", channel = \"#a\", direction = \"out\" }},\n  {{ network = \"oftc\", channel = \"#b\", direction = \"out\" }},\n]\n"
            ),
            vec![
                "bridges.toml:9:1: gateway[0].channels: gateway `g` relays nothing: it needs one channel with direction in or inout and another with out or inout",
            ],
        ),
        (
            "gateway: edit policies",
            format!("{NET}{NET2}{GATEWAY}edit_policy = \"diff\"\n"),
            vec![],
        ),
        (
            "gateway: unknown edit policy",
            format!("{NET}{NET2}{GATEWAY}edit_policy = \"sometimes\"\n"),
            vec![
                "bridges.toml:15:15: gateway[0].edit_policy: unknown value `sometimes`, expected one of `off`, `corrected`, `diff`",
            ],
        ),
        (
            "gateway: IRC replies",
            format!("{NET}{NET2}{GATEWAY}irc_replies = \"reply\"\n"),
            vec![],
        ),
        (
            "gateway: unknown IRC replies",
            format!("{NET}{NET2}{GATEWAY}irc_replies = \"thread\"\n"),
            vec![
                "bridges.toml:15:15: gateway[0].irc_replies: unknown value `thread`, expected `mention` or `reply`",
            ],
        ),
        (
            "gateway: original time after a negative delay",
            format!("{NET}{NET2}{GATEWAY}original_time_after = -5\n"),
            vec![
                "bridges.toml:15:23: gateway[0].original_time_after: `original_time_after` is a number of seconds between 1 and 31536000 (a year), or 0 to never show the original time",
            ],
        ),
        (
            "valid parallel bridges",
            format!(
                "{NET}parallel_bridges = [\"tribridge2\", \"other_bridge\"]\n{NET2}{GATEWAY}"
            ),
            vec![],
        ),
        (
            "parallel bridges not a list",
            format!("{NET}parallel_bridges = \"tribridge2\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:20: network.libera.parallel_bridges: wrong type: found string \"tribridge2\", expected a sequence",
            ],
        ),
        (
            "parallel bridges: an empty account, this bridge's own nick, a repeated one",
            format!(
                "{NET}parallel_bridges = [\"\", \"TriBridge\", \"b2\", \"B2\"]\n{NET2}{GATEWAY}"
            ),
            vec![
                "bridges.toml:5:21: network.libera.parallel_bridges: an empty account; list the other bridges' accounts on this network",
                "bridges.toml:5:25: network.libera.parallel_bridges: `TriBridge` is this bridge's own account; list the other bridges'",
                "bridges.toml:5:44: network.libera.parallel_bridges: `B2` is listed twice",
            ],
        ),
        (
            "parallel bridges: not a nick, not a Matrix id",
            format!(
                "{NET}parallel_bridges = [\"@b2:example.org\"]\n{MX}parallel_bridges = [\"b2\"]\n{NET2}{MXGATEWAY}"
            ),
            vec![
                "bridges.toml:5:21: network.libera.parallel_bridges: `@b2:example.org` is not an IRC nick; list the other bridges' nicks, e.g. [\"tribridge2\"]",
                "bridges.toml:11:21: network.mx.parallel_bridges: `b2` is not a Matrix user id; list the other bridges' ids (`@name:server`), e.g. [\"@bridge2:example.org\"]",
            ],
        ),
        (
            "parallel bridges: neither a Mattermost username nor a user id",
            "[network.civi]\ntype = \"mattermost\"\nurl = \"https://chat.example.org\"\nteam = \"t\"\ntoken = \"x\"\nparallel_bridges = [\"2bridge\", \"@bridge2\", \"kx4cbm3y5pg1mfdsh8yj5wnq7r\"]\n{NET}[[gateway]]\nname = \"g\"\nchannels = [\n  { network = \"libera\", channel = \"#a\" },\n  { network = \"civi\", channel = \"town\" },\n]\n".replace("{NET}", NET),
            vec![
                "bridges.toml:6:21: network.civi.parallel_bridges: `2bridge` is neither a Mattermost username (3 to 22 letters, digits, `.`, `-` or `_`, starting with a letter) nor a user id (26 letters and digits)",
            ],
        ),
        (
            "IRC server password under both its names",
            format!("{NET}password = \"a\"\nserver_password = \"b\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:12: network.libera.password: `password` is the old name of `server_password`; give only `server_password`",
            ],
        ),
        (
            "IRC realname naming a contact that is not set",
            format!("{NET}realname = \"bridge, ask {{CONTACT}}\"\n{NET2}{GATEWAY}"),
            vec![
                "bridges.toml:5:12: network.libera.realname: `realname` uses {CONTACT} but `contact` is not set; add `contact = \"...\"` (who runs the bot) or remove the placeholder",
            ],
        ),
        (
            "remote_nick_format on a network and a gateway: placeholders checked, a string",
            format!(
                "{NET}remote_nick_format = \"<{{NICK}}@{{HOST}}> \"\n{NET2}remote_nick_format = 3\n[[gateway]]\nname = \"g\"\nremote_nick_format = \"{{NOPE}}\"\nchannels = [\n  {{ network = \"libera\", channel = \"#a\" }},\n  {{ network = \"oftc\", channel = \"#b\" }},\n]\n"
            ),
            vec![
                "bridges.toml:5:22: network.libera.remote_nick_format: unknown placeholder `{HOST}`; valid: {NICK} {NOPINGNICK} {NETWORK} {PROTOCOL} {CHANNEL} {GATEWAY}",
                "bridges.toml:10:22: network.oftc.remote_nick_format: wrong type: `remote_nick_format` is a string, e.g. \"<{NICK}> \"",
                "bridges.toml:13:22: gateway[0].remote_nick_format: unknown placeholder `{NOPE}`; valid: {NICK} {NOPINGNICK} {NETWORK} {PROTOCOL} {CHANNEL} {GATEWAY}",
            ],
        ),
        (
            "identities: unknown network, account grammar, an account twice, one account, \
             a password given twice or without an IRC nick",
            format!(
                "{NET}{NET2}{MX}{GATEWAY}\
                 [[identity]]\nname = \"Alice\"\nlibera = \"alice\"\nnope = \"alice\"\nmx = \"alice\"\n\
                 [[identity]]\nlibera = \"ALICE\"\noftc = \"9bad\"\n\
                 [[identity]]\nlibera = \"bob\"\noftc = \"bob\"\nnickserv_password = \"x\"\nnickserv_password_env = \"SET_VAR\"\n\
                 [[identity]]\noftc = \"carol\"\n\
                 [[identity]]\nname = 3\nmx = \"@dan:example.org\"\nlibera = \"dan\"\n"
            ),
            vec![
                "bridges.toml:23:1: identity[0].nope: unknown network `nope`: the keys of an identity are configured network ids (libera, mx, oftc) and `name`, `nickserv_password`, `nickserv_password_file`, `nickserv_password_env`",
                "bridges.toml:24:6: identity[0].mx: `alice` is not a Matrix user id: give it as `@name:server`",
                "bridges.toml:26:10: identity[1].libera: `ALICE` of `libera` is already in identity[0]: an account belongs to one person",
                "bridges.toml:27:8: identity[1].oftc: `9bad` is not an IRC nick: letters, digits and `[]\\`_^{|}-`, not starting with a digit or `-`",
                "bridges.toml:32:25: identity[2].nickserv_password: give `nickserv_password` one way only: `nickserv_password`, `nickserv_password_file` or `nickserv_password_env`",
                "bridges.toml:33:1: identity[3]: an identity links one person's accounts on at least two networks: give `<network id> = \"<account there>\"` for each",
                "bridges.toml:36:8: identity[4].name: wrong type: `name` is a string (the one name the other networks show)",
            ],
        ),
        (
            "TOML syntax error",
            format!("{NET}{NET2}[[gateway]\n"),
            vec!["bridges.toml:9:10: (file): invalid table header\nexpected `.`, `]]`"],
        ),
    ]
}

#[test]
fn every_error_class_has_its_exact_message() {
    let mut failures = Vec::new();
    for (name, text, expected) in cases() {
        let got = check(&text);
        if got != expected {
            failures.push(format!(
                "{name}:\n  expected {expected:#?}\n  got      {got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn secrets_come_from_files_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pass"), "s3cret\n").unwrap();
    let text =
        format!("{NET}password_file = \"pass\"\nsasl_password_env = \"SET_VAR\"\n{NET2}{GATEWAY}");
    let env = vec![("SET_VAR".to_owned(), "from-env".to_owned())];
    let config = tribridge::config::parse(&text, dir.path(), &env).unwrap();
    let Some(irc) = config.networks[0].settings_as::<tribridge::connector::irc::IrcConfig>() else {
        panic!("an IRC network");
    };
    assert_eq!(irc.server_password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(irc.sasl_password.as_ref().unwrap().expose(), "from-env");
    // Debug output never shows a secret.
    assert!(!format!("{config:?}").contains("s3cret"));
    assert!(!format!("{config:?}").contains("from-env"));
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .args(args)
        .output()
        .expect("run tribridge");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/bridges.toml.example");
    let (code, stdout, stderr) = cli(&["check", "--config", example]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("OK (5 networks, 2 gateways)"), "{stdout}");
}

#[test]
fn check_rejects_a_broken_file_with_located_errors_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridges.toml");
    std::fs::write(&path, format!("{NET}tls = \"yes\"\n{GATEWAY}")).unwrap();
    let path_text = path.display().to_string();
    let (code, stdout, stderr) = cli(&["check", "--config", &path_text]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "{path_text}:5:7: network.libera.tls: wrong type: found string \"yes\", expected a boolean"
        )
    );
    let (code, _, stderr) = cli(&["check", "--config", "/nonexistent/bridges.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("/nonexistent/bridges.toml: cannot read the configuration file"),
        "{stderr}"
    );
}

#[test]
fn version_is_printed() {
    let (code, stdout, _) = cli(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("tribridge {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_store_url_with_its_password_inline_that_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridges.toml");
    let path_text = path.display().to_string();
    let config = |url: &str| {
        format!("[general]\nstore = \"{url}\"\n{NET}{NET2}{GATEWAY}retention_days = 0\n")
    };
    std::fs::write(&path, config("postgres://bridge:hunter2@db.example/x")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = cli(&["check", "--config", &path_text]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "warning: {path_text} holds secrets inline (general.store) and is \
             readable by other users (mode 0644); make it private (chmod 600) or move the \
             secrets to `*_file` or `*_env`"
        )
    );
    // A URL without a password holds no secret.
    std::fs::write(&path, config("postgres://bridge@db.example/x")).unwrap();
    let (code, _, stderr) = cli(&["check", "--config", &path_text]);
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn a_file_holding_a_secret_inline_that_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridges.toml");
    let path_text = path.display().to_string();
    std::fs::write(
        &path,
        format!("{NET}sasl_password = \"hunter2\"\n{NET2}{GATEWAY}"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = cli(&["check", "--config", &path_text]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "warning: {path_text} holds secrets inline (network.libera.sasl_password) and is \
             readable by other users (mode 0644); make it private (chmod 600) or move the \
             secrets to `*_file` or `*_env`"
        )
    );
    assert!(!stderr.contains("hunter2"));
    // Private: no warning. Readable, but the secret comes from a file: no warning either.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, stderr) = cli(&["check", "--config", &path_text]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    std::fs::write(dir.path().join("pass"), "hunter2\n").unwrap();
    std::fs::write(
        &path,
        format!("{NET}sasl_password_file = \"pass\"\n{NET2}{GATEWAY}"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = cli(&["check", "--config", &path_text]);
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn check_warns_of_tls_on_the_plain_text_port_plain_http_and_the_old_password_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridges.toml");
    let path_text = path.display().to_string();
    let text = "[network.libera]\ntype = \"irc\"\nserver = \"irc.example.org:6667\"\nnick = \"tribridge\"\n\
        password_env = \"PASS_VAR\"\n\
        [network.oftc]\ntype = \"irc\"\nserver = \"irc.oftc.net:6667\"\ntls = true\nnick = \"tribridge\"\n\
        [network.plain]\ntype = \"irc\"\nserver = \"irc.example.org:6667\"\ntls = false\nnick = \"tribridge\"\n\
        [network.mx]\ntype = \"matrix\"\nhomeserver = \"http://matrix.example.org\"\nuser = \"@b:example.org\"\naccess_token_env = \"PASS_VAR\"\n\
        [network.local]\ntype = \"matrix\"\nhomeserver = \"http://127.0.0.1:8008\"\nuser = \"@b:example.org\"\naccess_token_env = \"PASS_VAR\"\n\
        [network.mm]\ntype = \"mattermost\"\nurl = \"http://chat.example.org:8065\"\nteam = \"t\"\ntoken_env = \"PASS_VAR\"\n\
        [network.mmlocal]\ntype = \"mattermost\"\nurl = \"http://localhost:8065\"\nteam = \"t\"\ntoken_env = \"PASS_VAR\"\n\
        [[gateway]]\nname = \"g\"\nchannels = [\n  { network = \"libera\", channel = \"#a\" },\n  { network = \"oftc\", channel = \"#b\" },\n\
          { network = \"plain\", channel = \"#c\" },\n  { network = \"mx\", channel = \"#a:example.org\" },\n\
          { network = \"local\", channel = \"#b:example.org\" },\n  { network = \"mm\", channel = \"a\" },\n\
          { network = \"mmlocal\", channel = \"b\" },\n]\n";
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .args(["check", "--config", &path_text])
        .env("PASS_VAR", "secret")
        .output()
        .expect("run tribridge");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Warnings, not errors: the file is valid.
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("OK (7 networks, 1 gateways)"), "{stdout}");
    let want = [
        format!(
            "warning: {path_text}:3:10: network.libera.server: port 6667 is IRC's plain-text port, \
             but TLS is on (`tls` defaults to true): set `tls = false` for a plain-text server, or \
             use the server's TLS port (usually 6697)"
        ),
        format!(
            "warning: {path_text}:5:16: network.libera.password_env: `password_env` is deprecated \
             on IRC networks (it is the server password, PASS, not an account's); rename it \
             `server_password_env`"
        ),
        format!(
            "warning: {path_text}:8:10: network.oftc.server: port 6667 is IRC's plain-text port, \
             but TLS is on: set `tls = false` for a plain-text server, or use the server's TLS \
             port (usually 6697)"
        ),
        format!(
            "warning: {path_text}:18:14: network.mx.homeserver: `http://matrix.example.org` is \
             plain http:// to another machine: the login and every message cross the network \
             unencrypted; use https://"
        ),
        format!(
            "warning: {path_text}:28:7: network.mm.url: `http://chat.example.org:8065` is plain \
             http:// to another machine: the login and every message cross the network \
             unencrypted; use https://"
        ),
    ];
    assert_eq!(stderr.lines().collect::<Vec<_>>(), want, "{stderr}");
    // The old name still works.
    let env = vec![("PASS_VAR".to_owned(), "secret".to_owned())];
    let config = tribridge::config::parse(text, dir.path(), &env).unwrap();
    let Some(irc) = config.networks[0].settings_as::<tribridge::connector::irc::IrcConfig>() else {
        panic!("an IRC network");
    };
    assert_eq!(irc.server_password.as_ref().unwrap().expose(), "secret");
}

#[test]
fn the_irc_realname_can_name_the_bots_admin() {
    let realname = |extra: &str| {
        let text = format!("{NET}{extra}{NET2}{GATEWAY}");
        let config = tribridge::config::parse(&text, Path::new("/etc"), &[]).unwrap();
        config.networks[0]
            .settings_as::<tribridge::connector::irc::IrcConfig>()
            .unwrap()
            .realname
            .clone()
    };
    assert_eq!(realname(""), "tribridge relay bot");
    assert_eq!(
        realname("contact = \"ops@example.org\"\n"),
        "tribridge relay bot (admin: ops@example.org)"
    );
    assert_eq!(
        realname("contact = \"alice\"\nrealname = \"CiviCRM bridge, ask {CONTACT}\"\n"),
        "CiviCRM bridge, ask alice"
    );
    assert_eq!(realname("realname = \"just a bot\"\n"), "just a bot");
}

/// Every fenced TOML snippet of `text` (a Markdown file): (line of its fence, its text). A
/// fence without a language fails the test: TOML must not hide in an unchecked block.
fn toml_snippets(name: &str, text: &str) -> Vec<(usize, String)> {
    let mut snippets = Vec::new();
    let mut open: Option<(usize, bool, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let Some(tag) = line.trim_start().strip_prefix("```") else {
            if let Some((_, _, body)) = open.as_mut() {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        };
        match open.take() {
            Some((start, true, body)) => snippets.push((start, body)),
            Some(_) => {}
            None => {
                assert!(
                    !tag.trim().is_empty(),
                    "{name}:{}: a fenced block without a language; tag it (```toml is checked, \
                     ```text is not)",
                    index + 1
                );
                open = Some((index + 1, tag.trim() == "toml", String::new()));
            }
        }
    }
    assert!(open.is_none(), "{name}: a fenced block is not closed");
    snippets
}

/// `tribridge check` on `text`, written in a folder of its own where every relative `*_file`
/// secret it names exists and every `*_env` variable is set (documentation ships no secrets):
/// (exit code, what it printed).
fn check_snippet(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tribridge"));
    let document: toml::Table = toml::from_str(text).unwrap_or_default();
    let networks = document.get("network").and_then(toml::Value::as_table);
    for section in networks.into_iter().flat_map(|n| n.values()) {
        for (key, value) in section.as_table().into_iter().flatten() {
            let Some(value) = value.as_str() else {
                continue;
            };
            if key.ends_with("_file") && key != "tls_ca_file" {
                assert!(
                    Path::new(value).is_relative(),
                    "`{key} = \"{value}\"`: documentation names secret files relative to the \
                     configuration's folder"
                );
                std::fs::write(dir.path().join(value), "placeholder\n").unwrap();
            } else if key.ends_with("_env") {
                command.env(value, "placeholder");
            }
        }
    }
    let path = dir.path().join("bridges.toml");
    std::fs::write(&path, text).unwrap();
    // Private, as a file holding secrets should be (else `check` rightly warns).
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let output = command
        .args(["check", "--config", &path.display().to_string()])
        .output()
        .expect("run tribridge");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Every TOML snippet of the README, and the shipped example as a whole, passes `tribridge
/// check` with no warning. A snippet that shows part of a file says which complete example it
/// extends in its first line (`# extends: bridges.toml.example`) and is checked appended to it;
/// any other snippet is checked alone. None is skipped.
#[test]
fn every_toml_snippet_of_the_readme_and_the_example_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("bridges.toml.example")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut checked = vec![("bridges.toml.example".to_owned(), example.clone())];
    for (line, snippet) in toml_snippets("README.md", &readme) {
        let first = snippet.lines().next().unwrap_or_default();
        let whole = match first.strip_prefix("# extends: ") {
            Some("bridges.toml.example") => format!("{example}\n{snippet}"),
            Some(other) => panic!("README.md:{line}: extends unknown example `{other}`"),
            None => snippet,
        };
        checked.push((format!("README.md:{line}"), whole));
    }
    assert!(checked.len() >= 3, "snippets found: {}", checked.len());
    let mut failures = Vec::new();
    for (place, text) in &checked {
        let (code, printed) = check_snippet(text);
        if code != 0 || printed.contains("warning") {
            failures.push(format!("{place}: exit {code}\n{printed}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every key `bridges.toml.example` shows commented out (`# key = value`) is a key of the
/// section it stands in: uncommented alone, the real validator does not call it unknown (other
/// complaints, such as two forms of one secret, are not this test's business).
#[test]
fn every_key_commented_out_in_the_example_is_a_key_of_its_section() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("bridges.toml.example")).unwrap();
    let lines: Vec<&str> = example.lines().collect();
    let env = vec![
        ("LIBERA_SASL_PASSWORD".to_owned(), "p".to_owned()),
        ("MATRIX_TOKEN".to_owned(), "t".to_owned()),
    ];
    let mut tried = 0;
    let mut unknown = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let Some((key, _)) = rest.split_once(" = ") else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        tried += 1;
        let mut edited = lines.clone();
        edited[index] = rest;
        let text = edited.join("\n");
        let Err(issues) = tribridge::config::parse(&text, Path::new("/etc/tribridge"), &env) else {
            continue;
        };
        for issue in issues {
            if issue.message.contains(&format!("unknown field `{key}`"))
                || issue.message.contains(&format!("`{key}` is not a key of"))
            {
                unknown.push(format!(
                    "bridges.toml.example:{}: {}",
                    index + 1,
                    issue.message
                ));
            }
        }
    }
    assert!(tried >= 20, "only {tried} commented-out keys found");
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}

#[test]
fn an_identity_links_accounts_with_one_name_and_a_nickserv_password() {
    let text = format!(
        "{NET}{NET2}{MX}{GATEWAY}[[identity]]\nname = \"Alice\"\nlibera = \"alice\"\n\
         mx = \"@alice:example.org\"\nnickserv_password_env = \"SET_VAR\"\n"
    );
    let env = vec![("SET_VAR".to_owned(), "from-env".to_owned())];
    let config = tribridge::config::parse(&text, Path::new("/etc/tribridge"), &env).unwrap();
    let [alice] = config.identities.as_slice() else {
        panic!("one identity: {:?}", config.identities);
    };
    assert_eq!(alice.name.as_deref(), Some("Alice"));
    assert_eq!(
        alice.accounts,
        vec![
            ("libera".to_owned(), "alice".to_owned()),
            ("mx".to_owned(), "@alice:example.org".to_owned())
        ]
    );
    assert_eq!(
        alice
            .nickserv_password
            .as_ref()
            .map(tribridge::config::Secret::expose),
        Some("from-env")
    );
    assert!(!format!("{config:?}").contains("from-env"));
}
