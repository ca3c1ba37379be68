//! Parsing of Kubernetes resource quantities (`100m`, `1.5`, `64Mi`, `1e3`) into numbers.
//!
//! The operator needs the numbers twice: to reject a malformed or inverted `resources` block
//! with a message naming the field, and to express CPU in millicores and memory in bytes for
//! scaling policies. Pure functions, no I/O.

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a Kubernetes quantity (examples: 500m, 2, 1.5, 256Mi, 1Gi): {reason}")]
pub struct QuantityError {
    value: String,
    reason: &'static str,
}

/// Parses a quantity into its value in base units (cores, bytes, ...).
pub fn parse(text: &str) -> Result<f64, QuantityError> {
    let err = |reason| QuantityError { value: text.to_owned(), reason };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let number_end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '+' || c == '-') && i == 0)))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(number_end);
    if number.is_empty() || number == "+" || number == "-" || number == "." {
        return Err(err("it does not start with a number"));
    }
    let mantissa: f64 = number.parse().map_err(|_| err("the number is malformed"))?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| err("the exponent is malformed"))?;
            10f64.powi(e)
        }
        _ => return Err(err("the unit suffix is unknown")),
    };
    let value = mantissa * factor;
    if !value.is_finite() {
        return Err(err("it is out of range"));
    }
    Ok(value)
}

/// CPU in millicores, rounded up as Kubernetes does.
pub fn millicores(text: &str) -> Result<i64, QuantityError> {
    parse(text).map(|cores| (cores * 1000.0).ceil() as i64)
}

/// Memory (or any countable resource) in whole units, rounded up.
pub fn units(text: &str) -> Result<i64, QuantityError> {
    parse(text).map(|v| v.ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("100m", 0.1)]
    #[case("1", 1.0)]
    #[case("1.5", 1.5)]
    #[case("64Mi", 64.0 * 1024.0 * 1024.0)]
    #[case("1Gi", 1024.0 * 1024.0 * 1024.0)]
    #[case("2k", 2000.0)]
    #[case("1e3", 1000.0)]
    #[case("+5", 5.0)]
    #[case(" 3 ", 3.0)]
    fn parses(#[case] text: &str, #[case] expected: f64) {
        assert!((parse(text).unwrap() - expected).abs() < 1e-9, "{text}");
    }

    #[rstest]
    #[case("")]
    #[case("abc")]
    #[case("1.2.3")]
    #[case("10 cores")]
    #[case("5Xi")]
    #[case("m")]
    #[case("1e")]
    fn rejects(#[case] text: &str) {
        let e = parse(text).unwrap_err();
        assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
    }

    #[test]
    fn converts_cpu_and_memory() {
        assert_eq!(millicores("250m").unwrap(), 250);
        assert_eq!(millicores("1.5").unwrap(), 1500);
        assert_eq!(units("128Mi").unwrap(), 134_217_728);
    }
}
