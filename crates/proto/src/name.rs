//! File names as they travel on the wire: relative paths with `/` separators. Every name that
//! arrives from the network is validated here before anything else looks at it; an invalid name is
//! rejected, never "cleaned", so two parties can never disagree about which file a name means.

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_COMPONENT_LEN, MAX_NAME_LEN};

/// The first path component reserved for bookkeeping inside a share folder (hash cache, partial
/// downloads). No shared file may live under it.
pub const RESERVED_DIR: &str = ".p2p";

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than the limit.
    #[error("name is {len} bytes, limit {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name starts with `/`.
    #[error("name is an absolute path")]
    Absolute,
    /// The name starts with a drive prefix such as `C:`.
    #[error("name starts with a drive prefix")]
    DrivePrefix,
    /// The name contains `\`, which some systems treat as a separator.
    #[error("name contains a backslash")]
    Backslash,
    /// The name contains NUL or another control character.
    #[error("name contains control character {code:#04x}")]
    ControlChar {
        /// The offending character's code point.
        code: u32,
    },
    /// Two separators in a row, or a trailing separator.
    #[error("name has an empty path component")]
    EmptyComponent,
    /// A `.` or `..` component.
    #[error("name has a '.' or '..' component")]
    DotComponent,
    /// One component is longer than the limit.
    #[error("a path component is {len} bytes, limit {max}")]
    ComponentTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name lies under the reserved bookkeeping folder.
    #[error("name lies under the reserved folder '{RESERVED_DIR}'")]
    Reserved,
}

/// Checks that `name` is a safe relative path: non-empty, at most [`MAX_NAME_LEN`] bytes, `/`
/// separated components that are non-empty, not `.` or `..`, at most [`MAX_COMPONENT_LEN`] bytes,
/// free of control characters and backslashes, not absolute, no drive prefix, and not under
/// [`RESERVED_DIR`]. A name that passes joins to a path inside any root folder.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len(), max: MAX_NAME_LEN });
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(NameError::ControlChar { code: c as u32 });
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err(NameError::DrivePrefix);
    }
    for (i, comp) in name.split('/').enumerate() {
        match comp {
            "" => return Err(NameError::EmptyComponent),
            "." | ".." => return Err(NameError::DotComponent),
            c if c.len() > MAX_COMPONENT_LEN => {
                return Err(NameError::ComponentTooLong { len: c.len(), max: MAX_COMPONENT_LEN })
            }
            // Case-insensitively: on a case-insensitive file system ".P2P" is the same folder.
            c if i == 0 && c.eq_ignore_ascii_case(RESERVED_DIR) => return Err(NameError::Reserved),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["a", "climbing.jpg", "dir/sub/file.bin", ".bashrc", "a..b", "x/.hidden", "12:30.log", "é/ü"] {
            assert_eq!(validate_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_every_bad_case() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let long_comp = format!("d/{}", "c".repeat(MAX_COMPONENT_LEN + 1));
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            (&long, NameError::TooLong { len: MAX_NAME_LEN + 1, max: MAX_NAME_LEN }),
            ("/abs", NameError::Absolute),
            ("/", NameError::Absolute),
            ("../../etc/passwd", NameError::DotComponent),
            ("a/../../b", NameError::DotComponent),
            (".", NameError::DotComponent),
            ("a/./b", NameError::DotComponent),
            ("..\\..\\x", NameError::Backslash),
            ("C:\\x", NameError::Backslash),
            ("C:x", NameError::DrivePrefix),
            ("x\0y", NameError::ControlChar { code: 0 }),
            ("x\ny", NameError::ControlChar { code: 10 }),
            ("x\u{7f}", NameError::ControlChar { code: 0x7f }),
            ("a//b", NameError::EmptyComponent),
            ("a/", NameError::EmptyComponent),
            (&long_comp, NameError::ComponentTooLong { len: MAX_COMPONENT_LEN + 1, max: MAX_COMPONENT_LEN }),
            (".p2p/cache", NameError::Reserved),
            (".p2p", NameError::Reserved),
            (".P2P/partial/x", NameError::Reserved),
        ];
        for (name, want) in cases {
            assert_eq!(validate_name(name).as_ref(), Err(want), "{name:?}");
        }
    }

    proptest! {
        /// An accepted name, joined to a root, never leaves it.
        #[test]
        fn accepted_names_stay_inside(name in "[a-z./\\\\:\\x00-\\x1f]{0,40}") {
            if validate_name(&name).is_ok() {
                let root = std::path::Path::new("/srv/share");
                let joined = root.join(&name);
                prop_assert!(joined.starts_with(root));
                for c in joined.strip_prefix(root).unwrap().components() {
                    prop_assert!(matches!(c, std::path::Component::Normal(_)), "{name:?}");
                }
            }
        }
    }
}
