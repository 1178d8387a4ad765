//! The documentation cannot drift: every flag and environment variable of the binaries an
//! operator configures in the manifests appears in README.md or `docs/`, every resource field
//! in `docs/resources.md`, and every relative link in them leads somewhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::root;

fn help(bin: &str) -> String {
    let path = brindle_lab::binary(bin);
    let out = Command::new(&path)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --bins first)", path.display()));
    assert!(out.status.success(), "{bin} --help");
    String::from_utf8(out.stdout).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `docs/*.md`, sorted.
fn docs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap_or_else(|e| panic!("docs: {e}"))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    v.sort();
    v
}

/// README.md, then every `docs/*.md`.
fn documentation() -> Vec<PathBuf> {
    let mut all = vec![root().join("README.md")];
    all.extend(docs());
    all
}

/// The text outside fenced code blocks and code spans, line by line (a code span may go on
/// over a line break, not past the end of its paragraph).
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    // The length of the backtick run that opened the code span we are in; 0: none.
    let mut code = 0;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.trim().is_empty() {
            code = 0;
        }
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '`' {
                let mut run = 1;
                while chars.next_if_eq(&'`').is_some() {
                    run += 1;
                }
                if code == 0 {
                    code = run;
                } else if code == run {
                    code = 0;
                }
            } else if code == 0 {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// The targets of the Markdown links `[text](target)` of a file, outside code.
fn links(text: &str) -> Vec<String> {
    prose(text)
        .split("](")
        .skip(1)
        .filter_map(|s| Some(s[..s.find([')', ' ', '\n'])?].to_string()))
        .collect()
}

/// GitHub's anchor for a heading: lower case; every character but letters, digits, spaces,
/// `-` and `_` removed; spaces made `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || [' ', '-', '_'].contains(c))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a file's headings (outside fenced code blocks); a heading seen before gets
/// `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let rest = line.trim_start_matches('#');
        let level = line.len() - rest.len();
        if fenced || !(1..=6).contains(&level) || !(rest.is_empty() || rest.starts_with(' ')) {
            continue;
        }
        let slug = slug(rest.trim().trim_end_matches('#').trim());
        let n = seen.entry(slug.clone()).or_insert(0);
        out.push(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn every_flag_and_environment_variable_is_documented() {
    let text: String = documentation().iter().map(|p| read(p) + "\n").collect();
    let mut missing = vec![];
    for bin in ["brindle-node", "brindle-controller", "brindle-cni-install"] {
        let usage = help(bin);
        for word in usage.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
            let item = if let Some(env) = word.strip_prefix("env:") {
                env.split('=').next().unwrap_or_default().to_string()
            } else if word.starts_with("--") && word.len() > 2 {
                word.split(['=', '<'])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            } else {
                continue;
            };
            if item.is_empty() || ["--help", "--version"].contains(&item.as_str()) {
                continue;
            }
            if !text.contains(&format!("`{item}")) && !text.contains(&format!("({item}")) {
                missing.push(format!("{bin} {item}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in README.md or docs/*.md: {missing:#?}"
    );
}

#[test]
fn every_resource_field_is_in_the_resource_reference() {
    let reference = read(&root().join("docs/resources.md"));
    let mut missing = vec![];
    for crd in brindle_api::crd::all() {
        let kind = &crd.spec.names.kind;
        let schema = crd.spec.versions[0].schema.as_ref().unwrap();
        let root_schema = schema.open_api_v3_schema.as_ref().unwrap();
        let spec = &root_schema.properties.as_ref().unwrap()["spec"];
        assert!(
            reference.contains(&format!("**{kind}**")),
            "{kind} has no table in docs/resources.md"
        );
        for field in spec.properties.iter().flat_map(|p| p.keys()) {
            if !reference.contains(&format!("| `{field}` |")) {
                missing.push(format!("{kind}.spec.{field}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in docs/resources.md: {missing:#?}");
}

#[test]
fn every_link_in_the_docs_resolves() {
    let root = root();
    let mut broken = vec![];
    for file in documentation() {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let dir = file.parent().unwrap();
        for target in links(&read(&file)) {
            if ["http://", "https://", "mailto:"]
                .iter()
                .any(|scheme| target.starts_with(scheme))
            {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{name}: ({target}): no such file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if resolved.extension().is_some_and(|x| x == "md")
                && !anchors(&read(&resolved)).iter().any(|a| a == anchor)
            {
                broken.push(format!("{name}: ({target}): no heading has that anchor"));
            }
        }
    }
    assert!(broken.is_empty(), "links that lead nowhere: {broken:#?}");
}

#[test]
fn the_readme_is_a_front_door() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= 260,
        "README.md has {lines} lines: what is past its front door belongs in docs/"
    );
    let targets = links(&readme);
    let unlinked: Vec<String> = docs()
        .iter()
        .filter_map(|p| Some(format!("docs/{}", p.file_name()?.to_str()?)))
        .filter(|doc| {
            !targets
                .iter()
                .any(|t| t.split('#').next() == Some(doc.as_str()))
        })
        .collect();
    assert!(unlinked.is_empty(), "README.md does not link {unlinked:#?}");
}

#[test]
fn anchors_are_github_s() {
    let text = "# Brindle\n## The nftables dataplane (`--dataplane nftables`)\n\
                ```\n# not a heading\n```\n## The pieces, and a packet's path\n## Brindle\n#x\n";
    assert_eq!(
        anchors(text),
        [
            "brindle",
            "the-nftables-dataplane---dataplane-nftables",
            "the-pieces-and-a-packets-path",
            "brindle-1",
        ]
    );
    assert_eq!(
        links("[a](b.md#c) `[d](e)` [f](g \"t\")\n```\n[h](i)\n```\n"),
        ["b.md#c", "g"]
    );
}
