//! Validation: every rule names the field it is about and says why the value is refused.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// One broken rule: the field's path (`spec.cidr`) and the reason in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A resource that was refused, with every rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    pub kind: String,
    pub name: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} is invalid: ", self.kind, self.name)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Invalid {
    /// True when some error is about `field` (exactly, or a sub-field of it).
    pub fn mentions(&self, field: &str) -> bool {
        self.errors
            .iter()
            .any(|e| e.field == field || e.field.starts_with(&format!("{field}.")))
    }
}

/// Checks one object on its own. Rules that need other objects (pool overlap) are separate
/// functions that take those objects.
pub trait Validate {
    /// All broken rules; empty when the object is valid.
    fn field_errors(&self) -> Vec<FieldError>;

    fn validate(&self) -> Result<(), Invalid>
    where
        Self: kube::Resource<DynamicType = ()>,
    {
        let errors = self.field_errors();
        if errors.is_empty() {
            return Ok(());
        }
        Err(Invalid {
            kind: Self::kind(&()).into_owned(),
            name: self.meta().name.clone().unwrap_or_default(),
            errors,
        })
    }
}

/// Parses a CIDR that must have no host bits set (`10.0.0.1/24` is refused, with a hint).
pub fn parse_network_cidr(
    field: &str,
    value: &str,
    errors: &mut Vec<FieldError>,
) -> Option<IpNetwork> {
    let net: IpNetwork = match value.parse() {
        Ok(n) => n,
        Err(_) => {
            errors.push(FieldError::new(
                field,
                format!("{value:?} is not a CIDR (address/prefix)"),
            ));
            return None;
        }
    };
    if !value.contains('/') {
        errors.push(FieldError::new(
            field,
            format!("{value:?} has no prefix length"),
        ));
        return None;
    }
    if net.ip() != net.network() {
        errors.push(FieldError::new(
            field,
            format!(
                "{value:?} has host bits set (did you mean {}/{}?)",
                net.network(),
                net.prefix()
            ),
        ));
        return None;
    }
    Some(net)
}

/// An AS number a peer or a node may use: not 0 (reserved, RFC 7607) and not 23456
/// (AS_TRANS, RFC 6793: a placeholder for 4-octet numbers, never a real AS).
pub fn check_as_number(field: &str, asn: u32, errors: &mut Vec<FieldError>) {
    match asn {
        0 => errors.push(FieldError::new(field, "AS 0 is reserved (RFC 7607)")),
        23456 => errors.push(FieldError::new(
            field,
            "AS 23456 is AS_TRANS (RFC 6793), a placeholder that no speaker may use as its own",
        )),
        _ => {}
    }
}

/// Parses an address, naming the field when it is not one.
pub fn parse_ip(field: &str, value: &str, errors: &mut Vec<FieldError>) -> Option<IpAddr> {
    match value.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errors.push(FieldError::new(
                field,
                format!("{value:?} is not an IP address"),
            ));
            None
        }
    }
}

/// Parses a Go-style duration as Calico writes them (`90s`, `1m30s`, `2h`, `0s`) to seconds.
pub fn parse_duration_secs(value: &str) -> Result<u64, String> {
    if value == "0" {
        return Ok(0);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut saw_unit = false;
    for c in value.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let mult = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "{value:?} is not a duration: unknown unit {c:?} (use h, m, s)"
                ))
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{value:?} is not a duration: a number must precede {c:?}"))?;
        total = total
            .checked_add(
                n.checked_mul(mult)
                    .ok_or_else(|| format!("{value:?} is too long"))?,
            )
            .ok_or_else(|| format!("{value:?} is too long"))?;
        digits.clear();
        saw_unit = true;
    }
    if !digits.is_empty() || !saw_unit {
        return Err(format!(
            "{value:?} is not a duration: give a unit, e.g. \"90s\" or \"1m30s\""
        ));
    }
    Ok(total)
}

/// A Kubernetes object name (RFC 1123 subdomain): lower-case alphanumerics, `-` and `.`,
/// starting and ending alphanumeric, at most 253 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a resource name (lower-case letters, digits, '-' and '.')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90s"), Ok(90));
        assert_eq!(parse_duration_secs("1m30s"), Ok(90));
        assert_eq!(parse_duration_secs("2h"), Ok(7200));
        assert_eq!(parse_duration_secs("0"), Ok(0));
        assert!(parse_duration_secs("90").is_err());
        assert!(parse_duration_secs("5d").is_err());
        assert!(parse_duration_secs("").is_err());
        assert!(parse_duration_secs("s").is_err());
    }

    #[test]
    fn cidrs() {
        let mut errs = vec![];
        assert!(parse_network_cidr("f", "10.0.0.0/16", &mut errs).is_some());
        assert!(parse_network_cidr("f", "fd00::/64", &mut errs).is_some());
        assert!(errs.is_empty());
        assert!(parse_network_cidr("f", "10.0.0.1/16", &mut errs).is_none());
        assert!(
            errs[0].reason.contains("did you mean 10.0.0.0/16"),
            "{}",
            errs[0]
        );
        assert!(parse_network_cidr("f", "10.0.0.0", &mut errs).is_none());
        assert!(parse_network_cidr("f", "banana", &mut errs).is_none());
        assert_eq!(errs.len(), 3);
    }
}
