//! Quantities as Kubernetes writes them: CPU in cores or millicores (`500m`, `1`,
//! `0.25`) and memory in bytes with binary or decimal suffixes (`64Mi`, `1Gi`, `500M`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A quantity string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} quantity {input:?}: {reason}")]
pub struct QuantityError {
    /// `cpu` or `memory`.
    pub kind: &'static str,
    /// What the user wrote.
    pub input: String,
    /// What is wrong with it and what would be right.
    pub reason: String,
}

fn err(kind: &'static str, input: &str, reason: impl Into<String>) -> QuantityError {
    QuantityError { kind, input: input.to_string(), reason: reason.into() }
}

/// Splits `"1.5Gi"` into a decimal number scaled by 1000 (to keep three decimals
/// exactly) and the suffix.
fn split_number<'a>(kind: &'static str, input: &'a str) -> Result<(u128, &'a str), QuantityError> {
    let s = input.trim();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    if num.is_empty() {
        return Err(err(kind, input, "expected a number, such as 500m or 64Mi"));
    }
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return Err(err(kind, input, "malformed number"));
    }
    if frac.len() > 3 {
        return Err(err(kind, input, "at most three decimal places are supported"));
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| err(kind, input, "number too large"))? };
    let mut milli = int.checked_mul(1000).ok_or_else(|| err(kind, input, "number too large"))?;
    if !frac.is_empty() {
        let padded = format!("{frac:0<3}");
        let frac: u128 = padded.parse().map_err(|_| err(kind, input, "malformed number"))?;
        milli = milli.checked_add(frac).ok_or_else(|| err(kind, input, "number too large"))?;
    }
    Ok((milli, suffix))
}

/// Parses a CPU quantity into millicores: `500m` → 500, `1` → 1000, `0.5` → 500.
pub fn parse_cpu(input: &str) -> Result<u64, QuantityError> {
    let (milli, suffix) = split_number("cpu", input)?;
    let millicores = match suffix {
        "" => milli,
        "m" => {
            if milli % 1000 != 0 {
                return Err(err("cpu", input, "millicores must be a whole number"));
            }
            milli / 1000
        }
        other => {
            return Err(err(
                "cpu",
                input,
                format!("unknown suffix {other:?}; write cores (1, 0.5) or millicores (500m)"),
            ));
        }
    };
    u64::try_from(millicores).map_err(|_| err("cpu", input, "number too large"))
}

/// Parses a memory quantity into bytes: `64Mi`, `1Gi`, `500M`, `1024`.
pub fn parse_memory(input: &str) -> Result<u64, QuantityError> {
    let (milli, suffix) = split_number("memory", input)?;
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "m" => {
            return Err(err("memory", input, "`m` means thousandths; did you mean Mi (mebibytes)?"));
        }
        other => {
            return Err(err("memory", input, format!("unknown suffix {other:?}; use Ki, Mi, Gi, Ti (or k, M, G, T)")));
        }
    };
    let scaled = milli.checked_mul(multiplier).ok_or_else(|| err("memory", input, "number too large"))?;
    if scaled % 1000 != 0 {
        return Err(err("memory", input, "memory must come to a whole number of bytes"));
    }
    u64::try_from(scaled / 1000).map_err(|_| err("memory", input, "number too large"))
}

/// Formats millicores the way a user would write them: `500m`, `2`.
pub fn format_cpu(millicores: u64) -> String {
    if millicores.is_multiple_of(1000) { format!("{}", millicores / 1000) } else { format!("{millicores}m") }
}

/// Formats bytes with the largest binary suffix that divides them exactly, or with
/// one decimal when none does: `64Mi`, `1.5Gi`, `1000`.
pub fn format_memory(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (suffix, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{suffix}", bytes / size);
        }
    }
    for (suffix, size) in UNITS {
        if bytes >= size {
            return format!("{:.1}{suffix}", bytes as f64 / size as f64);
        }
    }
    bytes.to_string()
}

/// Formats bytes exactly, for what is stored and sent: the largest binary
/// suffix that divides them, else the plain number (`format_memory`'s `1.5Gi`
/// for display would not read back as the same bytes, or at all).
pub fn format_memory_exact(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (suffix, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{suffix}", bytes / size);
        }
    }
    bytes.to_string()
}

macro_rules! quantity_newtype {
    ($name:ident, $parse:ident, $format:ident, $exact:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&$format(self.0))
            }
        }

        impl std::str::FromStr for $name {
            type Err = QuantityError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $parse(s).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&$exact(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Int(u64),
                    Float(f64),
                    Str(String),
                }
                let text = match Raw::deserialize(d)? {
                    Raw::Int(i) => i.to_string(),
                    Raw::Float(f) => f.to_string(),
                    Raw::Str(s) => s,
                };
                // The message quotes the text, which is how a manifest finds its place.
                $parse(&text).map($name).map_err(serde::de::Error::custom)
            }
        }
    };
}

quantity_newtype!(Cpu, parse_cpu, format_cpu, format_cpu, "A CPU quantity in millicores, written `500m` or `1`.");
quantity_newtype!(
    Memory,
    parse_memory,
    format_memory,
    format_memory_exact,
    "A memory quantity in bytes, written `64Mi` or `1Gi`."
);

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn show(inputs: &[&str], f: fn(&str) -> Result<u64, QuantityError>) -> String {
        inputs
            .iter()
            .map(|i| match f(i) {
                Ok(v) => format!("{i:?} => {v}\n"),
                Err(e) => format!("{i:?} => error: {e}\n"),
            })
            .collect()
    }

    /// Found by the api_requests fuzzer: 744073709551615 bytes were sent and
    /// stored as "676.7Ti", which does not read back (not a whole number of
    /// bytes): a deployment accepted with such a memory could not be loaded.
    #[test]
    fn memory_survives_a_json_round_trip_exactly() {
        for bytes in [744_073_709_551_615, 1_000_001, 1023, 1024, 1536 << 20, u64::MAX] {
            let text = serde_json::to_string(&Memory(bytes)).expect("encode");
            let again: Memory = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{bytes} as {text}: {e}"));
            assert_eq!(again, Memory(bytes), "{text}");
        }
        assert_eq!(Memory(1_000_001).to_string(), "976.6Ki", "display stays short");
    }

    #[test]
    fn cpu() {
        let out = show(&["500m", "1", "0.5", "2.25", "1500m", "0.0005", "abc", "1.5m", "2x", "", "1.2.3"], parse_cpu);
        expect![[r#"
            "500m" => 500
            "1" => 1000
            "0.5" => 500
            "2.25" => 2250
            "1500m" => 1500
            "0.0005" => error: invalid cpu quantity "0.0005": at most three decimal places are supported
            "abc" => error: invalid cpu quantity "abc": expected a number, such as 500m or 64Mi
            "1.5m" => error: invalid cpu quantity "1.5m": millicores must be a whole number
            "2x" => error: invalid cpu quantity "2x": unknown suffix "x"; write cores (1, 0.5) or millicores (500m)
            "" => error: invalid cpu quantity "": expected a number, such as 500m or 64Mi
            "1.2.3" => error: invalid cpu quantity "1.2.3": malformed number
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn memory() {
        let out = show(&["64Mi", "1Gi", "1.5Gi", "500M", "1024", "1k", "64m", "3Qi", "99999999999Ti"], parse_memory);
        expect![[r#"
            "64Mi" => 67108864
            "1Gi" => 1073741824
            "1.5Gi" => 1610612736
            "500M" => 500000000
            "1024" => 1024
            "1k" => 1000
            "64m" => error: invalid memory quantity "64m": `m` means thousandths; did you mean Mi (mebibytes)?
            "3Qi" => error: invalid memory quantity "3Qi": unknown suffix "Qi"; use Ki, Mi, Gi, Ti (or k, M, G, T)
            "99999999999Ti" => error: invalid memory quantity "99999999999Ti": number too large
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn huge_numbers_are_too_large_not_a_panic() {
        // u128::MAX / 1000 with three decimals: the integer part scales, the fraction overflowed.
        let edge = "340282366920938463463374607431768211.999";
        for f in [parse_cpu, parse_memory] {
            let e = f(edge).expect_err("too large");
            assert!(e.to_string().ends_with("number too large"), "{e}");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["500m", "1", "2", "1500m"] {
            assert_eq!(format_cpu(parse_cpu(s).unwrap()), s);
        }
        for s in ["64Mi", "1Gi", "1536Mi", "1000"] {
            assert_eq!(format_memory(parse_memory(s).unwrap()), s);
        }
    }
}
