//! Calico's label-selector syntax, for IPPool.nodeSelector and BGPPeer selectors:
//! `all()`, `has(k)`, `k == 'v'`, `k != 'v'`, `k in {'a', 'b'}`, `k not in {...}`, `!`,
//! `&&`, `||` and parentheses. An absent label is not equal to anything (so `k != 'v'` holds).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {input:?}: {reason} at offset {at}")]
pub struct SelectorError {
    pub input: String,
    pub at: usize,
    pub reason: String,
}

impl Selector {
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { s: input, pos: 0 };
        let sel = p.or()?;
        p.ws();
        if p.pos != input.len() {
            return Err(p.err("unexpected text"));
        }
        Ok(sel)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::All => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => labels.get(k) == Some(v),
            Selector::Ne(k, v) => labels.get(k) != Some(v),
            Selector::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Selector::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(a, b) => a.matches(labels) && b.matches(labels),
            Selector::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &str) -> SelectorError {
        SelectorError {
            input: self.s.to_owned(),
            at: self.pos,
            reason: reason.to_owned(),
        }
    }

    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str) -> Result<(), SelectorError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.err(&format!("expected {tok:?}")))
        }
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Selector::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Selector::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.ws();
        if self.rest().starts_with("!=") {
            return Err(self.err("expected a label before \"!=\""));
        }
        if self.eat("!") {
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            self.expect(")")?;
            return Ok(inner);
        }
        if self.eat("all()") {
            return Ok(Selector::All);
        }
        if self.eat("has(") {
            let k = self.ident()?;
            self.expect(")")?;
            return Ok(Selector::Has(k));
        }
        let k = self.ident()?;
        if self.eat("==") {
            return Ok(Selector::Eq(k, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(k, self.string()?));
        }
        if self.eat("not in") {
            return Ok(Selector::NotIn(k, self.set()?));
        }
        if self.eat("in") {
            return Ok(Selector::In(k, self.set()?));
        }
        Err(self.err("expected ==, !=, in or not in after the label"))
    }

    fn ident(&mut self) -> Result<String, SelectorError> {
        self.ws();
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.err("expected a label name"));
        }
        let id = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(id)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.ws();
        let q = match self.rest().chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.err("expected a quoted value")),
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(q) else {
            return Err(self.err("unterminated string"));
        };
        let v = body[..end].to_owned();
        self.pos += end + 2;
        Ok(v)
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect("{")?;
        let mut out = vec![];
        if self.eat("}") {
            return Ok(out);
        }
        loop {
            out.push(self.string()?);
            if self.eat("}") {
                return Ok(out);
            }
            self.expect(",")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn evaluates() {
        let l = labels(&[("zone", "a"), ("rack", "r1"), ("kubernetes.io/os", "linux")]);
        for (sel, want) in [
            ("all()", true),
            ("has(zone)", true),
            ("has(gpu)", false),
            ("zone == 'a'", true),
            ("zone == \"b\"", false),
            ("zone != 'b'", true),
            ("gpu != 'yes'", true),
            ("zone in {'a', 'b'}", true),
            ("zone not in {'a'}", false),
            ("gpu not in {'x'}", true),
            ("!has(gpu) && rack == 'r1'", true),
            (
                "zone == 'b' || (rack == 'r1' && kubernetes.io/os == 'linux')",
                true,
            ),
            ("!(zone == 'a')", false),
        ] {
            let s = Selector::parse(sel).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn rejects_bad_syntax_with_position() {
        for bad in [
            "",
            "zone = 'a'",
            "zone == a",
            "has(zone",
            "zone == 'a' &&",
            "all() junk",
            "zone in {'a' 'b'}",
        ] {
            let e = Selector::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("offset"), "{e}");
        }
    }
}
