//! Kubernetes-style resource quantities: `250m` or `0.5` CPUs, `64Mi` or
//! `128M` of memory.
//!
//! CPU is kept as millicores and memory as bytes, both `u64`, so resource
//! arithmetic is exact and the same on every server.

/// Why a quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity")]
    NotAQuantity(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
    #[error("{0:?} is finer than one millicore")]
    TooFine(String),
}

/// Parses a CPU amount into millicores: `250m`, `0.5`, `2`.
pub fn parse_cpu(text: &str) -> Result<u64, QuantityError> {
    let t = text.trim();
    if let Some(m) = t.strip_suffix('m') {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QuantityError::NotAQuantity(text.to_string()));
        }
        return m
            .parse::<u64>()
            .map_err(|_| QuantityError::TooLarge(text.to_string()));
    }
    let (whole, frac) =
        split_decimal(t).ok_or_else(|| QuantityError::NotAQuantity(text.to_string()))?;
    if frac.len() > 3 && frac[3..].bytes().any(|b| b != b'0') {
        return Err(QuantityError::TooFine(text.to_string()));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| QuantityError::TooLarge(text.to_string()))?
    };
    let mut milli_frac = 0u64;
    for (i, b) in frac.bytes().take(3).enumerate() {
        milli_frac += u64::from(b - b'0') * 10u64.pow(2 - i as u32);
    }
    whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(milli_frac))
        .ok_or_else(|| QuantityError::TooLarge(text.to_string()))
}

/// Parses a memory amount into bytes: `67108864`, `64Mi`, `1.5Gi`, `128M`, `1k`.
pub fn parse_memory(text: &str) -> Result<u64, QuantityError> {
    let t = text.trim();
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(s, m)| t.strip_suffix(s).map(|n| (n, *m)))
        .unwrap_or((t, 1));
    let (whole, frac) =
        split_decimal(number).ok_or_else(|| QuantityError::NotAQuantity(text.to_string()))?;
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| QuantityError::TooLarge(text.to_string()))?
    };
    let mut bytes = whole
        .checked_mul(multiplier)
        .ok_or_else(|| QuantityError::TooLarge(text.to_string()))?;
    if !frac.is_empty() {
        // Fractions are computed in u128 and rounded up to whole bytes.
        let digits = frac.len().min(18) as u32;
        let frac_value: u128 = frac[..digits as usize]
            .parse()
            .map_err(|_| QuantityError::NotAQuantity(text.to_string()))?;
        let scale = 10u128.pow(digits);
        let extra = (frac_value * u128::from(multiplier)).div_ceil(scale);
        bytes = u64::try_from(extra)
            .ok()
            .and_then(|e| bytes.checked_add(e))
            .ok_or_else(|| QuantityError::TooLarge(text.to_string()))?;
    }
    Ok(bytes)
}

/// Splits `"12.50"` into `("12", "50")`; `None` unless it is digits with at
/// most one dot and at least one digit.
fn split_decimal(t: &str) -> Option<(&str, &str)> {
    let (whole, frac) = match t.split_once('.') {
        Some((w, f)) => (w, f),
        None => (t, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return None;
    }
    Some((whole, frac))
}

/// Formats millicores the way an operator writes them: `250m`, `2`.
pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// Formats bytes with the largest binary suffix that divides them exactly,
/// falling back to one decimal of the nearest suffix for display.
pub fn format_memory(bytes: u64) -> String {
    const UNITS: &[(&str, u64)] = &[
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (suffix, size) in UNITS {
        if bytes >= *size && bytes.is_multiple_of(*size) {
            return format!("{}{}", bytes / size, suffix);
        }
    }
    for (suffix, size) in UNITS {
        if bytes >= *size {
            return format!("{:.1}{}", bytes as f64 / *size as f64, suffix);
        }
    }
    format!("{bytes}")
}

/// Formats bytes for people: the largest binary unit, one decimal at
/// most (`23.5Gi`, `64Mi`, `512`).
pub fn format_memory_human(bytes: u64) -> String {
    const UNITS: &[(&str, u64)] = &[
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (suffix, size) in UNITS {
        if bytes >= *size {
            let tenths = (bytes as u128 * 10 + *size as u128 / 2) / *size as u128;
            return if tenths.is_multiple_of(10) {
                format!("{}{}", tenths / 10, suffix)
            } else {
                format!("{}.{}{}", tenths / 10, tenths % 10, suffix)
            };
        }
    }
    format!("{bytes}")
}

/// Like [`format_memory`], but never rounds: falls back to plain bytes.
pub(crate) fn format_memory_exact(bytes: u64) -> String {
    let shown = format_memory(bytes);
    if shown.contains('.') {
        bytes.to_string()
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_accepts_millicores_and_decimal_cores() {
        assert_eq!(parse_cpu("250m"), Ok(250));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu(".25"), Ok(250));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("1.250"), Ok(1250));
    }

    #[test]
    fn cpu_refuses_garbage_and_sub_millicore_precision() {
        assert!(matches!(
            parse_cpu("fast"),
            Err(QuantityError::NotAQuantity(_))
        ));
        assert!(matches!(
            parse_cpu("m"),
            Err(QuantityError::NotAQuantity(_))
        ));
        assert!(matches!(
            parse_cpu("-1"),
            Err(QuantityError::NotAQuantity(_))
        ));
        assert!(matches!(
            parse_cpu("0.0005"),
            Err(QuantityError::TooFine(_))
        ));
        assert!(matches!(
            parse_cpu("99999999999999999999"),
            Err(QuantityError::TooLarge(_))
        ));
    }

    #[test]
    fn memory_understands_binary_and_decimal_suffixes() {
        assert_eq!(parse_memory("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory("128M"), Ok(128_000_000));
        assert_eq!(parse_memory("1000"), Ok(1000));
        assert_eq!(parse_memory("2k"), Ok(2000));
    }

    #[test]
    fn memory_refuses_unknown_suffix_with_the_value_in_the_message() {
        let err = parse_memory("64Q").unwrap_err();
        assert_eq!(err.to_string(), "\"64Q\" is not a quantity");
        assert!(parse_memory("20000Ei").is_err());
    }

    #[test]
    fn formatting_round_trips_exact_values() {
        for m in ["250m", "2", "1500m"] {
            assert_eq!(format_cpu(parse_cpu(m).unwrap()), m);
        }
        for m in ["64Mi", "1Gi", "3Ki"] {
            assert_eq!(format_memory(parse_memory(m).unwrap()), m);
        }
        assert_eq!(format_memory(1_500_000), "1.4Mi");
    }

    #[test]
    fn human_memory_is_short() {
        assert_eq!(format_memory_human(24_683_652 * 1024), "23.5Gi");
        assert_eq!(format_memory_human(64 << 20), "64Mi");
        assert_eq!(format_memory_human(512), "512");
    }
}
