//! The validation of one `[network.X]` section, handed by [`crate::config`] to the connector its
//! `type` names. The connector deserialises the section into its own raw serde type
//! ([`Section::read`]) and checks it, reporting each problem at its place in the file; the
//! configuration turns the byte offsets into `file:line:column` and key paths.
//!
//! Invariants: a problem is reported at the value (or, for a missing key, at the section's
//! `type`), with the dotted key path and what would be valid; a secret's value never shows in
//! an issue or in `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;

/// One problem found in a section, at a byte offset of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionIssue {
    /// Byte offset in the file.
    pub offset: usize,
    /// The dotted key path; `None` for an error of the file's shape, whose path the
    /// configuration finds from the offset.
    pub key: Option<String>,
    /// What is wrong and what would be valid.
    pub message: String,
    /// An error of the file's shape (unknown key, wrong type): like a TOML syntax error, it is
    /// reported alone.
    pub fatal: bool,
}

/// One `[network.X]` section being validated.
pub struct Section<'a> {
    id: &'a str,
    key: String,
    type_offset: usize,
    base: &'a Path,
    env: &'a [(String, String)],
    value: Option<toml_edit::Value>,
    issues: Vec<SectionIssue>,
    warnings: Vec<SectionIssue>,
}

impl<'a> Section<'a> {
    /// The section of network `id`, whose `type` is at `type_offset`; `value` is its table with
    /// the keys its type does not accept already taken out (and reported). `base` anchors
    /// relative paths; `env` is the process environment.
    #[must_use]
    pub fn new(
        id: &'a str,
        type_offset: usize,
        base: &'a Path,
        env: &'a [(String, String)],
        value: toml_edit::Value,
    ) -> Self {
        Self {
            id,
            key: format!("network.{id}"),
            type_offset,
            base,
            env,
            value: Some(value),
            issues: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The network's id.
    #[must_use]
    pub fn id(&self) -> &str {
        self.id
    }

    /// The section's key path, `network.<id>`.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Where the section's `type` is (the place of a missing key).
    #[must_use]
    pub fn type_offset(&self) -> usize {
        self.type_offset
    }

    /// The folder relative paths are relative to.
    #[must_use]
    pub fn base(&self) -> &Path {
        self.base
    }

    /// Whether a problem was reported in this section (then it yields no settings).
    #[must_use]
    pub fn has_issues(&self) -> bool {
        !self.issues.is_empty()
    }

    /// The issues reported, in the order they were found.
    #[must_use]
    pub fn into_issues(self) -> Vec<SectionIssue> {
        self.issues
    }

    /// The warnings given (the section is valid despite them), in the order they were found;
    /// taken, so a second call returns none.
    pub fn take_warnings(&mut self) -> Vec<SectionIssue> {
        std::mem::take(&mut self.warnings)
    }

    /// Warn about key `name` of this section, at `offset`: valid, but probably not what was
    /// meant (`tribridge check` prints it, the daemon logs it).
    pub fn warn(&mut self, offset: usize, name: &str, message: impl Into<String>) {
        self.warnings.push(SectionIssue {
            offset,
            key: Some(format!("{}.{name}", self.key)),
            message: message.into(),
            fatal: false,
        });
    }

    /// Warn when the URL of key `name` is plain `http://` to a host other than this machine:
    /// the account's password or token and every message would cross the network unencrypted.
    pub fn warn_plain_http(&mut self, name: &str, url: &Spanned<String>) {
        let Some(rest) = url.get_ref().trim().strip_prefix("http://") else {
            return;
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host),
        };
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback());
        if !loopback {
            self.warn(
                url.span().start,
                name,
                format!(
                    "`{}` is plain http:// to another machine: the login and every message \
                     cross the network unencrypted; use https://",
                    url.get_ref()
                ),
            );
        }
    }

    /// The section as the connector's raw serde type; `None` (with a fatal issue) when its
    /// shape does not fit. Call once.
    pub fn read<T: DeserializeOwned>(&mut self) -> Option<T> {
        let value = self.value.take()?;
        match T::deserialize(serde::de::IntoDeserializer::into_deserializer(value)) {
            Ok(raw) => Some(raw),
            Err(error) => {
                self.issues.push(SectionIssue {
                    offset: error.span().map_or(self.type_offset, |span| span.start),
                    key: None,
                    message: error.message().trim().to_owned(),
                    fatal: true,
                });
                None
            }
        }
    }

    /// Report a problem with key `name` of this section, at `offset`.
    pub fn report(&mut self, offset: usize, name: &str, message: impl Into<String>) {
        self.issues.push(SectionIssue {
            offset,
            key: Some(format!("{}.{name}", self.key)),
            message: message.into(),
            fatal: false,
        });
    }

    /// Report that key `name` is missing (at the section's `type`).
    pub fn missing(&mut self, name: &str, message: impl Into<String>) {
        self.report(self.type_offset, name, message);
    }

    /// A number between 1 and `max` (`default` when absent or wrong, which is reported).
    pub fn positive(
        &mut self,
        name: &str,
        value: Option<&Spanned<i64>>,
        default: u64,
        max: u64,
    ) -> u64 {
        let Some(value) = value else { return default };
        match u64::try_from(*value.get_ref()) {
            Ok(number) if (1..=max).contains(&number) => number,
            _ => {
                self.report(
                    value.span().start,
                    name,
                    format!("`{name}` must be between 1 and {max}"),
                );
                default
            }
        }
    }

    /// A path relative to the configuration's folder, which must exist.
    pub fn existing_file(&mut self, name: &str, file: &Spanned<String>) -> PathBuf {
        let path = self.base.join(file.get_ref());
        if let Err(error) = std::fs::metadata(&path) {
            self.report(
                file.span().start,
                name,
                format!("cannot read `{}`: {error}", path.display()),
            );
        }
        path
    }

    /// A secret given inline, as `NAME_file` or as `NAME_env`: at most one of the three.
    pub fn secret(
        &mut self,
        name: &str,
        inline: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
        env: Option<&Spanned<String>>,
    ) -> Option<Secret> {
        let given = [inline, file, env].iter().filter(|v| v.is_some()).count();
        if given > 1 {
            let offset = [inline, file, env]
                .iter()
                .flatten()
                .map(|v| v.span().start)
                .max()
                .unwrap_or(0);
            self.report(
                offset,
                name,
                format!("give `{name}` one way only: `{name}`, `{name}_file` or `{name}_env`"),
            );
            return None;
        }
        if let Some(value) = inline {
            return Some(Secret::new(value.get_ref().clone()));
        }
        if let Some(file) = file {
            let path = self.base.join(file.get_ref());
            return match std::fs::read_to_string(&path) {
                Ok(text) => Some(Secret::new(text.trim_end_matches(['\r', '\n']).to_owned())),
                Err(error) => {
                    self.report(
                        file.span().start,
                        &format!("{name}_file"),
                        format!("cannot read secret file `{}`: {error}", path.display()),
                    );
                    None
                }
            };
        }
        if let Some(variable) = env {
            return if let Some((_, value)) = self.env.iter().find(|(k, _)| k == variable.get_ref())
            {
                Some(Secret::new(value.clone()))
            } else {
                self.report(
                    variable.span().start,
                    &format!("{name}_env"),
                    format!("environment variable `{}` is not set", variable.get_ref()),
                );
                None
            };
        }
        None
    }

    /// `parallel_bridges`: other bridges' accounts in the form the network's connector reports
    /// senders. `own` is this bridge's account where the file names it (it cannot be listed);
    /// `grammar` says what is wrong with an account that is not one of this network's.
    pub fn parallel_bridges(
        &mut self,
        list: Option<&Spanned<Vec<Spanned<String>>>>,
        own: &str,
        grammar: impl Fn(&str) -> Option<String>,
    ) -> Vec<String> {
        let Some(list) = list else {
            return Vec::new();
        };
        let mut accounts: Vec<String> = Vec::new();
        for entry in list.get_ref() {
            let account = entry.get_ref();
            let problem = if account.trim().is_empty() {
                Some(
                    "an empty account; list the other bridges' accounts on this network".to_owned(),
                )
            } else if let Some(problem) = grammar(account) {
                Some(problem)
            } else if !own.is_empty() && account.to_lowercase() == own.to_lowercase() {
                Some(format!(
                    "`{account}` is this bridge's own account; list the other bridges'"
                ))
            } else if accounts
                .iter()
                .any(|a| a.to_lowercase() == account.to_lowercase())
            {
                Some(format!("`{account}` is listed twice"))
            } else {
                None
            };
            match problem {
                Some(message) => self.report(entry.span().start, "parallel_bridges", message),
                None => accounts.push(account.clone()),
            }
        }
        accounts
    }
}

/// The keys a raw serde type accepts, in declaration order: what `#[derive(Deserialize)]`
/// hands its deserializer (serde keeps no other list of them).
#[must_use]
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Done;
    impl fmt::Display for Done {
        fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("field names read")
        }
    }
    impl std::error::Error for Done {}
    impl serde::de::Error for Done {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Done
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = Done;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Done> {
            Err(Done)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Done> {
            self.0 = Some(fields);
            Err(Done)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields = Fields(None);
    let _ = T::deserialize(&mut fields);
    fields.0.unwrap_or(&[])
}

/// A secret value; its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is sent to the server.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(..)")
    }
}
