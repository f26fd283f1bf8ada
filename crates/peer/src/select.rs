//! What a download asks for, as a user writes it: names, folder prefixes, globs, names pinned to a
//! root hash (`NAME@ROOT`), roots alone, and manifests (`ROOT  NAME` lines, as `b3sum` prints
//! them). Parsing only: resolving against the tracker's list is `batch.rs`'s.

use std::fmt;

use proto::Hash;

pub use proto::limits::MIN_ROOT_PREFIX_DIGITS as MIN_ROOT_PREFIX;
pub use proto::RootPrefix;

/// Parses a root or root prefix as a user gives it: 16 to 64 hex digits, either case, with an
/// error that says what is wrong (the protocol's own check only says it is invalid).
pub fn parse_root(s: &str) -> Result<RootPrefix, SelectError> {
    if let Some(bad) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(SelectError::RootNotHex { root: s.to_owned(), bad });
    }
    RootPrefix::parse(s).map_err(|_| SelectError::RootLength { root: s.to_owned(), len: s.len() })
}

/// One thing asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One file by name, with the content it must have when pinned.
    Name {
        /// The name.
        name: String,
        /// `NAME@ROOT`: the root (or prefix) its content must have.
        root: Option<RootPrefix>,
    },
    /// Every file whose name starts with this folder prefix (it ends with `/`).
    Prefix(String),
    /// Every file whose name matches this glob (`*` and `?` stay within one path component; `**`
    /// crosses them).
    Glob(GlobPattern),
    /// The file with this root (or root prefix), whatever its name.
    Root(RootPrefix),
}

/// A compiled glob and the text it came from.
#[derive(Debug, Clone)]
pub struct GlobPattern {
    text: String,
    pattern: glob::Pattern,
}

impl PartialEq for GlobPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for GlobPattern {}

impl GlobPattern {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.pattern.matches_with(name, opts)
    }
}

impl fmt::Display for GlobPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Selector {
    /// Parses one argument: `a/b.bin`, `a/b.bin@ROOT`, `data/` (a prefix), `models/*.bin` (a
    /// glob). A name whose part after the last `@` is all hex digits is a pinned name, so a
    /// file literally named `x@cafe` is asked for as `x@cafe@ROOT`.
    pub fn parse(arg: &str) -> Result<Selector, SelectError> {
        if arg.is_empty() {
            return Err(SelectError::Empty);
        }
        if arg.contains(['*', '?', '[']) {
            let pattern = glob::Pattern::new(arg)
                .map_err(|e| SelectError::BadGlob { glob: arg.to_owned(), reason: e.msg.to_owned() })?;
            return Ok(Selector::Glob(GlobPattern { text: arg.to_owned(), pattern }));
        }
        if let Some(prefix) = arg.strip_suffix('/') {
            // The prefix must be a valid folder name itself, so `../` or `/etc/` never match.
            proto::validate_name(prefix)
                .map_err(|reason| SelectError::InvalidName { name: arg.to_owned(), reason: reason.to_string() })?;
            return Ok(Selector::Prefix(arg.to_owned()));
        }
        let (name, root) = match arg.rsplit_once('@') {
            Some((name, root)) if !root.is_empty() && root.chars().all(|c| c.is_ascii_hexdigit()) => {
                (name, Some(parse_root(root)?))
            }
            _ => (arg, None),
        };
        proto::validate_name(name)
            .map_err(|reason| SelectError::InvalidName { name: name.to_owned(), reason: reason.to_string() })?;
        Ok(Selector::Name { name: name.to_owned(), root })
    }

    /// Whether a listed file of this name matches (names and roots are matched by the tracker's
    /// answers, not here).
    pub fn matches_name(&self, name: &str) -> bool {
        match self {
            Selector::Name { name: n, .. } => n == name,
            Selector::Prefix(p) => name.starts_with(p.as_str()),
            Selector::Glob(g) => g.matches(name),
            Selector::Root(_) => false,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Name { name, root: Some(r) } => write!(f, "{name}@{r}"),
            Selector::Name { name, root: None } => f.write_str(name),
            Selector::Prefix(p) => f.write_str(p),
            Selector::Glob(g) => g.fmt(f),
            Selector::Root(r) => write!(f, "--root {r}"),
        }
    }
}

/// Parses a manifest: one `ROOT  NAME` line per file (64 hex digits, two spaces or a space and
/// `*`, the name), as `b3sum` and `peer manifest` write it. Blank lines and lines starting with
/// `#` are skipped. Every line is checked before anything is fetched: a bad line anywhere refuses
/// the whole manifest, naming the line.
pub fn parse_manifest(text: &str) -> Result<Vec<(Hash, String)>, SelectError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| SelectError::Manifest { line: line_no, reason: reason.to_owned() };
        if line.starts_with('\\') {
            // b3sum escapes names holding a backslash or a newline; no valid name holds either.
            return Err(bad("escaped name (a backslash or newline cannot be in a shared name)"));
        }
        let (root, name) = match (line.get(..64), line.get(64..)) {
            (Some(root), Some(rest)) => {
                let name = rest.strip_prefix("  ").or_else(|| rest.strip_prefix(" *"));
                (root, name.ok_or_else(|| bad("expected two spaces between the root and the name"))?)
            }
            _ => return Err(bad("expected a 64-digit hex root, two spaces and a name")),
        };
        let root: Hash = root.parse().map_err(|_| bad("the root is not 64 hex digits"))?;
        proto::validate_name(name).map_err(|e| bad(&format!("unsafe or invalid name {name:?}: {e}")))?;
        match seen.insert(name.to_owned(), root) {
            Some(other) if other != root => return Err(bad(&format!("{name:?} is listed twice with different roots"))),
            Some(_) => continue,
            None => out.push((root, name.to_owned())),
        }
    }
    if out.is_empty() {
        return Err(SelectError::EmptyManifest);
    }
    Ok(out)
}

/// Writes manifest lines for `files` (root, name), sorted by name: `b3sum --check` reads them.
pub fn format_manifest<'a>(files: impl IntoIterator<Item = (&'a Hash, &'a str)>) -> String {
    let mut files: Vec<_> = files.into_iter().collect();
    files.sort_by(|a, b| a.1.cmp(b.1));
    files.iter().map(|(root, name)| format!("{root}  {name}\n")).collect()
}

/// Why what was asked for cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// An empty argument.
    #[error("an empty name was given")]
    Empty,
    /// A name (or prefix) that could not be a shared file.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A glob that does not parse.
    #[error("invalid pattern {glob:?}: {reason}")]
    BadGlob {
        /// The pattern.
        glob: String,
        /// Why.
        reason: String,
    },
    /// A root with a character that is not a hex digit.
    #[error("root {root:?} is not hex: {bad:?} is not a hex digit")]
    RootNotHex {
        /// The root as given.
        root: String,
        /// The first bad character.
        bad: char,
    },
    /// A root prefix too short to be trusted, or longer than a root.
    #[error("root {root:?} has {len} hex digits: give at least {MIN_ROOT_PREFIX} (a prefix) and at most 64 (the whole root)")]
    RootLength {
        /// The root as given.
        root: String,
        /// Its length.
        len: usize,
    },
    /// A manifest line that does not parse.
    #[error("manifest line {line}: {reason}")]
    Manifest {
        /// The line number, from 1.
        line: usize,
        /// Why.
        reason: String,
    },
    /// A manifest that lists nothing.
    #[error("the manifest lists no files")]
    EmptyManifest,
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
