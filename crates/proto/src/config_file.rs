//! Config files for the `peer` and `tracker` binaries (feature `cli`): every option a flag has, as
//! TOML, read before the command line is parsed.
//!
//! A value from the file becomes the default of its flag, so the order of precedence is: the
//! command line, then the environment variable (where the flag has one), then the file, then the
//! built-in default. Each value is checked with the flag's own parser when the file is read, so a
//! bad value names the file, line and key instead of a flag the user never typed. The file is
//! `--config FILE` (or the program's environment variable), else the first of
//! `$XDG_CONFIG_HOME/p2p/PROGRAM.toml` (or `~/.config/p2p/PROGRAM.toml`) and
//! `/etc/p2p/PROGRAM.toml` that exists. [`ConfigFile::default_config`] prints every key,
//! commented, with its default and help, generated from the flags themselves.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

/// One key of a config file: where it is, and the flag it sets.
#[derive(Debug, Clone)]
pub struct Key {
    /// The section (`None`: the top level, which applies to every command that has the flag).
    pub section: Option<&'static str>,
    /// The key in the file.
    pub key: String,
    /// The flag's id (the field name in the clap structs).
    pub arg: String,
    /// The file says the opposite of the flag (`watch = false` is `--no-watch`).
    pub negated: bool,
}

impl Key {
    /// A key for the flag `arg`.
    pub fn new(section: Option<&'static str>, key: &str, arg: &str) -> Key {
        Key { section, key: key.to_owned(), arg: arg.to_owned(), negated: false }
    }

    /// A key that says the opposite of the flag `arg`.
    pub fn negated(section: Option<&'static str>, key: &str, arg: &str) -> Key {
        Key { negated: true, ..Key::new(section, key, arg) }
    }

    /// A top-level key for every long flag of `cmd` that takes a value or is a switch, named
    /// as the flag with `_`, except those in `except` and hidden ones.
    pub fn every_flag(cmd: &Command, except: &[&str]) -> Vec<Key> {
        cmd.get_arguments()
            .filter(|a| a.get_long().is_some() && !a.is_hide_set())
            .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
            .filter(|a| !except.contains(&a.get_id().as_str()))
            .map(|a| Key::new(None, a.get_id().as_str(), a.get_id().as_str()))
            .collect()
    }
}

/// A config file that cannot be used: one line naming the file, the line and the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// A program's config file: its name, environment variable and keys.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The program (`peer`): the file is `PROGRAM.toml`.
    pub program: &'static str,
    /// The environment variable naming the file (`P2P_CONFIG`).
    pub env: &'static str,
    /// Every key the file may hold.
    pub keys: Vec<Key>,
}

impl ConfigFile {
    /// The config file to read: `--config FILE` or the environment variable (which must name
    /// a file), else the first default location that exists, else none.
    pub fn find(&self, args: &[OsString]) -> Result<Option<PathBuf>, ConfigError> {
        let given = flag_value(args, "--config").or_else(|| std::env::var_os(self.env).filter(|v| !v.is_empty()));
        if let Some(path) = given {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(ConfigError(format!("the config file {} does not exist", path.display())));
            }
            return Ok(Some(path));
        }
        Ok(self.default_locations().into_iter().find(|p| p.is_file()))
    }

    /// Where a config file is looked for when none is given, first found wins.
    pub fn default_locations(&self) -> Vec<PathBuf> {
        let file = format!("{}.toml", self.program);
        let mut out = Vec::new();
        if let Some(dir) = dirs::config_dir() {
            out.push(dir.join("p2p").join(&file));
        }
        out.push(Path::new("/etc/p2p").join(file));
        out
    }

    /// `cmd` with the values of the config file at `path` as its flags' defaults.
    pub fn apply(&self, cmd: Command, path: &Path) -> Result<Command, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read the config file {}: {e}", path.display())))?;
        self.apply_text(cmd, path, &text)
    }

    /// [`ConfigFile::apply`] of the file's text.
    pub fn apply_text(&self, mut cmd: Command, path: &Path, text: &str) -> Result<Command, ConfigError> {
        let at = |line: usize, msg: String| ConfigError(format!("{}:{line}: {msg}", path.display()));
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            at(line, e.message().replace('\n', " "))
        })?;
        let mut values: Vec<(&Key, String, usize)> = Vec::new();
        for (name, value) in &table {
            match value {
                toml::Value::Table(inner) if self.keys.iter().any(|k| k.section == Some(name.as_str())) => {
                    for (k, v) in inner {
                        let line = key_line(text, Some(name), k);
                        let key = self.find_key(Some(name), k).ok_or_else(|| at(line, self.unknown(Some(name), k)))?;
                        values.push((key, scalar(key, v).map_err(|m| at(line, m))?, line));
                    }
                }
                v => {
                    let line = key_line(text, None, name);
                    let key = self.find_key(None, name).ok_or_else(|| at(line, self.unknown(None, name)))?;
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
                if let Some(arg) = sub.get_arguments().find(|a| a.get_id() == key.arg.as_str()) {
                    check(arg, &value).map_err(|m| at(line, format!("{}: {m}", key.key)))?;
                    found = true;
                }
            }
            if !found {
                let why = format!("{}: not an option of this version of {}", key.key, self.program);
                return Err(at(line, why));
            }
            cmd = set_default(cmd, key, value);
        }
        Ok(cmd)
    }

    fn find_key(&self, section: Option<&str>, name: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.section == section && k.key == name)
    }

    fn unknown(&self, section: Option<&str>, name: &str) -> String {
        let known: Vec<&str> = self.keys.iter().filter(|k| k.section == section).map(|k| k.key.as_str()).collect();
        let place = section.map(|s| format!(" in [{s}]")).unwrap_or_default();
        format!("unknown key `{name}`{place}; known: {}", known.join(", "))
    }

    /// A commented config file with every key, its help and its default, generated from `cmd`'s
    /// flags so it never disagrees with them.
    pub fn default_config(&self, cmd: &Command) -> String {
        let mut out = String::new();
        let p = self.program;
        let _ = writeln!(out, "# {p}'s config file. Every key is optional: a flag or its environment variable wins");
        let _ = writeln!(out, "# over the file, and the file over the built-in default (shown here, commented out).");
        let _ = writeln!(out, "# Read from --config FILE (env {}), else the first of:", self.env);
        for path in self.default_locations() {
            let _ = writeln!(out, "#   {}", path.display());
        }
        let mut sections: Vec<Option<&'static str>> = vec![None];
        for k in &self.keys {
            if !sections.contains(&k.section) {
                sections.push(k.section);
            }
        }
        for section in sections {
            if let Some(s) = section {
                let _ = writeln!(out, "\n[{s}]");
            }
            for k in self.keys.iter().filter(|k| k.section == section) {
                let sub = section.and_then(|s| cmd.get_subcommands().find(|c| c.get_name() == s));
                let arg = sub
                    .into_iter()
                    .chain(std::iter::once(cmd))
                    .chain(cmd.get_subcommands())
                    .find_map(|c| c.get_arguments().find(|a| a.get_id() == k.arg.as_str()));
                let Some(arg) = arg else { continue };
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                out.push('\n');
                comment(&mut out, &help);
                let default = arg.get_default_values().first().map(|v| v.to_string_lossy().into_owned());
                let value = match (default, k.negated, arg.get_action()) {
                    (_, true, _) => "true".to_owned(),
                    (_, false, ArgAction::SetTrue) => "false".to_owned(),
                    // Numbers stay numbers; a port-or-address stays a string.
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
}

/// The value of `--name VALUE` or `--name=VALUE` on the command line, before clap parses it.
pub fn flag_value(args: &[OsString], name: &str) -> Option<OsString> {
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

/// A key's value as the text its flag would be given; a list (of trackers, say) is
/// comma-separated.
fn scalar(key: &Key, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => {
            Ok(items.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>().join(","))
        }
        other => Err(format!("{}: wrong type: {} (expected a string, number or boolean)", key.key, other.type_str())),
    }
}

/// Parses `value` as the flag `arg` would.
fn check(arg: &Arg, value: &str) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("expected true or false, not {value:?}")),
        };
    }
    // A command of this one value, parsed by the flag's own parser.
    let value_arg = Arg::new("value").long("value").allow_hyphen_values(true);
    let probe = Command::new("probe").arg(value_arg.value_parser(arg.get_value_parser().clone()));
    probe.try_get_matches_from(["probe".to_owned(), format!("--value={value}")]).map(|_| ()).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        first.trim_start_matches("error: ").replace(" for '--value <value>'", "")
    })
}

/// `cmd` with `value` as the default of `key`'s flag, wherever the flag is.
fn set_default(cmd: Command, key: &Key, value: String) -> Command {
    let id = key.arg.clone();
    let has = |c: &Command| c.get_arguments().any(|a| a.get_id() == id.as_str());
    let mut cmd = if key.section.is_none() && has(&cmd) {
        cmd.mut_arg(id.as_str(), |a| a.default_value(value.clone()))
    } else {
        cmd
    };
    let names: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| key.section.is_none_or(|sec| sec == s.get_name()) && has(s))
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        let v = value.clone();
        cmd = cmd.mut_subcommand(name, |s| s.mut_arg(id.as_str(), |a| a.default_value(v)));
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
    use super::*;

    #[test]
    fn the_config_flag_is_found_before_parsing() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(flag_value(&args(&["p", "--config", "a.toml", "list"]), "--config"), Some("a.toml".into()));
        assert_eq!(flag_value(&args(&["p", "list", "--config=b.toml"]), "--config"), Some("b.toml".into()));
        assert_eq!(flag_value(&args(&["p", "download", "--", "--config"]), "--config"), None);
    }

    #[test]
    fn every_flag_becomes_a_key_and_lists_join_with_commas() {
        let cmd = Command::new("t")
            .arg(Arg::new("max_frame").long("max-frame").value_parser(clap::value_parser!(u64)).default_value("10"))
            .arg(Arg::new("names").long("names"))
            .arg(Arg::new("open").long("open").action(ArgAction::SetTrue))
            .arg(Arg::new("config").long("config"));
        let file = ConfigFile { program: "t", env: "T_CONFIG", keys: Key::every_flag(&cmd, &["config"]) };
        let keys: Vec<&str> = file.keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["max_frame", "names", "open"]);
        let path = Path::new("t.toml");
        let c = file.apply_text(cmd.clone(), path, "max_frame = 20\nnames = [\"a\", \"b\"]\nopen = true\n").unwrap();
        let m = c.try_get_matches_from(["t"]).unwrap();
        assert_eq!(m.get_one::<u64>("max_frame"), Some(&20));
        assert_eq!(m.get_one::<String>("names").map(String::as_str), Some("a,b"));
        assert_eq!(m.get_one::<bool>("open"), Some(&true));
        let err = file.apply_text(cmd.clone(), path, "max_frame = -3\n").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:1: max_frame: invalid value '-3'"), "{err}");
        let err = file.apply_text(cmd, path, "config = \"x\"\n").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:1: unknown key `config`"), "{err}");
    }
}
