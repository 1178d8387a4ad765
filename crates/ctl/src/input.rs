//! Reading `-f` sources: files, directories and standard input, each holding one or more YAML
//! documents (`---` between them) or JSON values, and `List` documents with `items`. A parse
//! error names the file, line and column; every document remembers where it came from.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

/// One document and where it starts.
#[derive(Debug, Clone)]
pub struct Doc {
    pub file: String,
    pub line: usize,
    pub value: Value,
    /// The document's text and the file's line it begins on, to find a field's line.
    pub text: std::sync::Arc<str>,
    pub text_line: usize,
}

impl Doc {
    pub fn origin(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    /// Where the field at `path` (`spec.peers[0].asNumber`, as serde paths print) is
    /// written: each key looked for in turn below the one before, as block YAML or JSON
    /// writes it; the document's first line when a key is not found.
    pub fn field_origin(&self, path: &str) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut at = None::<usize>;
        for seg in path.split('.') {
            let key = seg.split('[').next().unwrap_or(seg);
            if key.is_empty() || key.parse::<usize>().is_ok() {
                continue;
            }
            let (yaml, json) = (format!("{key}:"), format!("\"{key}\""));
            let from = at.map_or(0, |a| a + 1);
            let found = lines.get(from..).and_then(|rest| {
                rest.iter().position(|l| {
                    let t = l
                        .trim_start()
                        .trim_start_matches("- ")
                        .trim_start_matches(['{', ',', ' ']);
                    t.starts_with(&yaml) || t.starts_with(&json)
                })
            });
            match found {
                Some(i) => at = Some(from + i),
                None => return self.origin(),
            }
            // Inside a list the next key could be any item's: the list's own line it is.
            if seg.contains('[') {
                break;
            }
        }
        match at {
            Some(a) => format!("{}:{}", self.file, self.text_line + a),
            None => self.origin(),
        }
    }
}

/// Every document of every source, in order. Nothing is returned if any source fails to
/// parse, so a bad file never leaves half its documents applied.
pub fn read(sources: &[String]) -> anyhow::Result<Vec<Doc>> {
    let mut docs = vec![];
    for s in sources {
        if s == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?;
            docs.extend(parse("<stdin>", &text)?);
            continue;
        }
        let path = Path::new(s);
        if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .map_err(|e| anyhow::anyhow!("{s}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|x| x.to_str())
                            .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                anyhow::bail!("{s}: no .yaml, .yml or .json files in this directory");
            }
            for f in files {
                docs.extend(read_file(&f)?);
            }
        } else {
            docs.extend(read_file(path)?);
        }
    }
    Ok(docs)
}

fn read_file(path: &Path) -> anyhow::Result<Vec<Doc>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    parse(&name, &text)
}

/// The documents of one source's text.
pub fn parse(file: &str, text: &str) -> anyhow::Result<Vec<Doc>> {
    let trimmed = text.trim_start();
    let raw = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        parse_json(file, text)?
    } else {
        parse_yaml(file, text)?
    };
    let mut out = vec![];
    for d in raw {
        expand_list(d, &mut out);
    }
    Ok(out)
}

/// `kind: List` (or `<Kind>List`) with `items`, and a top-level JSON array, become their items.
fn expand_list(d: Doc, out: &mut Vec<Doc>) {
    let items = match &d.value {
        Value::Array(items) => Some(items.clone()),
        Value::Object(m)
            if m.get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && m.get("items").is_some_and(Value::is_array) =>
        {
            m.get("items").and_then(Value::as_array).cloned()
        }
        _ => None,
    };
    match items {
        Some(items) => {
            for value in items {
                expand_list(
                    Doc {
                        file: d.file.clone(),
                        line: d.line,
                        value,
                        text: d.text.clone(),
                        text_line: d.text_line,
                    },
                    out,
                );
            }
        }
        None => out.push(d),
    }
}

fn parse_json(file: &str, text: &str) -> anyhow::Result<Vec<Doc>> {
    let mut out = vec![];
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    loop {
        // The document's first line: where the stream stands, past any whitespace.
        let offset = stream.byte_offset();
        let skipped = text[offset..].len() - text[offset..].trim_start().len();
        let line = text[..offset + skipped].matches('\n').count() + 1;
        match stream.next() {
            None => break,
            Some(Ok(value)) => out.push(Doc {
                file: file.into(),
                line,
                value,
                text: text[offset + skipped..stream.byte_offset()].into(),
                text_line: line,
            }),
            Some(Err(e)) => anyhow::bail!("{file}:{}:{}: invalid JSON: {e}", e.line(), e.column()),
        }
    }
    Ok(out)
}

/// Splits at document markers (`---` at the start of a line: YAML ends a document there
/// whatever came before) and parses each part, so an error's line is the file's line.
fn parse_yaml(file: &str, text: &str) -> anyhow::Result<Vec<Doc>> {
    let mut parts: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, l) in text.lines().enumerate() {
        if l == "---" || l.starts_with("--- ") || l.starts_with("---\t") {
            // Content after the marker on the same line belongs to the new document.
            let rest = l[3..].trim_start();
            let mut body = String::new();
            if !rest.is_empty() && !rest.starts_with('#') {
                body.push_str(rest);
            }
            body.push('\n');
            parts.push((i + 1, body));
        } else if let Some(last) = parts.last_mut() {
            last.1.push_str(l);
            last.1.push('\n');
        }
    }
    let mut out = vec![];
    for (start, body) in parts {
        let value: Value = match serde_yaml_ng::from_str::<Option<Value>>(&body) {
            Ok(Some(v)) => v,
            Ok(None) => continue, // empty or comments only
            Err(e) => {
                let (line, col) = e
                    .location()
                    .map_or((start, 0), |l| (start + l.line() - 1, l.column()));
                // serde_yaml_ng puts its own (document-relative) position in the message.
                let msg = fix_positions(&e.to_string(), start);
                anyhow::bail!("{file}:{line}:{col}: invalid YAML: {msg}");
            }
        };
        if value.is_null() {
            continue;
        }
        // The document's first line with content, for messages about it.
        let first = body
            .lines()
            .position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .unwrap_or(0);
        out.push(Doc {
            file: file.into(),
            line: start + first,
            value,
            text: body.as_str().into(),
            text_line: start,
        });
    }
    Ok(out)
}

/// serde_yaml_ng writes positions into its messages (" at line N column M"), counted from
/// the document's start: the first one (the error's own, already in front as file:line:col)
/// is dropped, the others are moved to the file's lines.
fn fix_positions(msg: &str, first_line: usize) -> String {
    const AT: &str = " at line ";
    let mut out = String::new();
    let mut rest = msg;
    let mut first = true;
    while let Some(i) = rest.find(AT) {
        out.push_str(&rest[..i]);
        let after = &rest[i + AT.len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let line: usize = after[..digits].parse().unwrap_or(0);
        let tail = &after[digits..];
        let col_len = tail.strip_prefix(" column ").map_or(0, |t| {
            " column ".len() + t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len()
        });
        if !first {
            out.push_str(&format!(
                "{AT}{}{}",
                line + first_line - 1,
                &tail[..col_len]
            ));
        }
        first = false;
        rest = &tail[col_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_documents_and_lines() {
        let text =
            "# pools\napiVersion: brindle.dev/v1\nkind: IPPool\n---\n\n---\nkind: BGPPeer\n...\n";
        let d = parse("f.yaml", text).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].line, d[1].line), (2, 7));
        assert_eq!(d[1].value["kind"], "BGPPeer");
    }

    #[test]
    fn yaml_error_names_file_line_and_column() {
        let text = "kind: IPPool\n---\nkind: BGPPeer\nspec:\n  peerIP: [1\n  asNumber: 2\n";
        let e = parse("bad.yaml", text).unwrap_err().to_string();
        assert!(e.starts_with("bad.yaml:"), "{e}");
        let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        assert!((5..=7).contains(&line), "{e}");
        assert!(e.contains("invalid YAML"), "{e}");
        assert_eq!(
            fix_positions("x at line 5 column 1, while y at line 4 column 9", 10),
            "x, while y at line 13 column 9"
        );
        assert_eq!(fix_positions("x at line 5 column 1", 1), "x");
    }

    #[test]
    fn a_field_is_found_on_its_own_line() {
        let text = "kind: IPPool\nmetadata:\n  name: p\n---\n# the rack\nkind: BGPPeer\n\
                    metadata:\n  name: tor\nspec:\n  peerIP: 198.18.0.1\n  asNumber: 4294967296\n";
        let d = parse("peers.yaml", text).unwrap();
        assert_eq!(d[1].origin(), "peers.yaml:6");
        assert_eq!(d[1].field_origin("spec.asNumber"), "peers.yaml:11");
        assert_eq!(d[1].field_origin("metadata.name"), "peers.yaml:8");
        // Not found (a key written another way): the document's first line.
        assert_eq!(d[1].field_origin("spec.password"), "peers.yaml:6");
        // In a list: the list's line, not the first item's key of that name.
        let text = "kind: X\nspec:\n  rules:\n  - action: a\n  - action: 5\n";
        let d = parse("l.yaml", text).unwrap();
        assert_eq!(d[0].field_origin("spec.rules[1].action"), "l.yaml:3");
        let json = "{\"kind\": \"A\"}\n{\"kind\": \"BGPPeer\",\n \"spec\": {\n  \"asNumber\": -1}}";
        let d = parse("p.json", json).unwrap();
        assert_eq!(d[1].field_origin("spec.asNumber"), "p.json:4");
    }

    #[test]
    fn json_stream_and_lists() {
        let text =
            "{\"kind\":\"A\"}\n\n{\"kind\":\"List\",\"items\":[{\"kind\":\"B\"},{\"kind\":\"C\"}]}";
        let d = parse("f.json", text).unwrap();
        let kinds: Vec<_> = d.iter().map(|d| d.value["kind"].clone()).collect();
        assert_eq!(kinds, ["A", "B", "C"]);
        assert_eq!((d[0].line, d[1].line), (1, 3));
        let e = parse("f.json", "{\"kind\":\n  \"A\",}")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.json:2:"), "{e}");
    }
}
