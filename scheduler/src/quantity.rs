//! Kubernetes resource quantities ("100m", "1Gi", "2.5", "1e3") as integers of
//! thousandths, the one unit the fit checks compare in: cpu in millicores, memory and
//! storage in milli-bytes, counts in milli-units. Rounded up, as upstream's `MilliValue`.

/// Parses a quantity into thousandths of its base unit; `None` for what the apiserver's
/// validation would have refused.
pub fn parse_milli(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, suffix) = split_number(s)?;
    let (negative, digits) = match num.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // mantissa / 10^frac_len, times the suffix's multiplier (a binary power, or a power
    // of ten that may be negative), times 1000 for thousandths.
    let mantissa: i128 = format!("{int_part}{frac_part}").parse().ok()?;
    let mut num: i128 = mantissa.checked_mul(1000)?;
    let mut den: i128 = 10i128.checked_pow(u32::try_from(frac_part.len()).ok()?)?;
    match suffix_multiplier(suffix)? {
        Multiplier::Binary(m) => num = num.checked_mul(m)?,
        Multiplier::Decimal(e) if e >= 0 => {
            num = num.checked_mul(10i128.checked_pow(e.unsigned_abs())?)?
        }
        Multiplier::Decimal(e) => den = den.checked_mul(10i128.checked_pow(e.unsigned_abs())?)?,
    }
    let v = (num + den - 1) / den;
    let v = if negative { -v } else { v };
    Some(i64::try_from(v).unwrap_or(if negative { i64::MIN } else { i64::MAX }))
}

enum Multiplier {
    Binary(i128),
    Decimal(i32),
}

/// Splits "1.5Gi" into ("1.5", "Gi").
fn split_number(s: &str) -> Option<(&str, &str)> {
    let end = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || ((*c == '-' || *c == '+') && *i == 0)))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((&s[..end], &s[end..]))
}

fn suffix_multiplier(suffix: &str) -> Option<Multiplier> {
    use Multiplier::*;
    Some(match suffix {
        "" => Decimal(0),
        "n" => Decimal(-9),
        "u" => Decimal(-6),
        "m" => Decimal(-3),
        "k" => Decimal(3),
        "M" => Decimal(6),
        "G" => Decimal(9),
        "T" => Decimal(12),
        "P" => Decimal(15),
        "E" => Decimal(18),
        "Ki" => Binary(1 << 10),
        "Mi" => Binary(1 << 20),
        "Gi" => Binary(1 << 30),
        "Ti" => Binary(1 << 40),
        "Pi" => Binary(1 << 50),
        "Ei" => Binary(1 << 60),
        e => {
            let exp = e.strip_prefix('e').or_else(|| e.strip_prefix('E'))?;
            Decimal(exp.parse().ok()?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_milli;

    #[test]
    fn quantities() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("2.5"), Some(2500));
        assert_eq!(parse_milli("1Ki"), Some(1024 * 1000));
        assert_eq!(parse_milli("1Gi"), Some((1i64 << 30) * 1000));
        assert_eq!(parse_milli("1k"), Some(1_000_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("1n"), Some(1), "rounded up to a thousandth");
        assert_eq!(parse_milli(".5"), Some(500));
        assert_eq!(parse_milli("110"), Some(110_000));
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1Qi"), None);
        assert_eq!(parse_milli(""), None);
    }
}
