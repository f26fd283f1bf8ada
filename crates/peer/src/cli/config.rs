//! The config file: every option a flag has, as TOML, read before the command line is parsed.
//!
//! A value from the file becomes the default of its flag, so the order of precedence is: the
//! command line, then the environment variable (where the flag has one), then the file, then the
//! built-in default. Each value is checked with the flag's own parser when the file is read, so a
//! bad value names the file, line and key instead of a flag the user never typed. The file is
//! `--config FILE` (env `P2P_CONFIG`), else the first of `$XDG_CONFIG_HOME/p2p/peer.toml` (or
//! `~/.config/p2p/peer.toml`) and `/etc/p2p/peer.toml` that exists. `peer default-config` prints
//! every key, commented, with its default and help, generated from the flags themselves.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

/// Where a key's value goes: a flag's id, and whether the key is the flag's opposite (`watch =
/// false` is `--no-watch`).
struct Key {
    /// The section (`None`: the top level).
    section: Option<&'static str>,
    /// The key in the file.
    key: &'static str,
    /// The flag's id (the field name in the clap structs).
    arg: &'static str,
    /// The file says the opposite of the flag.
    negated: bool,
}

const fn key(section: Option<&'static str>, key: &'static str, arg: &'static str) -> Key {
    Key { section, key, arg, negated: false }
}

/// Every key the file may hold. Top-level keys apply to every command that has the flag.
const KEYS: &[Key] = &[
    key(None, "tracker", "tracker"),
    key(None, "log_format", "log_format"),
    key(None, "share", "share"),
    key(None, "state_dir", "state_dir"),
    key(None, "listen", "listen"),
    key(None, "announce", "announce"),
    key(None, "upload_rate", "upload_rate"),
    key(None, "download_rate", "download_rate"),
    key(None, "pipeline", "pipeline"),
    key(None, "max_sources", "max_sources"),
    key(None, "max_uploads", "max_uploads"),
    key(None, "max_uploads_per_ip", "max_uploads_per_ip"),
    key(Some("serve"), "http", "http"),
    key(Some("serve"), "http_token", "http_token"),
    key(Some("serve"), "stats_every", "stats_every"),
    Key { section: Some("serve"), key: "watch", arg: "no_watch", negated: true },
    key(Some("serve"), "settle", "settle"),
    key(Some("download"), "parallel", "parallel"),
    key(Some("download"), "timeout", "timeout"),
    key(Some("download"), "stall_timeout", "stall_timeout"),
    key(Some("download"), "wait", "wait"),
    key(Some("download"), "replace", "replace"),
    key(Some("download"), "linger", "linger"),
];

/// A config file that cannot be used: one line naming the file, the line and the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(String);

/// The config file to read: `--config FILE` or `P2P_CONFIG` (which must exist), else the first
/// default location that exists, else none.
pub(crate) fn find(args: &[OsString]) -> Result<Option<PathBuf>, ConfigError> {
    let given = flag_value(args, "--config").or_else(|| std::env::var_os("P2P_CONFIG").filter(|v| !v.is_empty()));
    if let Some(path) = given {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(ConfigError(format!("the config file {} does not exist", path.display())));
        }
        return Ok(Some(path));
    }
    Ok(default_locations().into_iter().find(|p| p.is_file()))
}

/// Where a config file is looked for when none is given, first found wins.
pub(crate) fn default_locations() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = dirs::config_dir() {
        out.push(dir.join("p2p").join("peer.toml"));
    }
    out.push(PathBuf::from("/etc/p2p/peer.toml"));
    out
}

/// The value of `--name VALUE` or `--name=VALUE` on the command line, before clap parses it.
fn flag_value(args: &[OsString], name: &str) -> Option<OsString> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            return None;
        }
        if s == name {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v.into());
        }
    }
    None
}

/// `cmd` with the values of the config file at `path` as its flags' defaults.
pub(crate) fn apply(cmd: Command, path: &Path) -> Result<Command, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read the config file {}: {e}", path.display())))?;
    apply_text(cmd, path, &text)
}

fn apply_text(mut cmd: Command, path: &Path, text: &str) -> Result<Command, ConfigError> {
    let at = |line: usize, msg: String| ConfigError(format!("{}:{line}: {msg}", path.display()));
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        at(line, e.message().replace('\n', " "))
    })?;
    let mut values: Vec<(&Key, String, usize)> = Vec::new();
    for (name, value) in &table {
        match value {
            toml::Value::Table(inner) if KEYS.iter().any(|k| k.section == Some(name.as_str())) => {
                for (k, v) in inner {
                    let line = key_line(text, Some(name), k);
                    let key = find_key(Some(name), k).ok_or_else(|| at(line, unknown(Some(name), k)))?;
                    values.push((key, scalar(key, v).map_err(|m| at(line, m))?, line));
                }
            }
            v => {
                let line = key_line(text, None, name);
                let key = find_key(None, name).ok_or_else(|| at(line, unknown(None, name)))?;
                values.push((key, scalar(key, v).map_err(|m| at(line, m))?, line));
            }
        }
    }
    for (key, value, line) in values {
        let value = match (key.negated, value.as_str()) {
            (false, _) => value,
            (true, "true" | "false") => (value != "true").to_string(),
            (true, other) => return Err(at(line, format!("{}: expected true or false, not {other:?}", key.key))),
        };
        let mut found = false;
        // Checked with the flag's own parser, on every command that has the flag.
        for sub in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
            if key.section.is_some_and(|s| s != sub.get_name()) {
                continue;
            }
            if let Some(arg) = sub.get_arguments().find(|a| a.get_id() == key.arg) {
                check(sub, arg, &value).map_err(|m| at(line, format!("{}: {m}", key.key)))?;
                found = true;
            }
        }
        if !found {
            return Err(at(line, format!("{}: not an option of this version of peer", key.key)));
        }
        cmd = set_default(cmd, key, value);
    }
    Ok(cmd)
}

fn find_key(section: Option<&str>, name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.section == section && k.key == name)
}

fn unknown(section: Option<&str>, name: &str) -> String {
    let known: Vec<&str> = KEYS.iter().filter(|k| k.section == section).map(|k| k.key).collect();
    let place = section.map(|s| format!(" in [{s}]")).unwrap_or_default();
    format!("unknown key `{name}`{place}; known: {}", known.join(", "))
}

/// A key's value as the text its flag would be given.
fn scalar(key: &Key, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        // A list of trackers.
        toml::Value::Array(items) if key.arg == "tracker" => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| format!("{}: a list of strings", key.key)))
            .collect::<Result<Vec<_>, _>>()
            .map(|l| l.join(",")),
        other => Err(format!("{}: wrong type: {} (expected a string, number or boolean)", key.key, other.type_str())),
    }
}

/// Parses `value` as the flag `arg` of `cmd` would.
fn check(cmd: &Command, arg: &Arg, value: &str) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("expected true or false, not {value:?}")),
        };
    }
    // A command of this one value, parsed by the flag's own parser.
    let probe = Command::new(cmd.get_name().to_owned())
        .arg(Arg::new("value").long("value").value_parser(arg.get_value_parser().clone()));
    probe.try_get_matches_from(["peer", "--value", value]).map(|_| ()).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        first.trim_start_matches("error: ").replace(" for '--value <value>'", "")
    })
}

/// `cmd` with `value` as the default of `key`'s flag, wherever the flag is.
fn set_default(cmd: Command, key: &Key, value: String) -> Command {
    let id = key.arg;
    let has = |c: &Command| c.get_arguments().any(|a| a.get_id() == id);
    let mut cmd =
        if key.section.is_none() && has(&cmd) { cmd.mut_arg(id, |a| a.default_value(value.clone())) } else { cmd };
    let names: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| key.section.is_none_or(|sec| sec == s.get_name()) && has(s))
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        let v = value.clone();
        cmd = cmd.mut_subcommand(name, |s| s.mut_arg(id, |a| a.default_value(v)));
    }
    cmd
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line a key is on (1 when it cannot be found): the first `key =` after its section header.
fn key_line(text: &str, section: Option<&str>, key: &str) -> usize {
    let mut in_section = section.is_none();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(header) = l.strip_prefix('[') {
            in_section = section.is_some_and(|s| header.trim_end_matches(']').trim() == s);
            continue;
        }
        let k = l.split('=').next().unwrap_or_default().trim().trim_matches('"');
        if in_section && k == key && l.contains('=') {
            return i + 1;
        }
    }
    1
}

/// A commented config file with every key, its help and its default, generated from `cmd`'s
/// flags so it never disagrees with them.
pub(crate) fn default_config(cmd: &Command) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# peer's config file. Every key is optional: a flag or its environment variable wins");
    let _ = writeln!(out, "# over the file, and the file over the built-in default (shown here, commented out).");
    let _ = writeln!(out, "# Read from --config FILE (env P2P_CONFIG), else the first of:");
    for p in default_locations() {
        let _ = writeln!(out, "#   {}", p.display());
    }
    for section in [None, Some("serve"), Some("download")] {
        if let Some(s) = section {
            let _ = writeln!(out, "\n[{s}]");
        }
        for k in KEYS.iter().filter(|k| k.section == section) {
            let sub = section.and_then(|s| cmd.get_subcommands().find(|c| c.get_name() == s));
            let arg = sub
                .into_iter()
                .chain(std::iter::once(cmd))
                .chain(cmd.get_subcommands())
                .find_map(|c| c.get_arguments().find(|a| a.get_id() == k.arg));
            let Some(arg) = arg else { continue };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            out.push('\n');
            comment(&mut out, &help);
            let default = arg.get_default_values().first().map(|v| v.to_string_lossy().into_owned());
            let value = match (default, k.negated, arg.get_action()) {
                (_, true, _) => "true".to_owned(),
                (_, false, ArgAction::SetTrue) => "false".to_owned(),
                (Some(d), _, _) if d.parse::<f64>().is_ok() && k.arg != "listen" => d,
                (Some(d), _, _) => format!("{d:?}"),
                (None, _, _) => {
                    let _ = writeln!(out, "# (no default)");
                    let name = arg.get_value_names().and_then(|v| v.first()).map_or("VALUE", |v| v.as_str());
                    format!("\"<{name}>\"")
                }
            };
            let _ = writeln!(out, "# {} = {value}", k.key);
        }
    }
    out
}

/// `text` as `# ` lines of at most about 98 columns.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 98 && line.len() > 1 {
            let _ = writeln!(out, "{line}");
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn cmd() -> Command {
        super::super::Cli::command()
    }

    fn try_apply(text: &str) -> Result<Command, String> {
        apply_text(cmd(), Path::new("peer.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn values_become_defaults_and_the_command_line_wins() {
        let text = "upload_rate = \"20MiB\"\ntracker = [\"a.lab\", \"b.lab:7000\"]\n[serve]\nwatch = false\nstats_every = \"5m\"\n[download]\nparallel = 8\n";
        let c = try_apply(text).unwrap();
        let m = c.clone().try_get_matches_from(["peer", "serve"]).unwrap();
        let (_, serve) = m.subcommand().unwrap();
        assert_eq!(serve.get_one::<u64>("upload_rate"), Some(&(20 << 20)));
        assert_eq!(serve.get_one::<bool>("no_watch"), Some(&true));
        let m = c.clone().try_get_matches_from(["peer", "download", "x", "--parallel", "2"]).unwrap();
        assert_eq!(m.subcommand().unwrap().1.get_one::<usize>("parallel"), Some(&2), "the flag wins");
        let m = c.try_get_matches_from(["peer", "download", "x"]).unwrap();
        assert_eq!(m.subcommand().unwrap().1.get_one::<usize>("parallel"), Some(&8), "the file's value");
    }

    #[test]
    fn bad_files_name_the_line_and_the_key() {
        let cases = [
            ("pipeline = 8\nuplod_rate = \"1M\"\n", "peer.toml:2: unknown key `uplod_rate`"),
            ("[serve]\nstats_every = \"soon\"\n", "peer.toml:2: stats_every: "),
            ("\n\npipeline = \"eight\"\n", "peer.toml:3: pipeline: "),
            ("[download]\nlinger = [1, 2]\n", "peer.toml:2: linger: wrong type: array"),
            ("[serve]\nwatch = \"maybe\"\n", "peer.toml:2: watch: expected true or false"),
            ("listen = \n", "peer.toml:1: "),
            ("[nope]\nx = 1\n", "peer.toml:1: unknown key `nope`"),
        ];
        for (text, want) in cases {
            let Err(err) = try_apply(text) else { panic!("{text:?} was accepted") };
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn the_default_config_is_valid_and_lists_every_key() {
        let text = default_config(&cmd());
        for k in KEYS {
            assert!(text.contains(&format!("# {} = ", k.key)), "{} missing:\n{text}", k.key);
        }
        // Uncommented, it is a valid config that changes nothing.
        let uncommented: String = text
            .lines()
            .filter(|l| l.starts_with("# ") && l.contains(" = ") || l.starts_with('['))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .filter(|l| !l.contains('<'))
            .collect();
        try_apply(&uncommented).unwrap();
    }

    #[test]
    fn the_config_flag_is_found_before_parsing() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(flag_value(&args(&["peer", "--config", "a.toml", "list"]), "--config"), Some("a.toml".into()));
        assert_eq!(flag_value(&args(&["peer", "list", "--config=b.toml"]), "--config"), Some("b.toml".into()));
        assert_eq!(flag_value(&args(&["peer", "download", "--", "--config"]), "--config"), None);
    }
}
