//! `--config FILE`: the hub's settings from a TOML file, and `iothub config print|example`.
//!
//! The file's keys are the ids of [`Config`]'s arguments (the field names: `mqtt_addr`,
//! `service_users`, ...), so the list of settings lives once, in the clap definitions, and a flag
//! added there is a key here too. Precedence is file < environment < flags because the file's
//! values become the arguments' *default values* before clap parses: clap itself then prefers
//! `IOTHUB_*` variables and flags over them. Values go through the same value parsers as flags.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command};
use iothub_hub::Config;

/// The one section of the file: registry sync (S-13), which is a structure, not flags.
pub const SYNC_SECTION: &str = "registry_sync";

/// The environment variable naming the config file (the `--config` flag wins).
pub const CONFIG_ENV: &str = "IOTHUB_CONFIG";

/// Settings read from a config file: key → values (one, or several for list settings).
#[derive(Debug, Default)]
pub struct FileSettings {
    /// The file they came from.
    pub path: Option<PathBuf>,
    values: BTreeMap<String, Vec<String>>,
    /// The `[registry_sync]` section (S-13), checked; it has no flags.
    pub registry_sync: Option<iothub_hub::sync::SyncConfig>,
    /// The `[[routes]]` tables (S-14.1), validated.
    pub routes: Vec<iothub_hub::routes::RouteSpec>,
}

/// The key of the `[[routes]]` tables: not a flag, so not among [`config_keys`].
pub const ROUTES_KEY: &str = "routes";

/// The argument ids of [`Config`] (the file's keys), in declaration order.
pub fn config_keys() -> Vec<clap::Arg> {
    let mut cmd = Config::augment_args(Command::new("iothub"));
    // Building fills in what the derive leaves implicit, such as `false` as a switch's default.
    cmd.build();
    cmd.get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .cloned()
        .collect()
}

/// `--config PATH` or `--config=PATH` from the raw arguments, else [`CONFIG_ENV`]. Read before
/// clap parses, because the file changes what clap is given.
pub fn config_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl FileSettings {
    /// Reads and checks `path`: a TOML table whose keys are all known settings.
    pub fn load(path: &Path) -> anyhow::Result<FileSettings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut settings = FileSettings::parse(&text)
            .with_context(|| format!("in the config file {}", path.display()))?;
        settings.path = Some(path.to_path_buf());
        Ok(settings)
    }

    /// Parses the text of a config file.
    pub fn parse(text: &str) -> anyhow::Result<FileSettings> {
        let table: toml::Table = text.parse().context("not valid TOML")?;
        let keys = config_keys();
        let mut values = BTreeMap::new();
        let mut registry_sync = None;
        let mut routes = Vec::new();
        for (key, value) in table {
            if key == SYNC_SECTION {
                let toml::Value::Table(section) = value else {
                    bail!("{SYNC_SECTION:?} must be a section: [{SYNC_SECTION}]");
                };
                registry_sync = Some(iothub_hub::sync::SyncConfig::from_toml(section)?);
                continue;
            }
            if key == ROUTES_KEY {
                routes = parse_routes(value)?;
                continue;
            }
            let Some(arg) = keys.iter().find(|a| a.get_id().as_str() == key) else {
                let known: Vec<&str> = keys.iter().map(|a| a.get_id().as_str()).collect();
                bail!("unknown key {key:?} (known keys: {})", known.join(", "));
            };
            let list = match value {
                toml::Value::Array(items) => {
                    if !takes_many(arg) {
                        bail!("key {key:?} takes one value, not a list");
                    }
                    items
                        .into_iter()
                        .map(|v| scalar(&key, v))
                        .collect::<anyhow::Result<Vec<_>>>()?
                }
                other => vec![scalar(&key, other)?],
            };
            values.insert(key, list);
        }
        Ok(FileSettings {
            path: None,
            values,
            registry_sync,
            routes,
        })
    }

    /// Whether the file set `key`.
    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// `cmd` and its subcommands with the file's values as the defaults of the arguments they
    /// name, so that environment variables and flags still win.
    pub fn apply(&self, mut cmd: Command) -> Command {
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        for (key, values) in &self.values {
            if ids.contains(key) {
                let values = values.clone();
                cmd = cmd.mut_arg(key, |a| a.default_values(values));
            }
        }
        let subcommands: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in subcommands {
            cmd = cmd.mut_subcommand(name, |sub| self.apply(sub));
        }
        cmd
    }
}

/// The commented `[registry_sync]` section of [`render_example`] (docs/spec.md S-13.2).
const SYNC_EXAMPLE: &str = r#"
# Registry sync with an external registry (docs/spec.md S-13), off unless this section is set.
# The external registry speaks the HTTP contract of S-13.3 (an adapter in front of a network
# server). Durations are written as 500ms, 30s, 5m, 1day. At least one of
# [registry_sync.schedule] and [registry_sync.push] must be set.
# [registry_sync]
# url = "http://127.0.0.1:8080/registry"  # GET and POST {url}/devices, DELETE {url}/devices/{id}
# timeout = "10s"                         # per HTTP call, connection included
# page_size = 500                         # devices per page of the list, 1 to 1000
# max_devices = 1000000                   # more in one listing fails the round
# [registry_sync.auth.list]               # one header per operation: list, create, delete
# name = "Authorization"
# value = "Bearer ..."
# [registry_sync.schedule]                # (a) the external registry is master
# interval = "5m"
# soft_delete = false                     # true: disable the extra things instead of deleting
# batch_threshold = 100                   # more creations (removals) than this: batch path
# max_removal_percent = 50                # removing more of the hub's things in a round: none removed
# [registry_sync.schedule.template]
# enabled = true
# tags = { source = "lns" }
# desired = { reportInterval = 60 }
# [registry_sync.push]                    # (b) the hub is master: durable tasks, retried
# interval = "5m"                         # first retry delay, doubled per attempt, with jitter
# max_interval = "30m"
# max_attempts = 100
# deadline = "1day"                       # from the change to giving up
# poll = "1s"                             # how often the task queue is looked at
# [registry_sync.events]                  # retention of GET /api/v1/sync/events
# keep = 100000
# max_age = "7days"
"#;

/// `[[routes]]`: an array of tables, each a route (S-14.1), every one valid and no id twice.
fn parse_routes(value: toml::Value) -> anyhow::Result<Vec<iothub_hub::routes::RouteSpec>> {
    let toml::Value::Array(items) = value else {
        bail!("{ROUTES_KEY:?} must be [[routes]] tables");
    };
    let mut routes: Vec<iothub_hub::routes::RouteSpec> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let spec: iothub_hub::routes::RouteSpec = item
            .try_into()
            .with_context(|| format!("route {} of [[routes]]", i + 1))?;
        spec.validate()
            .with_context(|| format!("route {:?} of [[routes]]", spec.id))?;
        if routes.iter().any(|r| r.id == spec.id) {
            bail!("route {:?} is declared twice in [[routes]]", spec.id);
        }
        routes.push(spec);
    }
    if routes.len() > iothub_hub::routes::config::MAX_ROUTES {
        bail!("at most {} routes", iothub_hub::routes::config::MAX_ROUTES);
    }
    Ok(routes)
}

/// Whether a setting takes a list (a repeatable flag or one with a value delimiter).
fn takes_many(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), clap::ArgAction::Append) || arg.get_value_delimiter().is_some()
}

/// `text` broken into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

fn scalar(key: &str, value: toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("key {key:?} has a {} value", other.type_str()),
    })
}

/// Whether a setting holds a credential: its environment value is hidden from `--help`.
fn is_secret(arg: &clap::Arg) -> bool {
    arg.is_hide_env_values_set()
}

/// A URL with its password (if any) replaced by `****`.
fn mask_url_password(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:****@{host}{path}"),
            None => value.to_owned(),
        },
        None => value.to_owned(),
    }
}

/// A value as TOML: numbers and booleans bare, everything else quoted.
fn toml_value(raw: &str) -> String {
    if raw.parse::<i64>().is_ok() || raw == "true" || raw == "false" {
        raw.to_owned()
    } else {
        toml::Value::String(raw.to_owned()).to_string()
    }
}

/// The effective configuration in `matches` (of a command that flattens [`Config`]) as TOML,
/// each line saying where its value came from; secrets are masked.
pub fn render_effective(matches: &ArgMatches, file: &FileSettings) -> String {
    let mut out = String::new();
    if let Some(path) = &file.path {
        let _ = writeln!(out, "# config file: {}", path.display());
    }
    for arg in config_keys() {
        let id = arg.get_id().as_str();
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) if file.has(id) => "file",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let shown: Vec<String> = raw
            .iter()
            .map(|v| {
                if is_secret(&arg) {
                    toml_value("****")
                } else {
                    toml_value(&mask_url_password(v))
                }
            })
            .collect();
        match (shown.as_slice(), takes_many(&arg)) {
            ([], _) => {
                let _ = writeln!(out, "# {id} is not set");
            }
            (_, true) => {
                let _ = writeln!(out, "{id} = [{}]  # {source}", shown.join(", "));
            }
            ([one], false) => {
                let _ = writeln!(out, "{id} = {one}  # {source}");
            }
            (_, false) => {
                let _ = writeln!(out, "{id} = [{}]  # {source}", shown.join(", "));
            }
        }
    }
    match &file.registry_sync {
        Some(sync) => out.push_str(&sync.render_masked()),
        None => out.push_str("# [registry_sync] is not set\n"),
    }
    // Routes are tables, shown by id (their secrets stay out): `GET /api/v1/routes` has the rest.
    for route in &file.routes {
        let _ = writeln!(out, "# [[routes]] id = {:?}  # file", route.id);
    }
    out
}

/// The `[[routes]]` part of the example file (docs/routes.md has the rest).
const ROUTES_EXAMPLE: &str = "
# Routes to other systems (docs/spec.md S-14, docs/routes.md): none by default. A route declared
# here is written over the stored route of the same id at every start; one removed from here is
# deleted with its outbox. For example:
# [[routes]]
# id = \"to-backend\"
# sources = [\"telemetry\", \"shadow\"]
# outbox_max = 100000
# when_full = \"drop-oldest\"
# [routes.sink]
# type = \"webhook\"
# url = \"https://backend.example.com/iothub\"
# secret = \"a long random string\"
";

/// A commented config file with every setting at its default, generated from the flags' help
/// (`hub/iothub.example.toml` is this text; a test keeps them equal).
pub fn render_example() -> String {
    let mut out = String::from(
        "# iothub configuration: `iothub serve --config iothub.toml` (or IOTHUB_CONFIG=iothub.toml).\n\
         # Every key is a flag of `iothub serve`; environment variables and flags override the file.\n\
         # Unknown keys are an error. Generated by `iothub config example`; every value below is the\n\
         # default, and commented keys have none.\n",
    );
    for arg in config_keys() {
        let id = arg.get_id().as_str();
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in wrap(&help, 96) {
            let _ = writeln!(out, "# {line}");
        }
        let flag = arg.get_long().map(|l| format!("--{l}")).unwrap_or_default();
        let env = arg
            .get_env()
            .map(|e| format!(", env {}", e.to_string_lossy()))
            .unwrap_or_default();
        let _ = writeln!(out, "# (flag {flag}{env})");
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| toml_value(&v.to_string_lossy()))
            .collect();
        match (defaults.as_slice(), takes_many(&arg)) {
            ([], true) => {
                let _ = writeln!(out, "# {id} = []");
            }
            ([], false) => {
                let _ = writeln!(out, "# {id} = \"\"");
            }
            ([one], false) => {
                let _ = writeln!(out, "{id} = {one}");
            }
            (many, _) => {
                let _ = writeln!(out, "{id} = [{}]", many.join(", "));
            }
        }
    }
    out.push_str(SYNC_EXAMPLE);
    out.push_str(ROUTES_EXAMPLE);
    // Trailing spaces of empty comment lines would trip editors and `git diff --check`.
    out.lines()
        .map(|l| l.trim_end().to_owned() + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = FileSettings::parse("mqtt_addr = \"127.0.0.1:1\"\nmqtt_adr = 1\n")
            .expect_err("typo refused");
        assert!(err.to_string().contains("\"mqtt_adr\""), "{err}");
    }

    #[test]
    fn lists_only_for_list_settings() {
        assert!(FileSettings::parse("service_users = [\"$a:b\", \"$c:d\"]").is_ok());
        let err = FileSettings::parse("mqtt_addr = [\"a\", \"b\"]").expect_err("not a list");
        assert!(err.to_string().contains("mqtt_addr"), "{err}");
        assert!(FileSettings::parse("[section]\nx = 1").is_err());
        assert!(FileSettings::parse("registry_sync = 1").is_err());
        let sync = FileSettings::parse(
            "[registry_sync]\nurl = \"http://x/\"\n[registry_sync.push]\ninterval = \"1s\"\n",
        )
        .expect("a sync section");
        assert!(sync.registry_sync.is_some_and(|s| s.push.is_some()));
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://hub:s3cret@db:5432/iothub"),
            "postgres://hub:****@db:5432/iothub"
        );
        assert_eq!(mask_url_password("sqlite://./x.db"), "sqlite://./x.db");
    }
}
