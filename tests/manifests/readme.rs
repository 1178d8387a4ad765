//! The configuration reference cannot drift: every flag and environment variable of the
//! binaries an operator configures in the manifests appears in README.md.

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

#[test]
fn every_flag_and_environment_variable_is_in_the_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut missing = vec![];
    for bin in ["brindle-node", "brindle-controller", "brindle-cni-install"] {
        let text = help(bin);
        for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
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
            if !readme.contains(&format!("`{item}")) && !readme.contains(&format!("({item}")) {
                missing.push(format!("{bin} {item}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in README.md: {missing:#?}");
}

#[test]
fn every_resource_field_is_in_the_resource_reference() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("## Resource reference")
        .expect("a Resource reference section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut missing = vec![];
    for crd in brindle_api::crd::all() {
        let kind = &crd.spec.names.kind;
        let schema = crd.spec.versions[0].schema.as_ref().unwrap();
        let root_schema = schema.open_api_v3_schema.as_ref().unwrap();
        let spec = &root_schema.properties.as_ref().unwrap()["spec"];
        assert!(
            section.contains(&format!("**{kind}**")),
            "{kind} has no table"
        );
        for field in spec.properties.iter().flat_map(|p| p.keys()) {
            if !section.contains(&format!("| `{field}` |")) {
                missing.push(format!("{kind}.spec.{field}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in README.md's Resource reference: {missing:#?}"
    );
}
