//! Byte quantities as people write them on command lines (`1500`, `500k`, `20MiB`, `1.5G`), for
//! both binaries' size and rate options. Decimal units are powers of 1000, binary ones of 1024.

/// Parses a byte count with an optional unit: none or `B`; `k`/`KB` (10^3), `M`/`MB` (10^6),
/// `G`/`GB` (10^9); `Ki`/`KiB` (2^10), `Mi`/`MiB` (2^20), `Gi`/`GiB` (2^30); any letter case; a
/// decimal fraction of up to 9 digits (rounded down to whole bytes). Integer arithmetic
/// throughout, so large values are exact or refused, never rounded.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gi" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use k, M, G, Ki, Mi, Gi)")),
    };
    let invalid = || format!("invalid number in {s:?}");
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || frac.len() > 9 {
        return Err(invalid());
    }
    let whole: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| invalid())? };
    let out_of_range = || format!("{s:?} is out of range");
    let mut value = whole.checked_mul(mult).ok_or_else(out_of_range)?;
    if !frac.is_empty() {
        let digits: u64 = frac.parse().map_err(|_| invalid())?;
        // At most 9 digits, so neither product overflows.
        let scale = 10u64.pow(frac.len() as u32);
        value = value.checked_add(digits * mult / scale).ok_or_else(out_of_range)?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_fractions_and_limits() {
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes(" 500k "), Ok(500_000));
        assert_eq!(parse_bytes("500KB"), Ok(500_000));
        assert_eq!(parse_bytes("20MiB"), Ok(20 << 20));
        assert_eq!(parse_bytes("20mi"), Ok(20 << 20));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("0.5KiB"), Ok(512));
        assert_eq!(parse_bytes(".25k"), Ok(250));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("0.1"), Ok(0));
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
        for bad in ["", "k", ".", "10x", "-5", "1e3", "1.2.3", "1.0000000001", "99999999999999999999", "99999999999G"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
