//! Find Root's prefix: the first hex digits of a root hash, checked once, then compared with
//! roots nibble by nibble (an odd number of digits ends in half a byte).
//!
//! The tracker parses the request's string with [`RootPrefix::parse`]; a client can call it too,
//! to refuse a bad prefix before sending it.

use crate::limits::{MAX_ROOT_PREFIX_DIGITS, MIN_ROOT_PREFIX_DIGITS};
use crate::meta::Hash;
use crate::tracker::RequestError;

/// A valid Find Root prefix: [`MIN_ROOT_PREFIX_DIGITS`] to [`MAX_ROOT_PREFIX_DIGITS`] hex digits,
/// either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootPrefix {
    /// The digits as bytes, the rest zero: the lowest root that starts with the prefix.
    lowest: [u8; 32],
    /// How many hex digits (nibbles) the prefix has.
    digits: usize,
}

impl RootPrefix {
    /// Parses `s`, or refuses it with [`RequestError::InvalidRootPrefix`], which carries only its
    /// length: the string came from the network and may be as long as a frame.
    pub fn parse(s: &str) -> Result<RootPrefix, RequestError> {
        let refused = || RequestError::InvalidRootPrefix { prefix_len: u32::try_from(s.len()).unwrap_or(u32::MAX) };
        // The length first: a huge string is refused without a look at its bytes.
        if !(MIN_ROOT_PREFIX_DIGITS..=MAX_ROOT_PREFIX_DIGITS).contains(&s.len()) {
            return Err(refused());
        }
        let mut lowest = [0u8; 32];
        for (i, b) in s.bytes().enumerate() {
            // Bytes, not chars: a byte of a multi-byte character is no hex digit either.
            let nibble = char::from(b).to_digit(16).ok_or_else(refused)? as u8;
            lowest[i / 2] |= if i % 2 == 0 { nibble << 4 } else { nibble };
        }
        Ok(RootPrefix { lowest, digits: s.len() })
    }

    /// The whole root, as a prefix of 64 digits.
    pub fn exact(root: &Hash) -> RootPrefix {
        RootPrefix { lowest: root.0, digits: MAX_ROOT_PREFIX_DIGITS }
    }

    /// Whether one of the two is a prefix of the other: the roots they match are then not
    /// disjoint (both may name the same content).
    pub fn overlaps(&self, other: &RootPrefix) -> bool {
        let (short, long) = if self.digits <= other.digits { (self, other) } else { (other, self) };
        short.matches(&long.lowest())
    }

    /// The lowest root that starts with this prefix: every root that does sorts from here on,
    /// contiguously.
    pub fn lowest(&self) -> Hash {
        Hash(self.lowest)
    }

    /// How many hex digits it has.
    pub fn digits(&self) -> usize {
        self.digits
    }

    /// Whether `root` starts with this prefix.
    pub fn matches(&self, root: &Hash) -> bool {
        let (whole, half) = (self.digits / 2, self.digits % 2 == 1);
        root.0[..whole] == self.lowest[..whole] && (!half || root.0[whole] >> 4 == self.lowest[whole] >> 4)
    }
}

impl std::fmt::Display for RootPrefix {
    /// The digits, lowercase.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = Hash(self.lowest).to_string();
        f.write_str(&hex[..self.digits])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(len: u32) -> Result<RootPrefix, RequestError> {
        Err(RequestError::InvalidRootPrefix { prefix_len: len })
    }

    #[test]
    fn lengths_and_digits_are_checked() {
        assert_eq!(RootPrefix::parse(&"a".repeat(15)), refused(15));
        assert_eq!(RootPrefix::parse(&"a".repeat(65)), refused(65));
        assert_eq!(RootPrefix::parse(""), refused(0));
        assert_eq!(RootPrefix::parse("0123456789abcdeg"), refused(16));
        assert_eq!(RootPrefix::parse("0123456789abcde "), refused(16));
        // Sixteen bytes, but eight characters of two bytes each.
        assert_eq!(RootPrefix::parse(&"é".repeat(8)), refused(16));
        assert_eq!(RootPrefix::parse(&"a".repeat(16)).map(|p| p.digits()), Ok(16));
        assert_eq!(RootPrefix::parse(&"F".repeat(64)).map(|p| p.lowest()), Ok(Hash([0xff; 32])));
    }

    #[test]
    fn matching_is_by_nibble_and_ignores_case() {
        let mut root = [0u8; 32];
        root[..9].copy_from_slice(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x5a]);
        let root = Hash(root);
        for s in ["0123456789abcdef", "0123456789ABCDEF", "0123456789abcdef5", "0123456789abcdef5a"] {
            assert!(RootPrefix::parse(s).unwrap().matches(&root), "{s}");
        }
        for s in ["0123456789abcdee", "0123456789abcdef6", "0123456789abcdef5b"] {
            assert!(!RootPrefix::parse(s).unwrap().matches(&root), "{s}");
        }
        let p = RootPrefix::parse("0123456789abcdef5").unwrap();
        assert_eq!(p.lowest().0[..9], [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x50]);
        assert!(p.lowest().0[9..].iter().all(|&b| b == 0));
        let whole = root.to_string();
        assert!(RootPrefix::parse(&whole).unwrap().matches(&root));
        assert_eq!(RootPrefix::parse(&whole).unwrap().lowest(), root);
    }
}
