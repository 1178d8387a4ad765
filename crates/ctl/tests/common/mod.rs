//! Runs the real `brindlectl` binary as a user would, against a datastore the test started.

#![allow(dead_code)] // each test binary uses its own part

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What one run printed, and how it ended.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success:\n{self:#?}");
        &self.stdout
    }

    /// Asserts exit `code` and that stderr says `needle`.
    pub fn fails(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, code, "expected exit {code}:\n{self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr should say {needle:?}:\n{self:#?}"
        );
        self
    }
}

/// brindlectl with the datastore flags of one test.
pub struct Ctl {
    pub flags: Vec<String>,
}

impl Ctl {
    pub fn etcd(endpoint: &str) -> Ctl {
        Ctl {
            flags: vec![
                "--datastore".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                endpoint.into(),
            ],
        }
    }

    pub fn binary() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_brindlectl"))
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None)
    }

    pub fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut c = Command::new(Self::binary());
        c.args(args).args(&self.flags);
        // The tests choose the datastore; nothing from the environment may leak in.
        for v in [
            "BRINDLE_DATASTORE",
            "BRINDLE_ETCD_ENDPOINTS",
            "KUBECONFIG",
            "BRINDLE_KUBE_CONTEXT",
            "BRINDLE_CONTROL_SOCKET",
        ] {
            c.env_remove(v);
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("start brindlectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        let o = child.wait_with_output().expect("brindlectl output");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn data(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
        .display()
        .to_string()
}

/// Compares with `tests/golden/<name>` (`BRINDLE_UPDATE_GOLDEN=1` rewrites it).
pub fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BRINDLE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(got, want, "output differs from {}", path.display());
}

/// Every resource verb, its errors, and the round trip, on whatever datastore `ctl` names.
pub fn resource_scenario(ctl: &Ctl) {
    // Empty datastore.
    let o = ctl.run(&["get", "ippools"]);
    assert_eq!(o.ok(), "");
    assert!(o.stderr.contains("No ippools found."), "{o:?}");

    // apply: multi-document YAML and a JSON stream.
    let o = ctl.run(&[
        "apply",
        "-f",
        &data("brindle/pools.yaml"),
        "-f",
        &data("brindle/peers.json"),
    ]);
    o.ok();
    for m in [
        "IPPool \"default\" created",
        "IPPool \"edge\" created",
        "BGPConfiguration \"default\" created",
        "BGPPeer \"global-router\" created",
    ] {
        assert!(o.stderr.contains(m), "{m}: {o:?}");
    }
    // Tables: golden files, calicoctl's columns.
    golden("get_ippools.txt", ctl.run(&["get", "ippools"]).ok());
    golden(
        "get_ippools_wide.txt",
        ctl.run(&["get", "ippool", "-o", "wide"]).ok(),
    );
    golden("get_bgppeers.txt", ctl.run(&["get", "bgpp"]).ok());
    golden("get_bgpconfig.txt", ctl.run(&["get", "bgpconfig"]).ok());
    for line in ctl.run(&["get", "ippools"]).ok().lines() {
        assert!(line.len() <= 80, "wider than 80 columns: {line:?}");
    }

    // Round trip: get -o yaml | apply -f - changes nothing (not even a resourceVersion).
    let before = ctl.run(&["get", "ippools", "-o", "yaml"]).ok().to_string();
    let o = ctl.run_with(&["apply", "-f", "-"], Some(&before));
    o.ok();
    assert!(
        o.stderr.contains("IPPool \"default\" unchanged")
            && o.stderr.contains("IPPool \"edge\" unchanged"),
        "{o:?}"
    );
    assert_eq!(ctl.run(&["get", "ippools", "-o", "yaml"]).ok(), before);
    // The same through JSON, for every kind at once.
    for kind in ["bgppeers", "bgpconfigurations"] {
        let j = ctl.run(&["get", kind, "-o", "json"]).ok().to_string();
        let o = ctl.run_with(&["apply", "-f", "-"], Some(&j));
        assert!(
            !o.ok().contains("configured") && o.stderr.contains("unchanged"),
            "{o:?}"
        );
        assert_eq!(ctl.run(&["get", kind, "-o", "json"]).ok(), j);
    }
    // One object: a single document, not a List.
    let one = ctl
        .run(&["get", "ippool", "edge", "-o", "yaml"])
        .ok()
        .to_string();
    assert!(
        one.starts_with("apiVersion: brindle.dev/v1\nkind: IPPool\n"),
        "{one}"
    );

    // A changed field is written; the stale resourceVersion in the old output then conflicts.
    let old = ctl
        .run(&["get", "ippool", "edge", "-o", "json"])
        .ok()
        .to_string();
    let mut v: serde_json::Value = serde_json::from_str(&old).expect("json");
    v["spec"]["natOutgoing"] = true.into();
    let o = ctl.run_with(&["apply", "-f", "-"], Some(&v.to_string()));
    assert!(
        o.ok().is_empty() && o.stderr.contains("IPPool \"edge\" configured"),
        "{o:?}"
    );
    v["spec"]["natOutgoing"] = false.into();
    ctl.run_with(&["apply", "-f", "-"], Some(&v.to_string()))
        .fails(1, "conflict");

    // create and replace refuse what exists / does not.
    ctl.run(&["create", "-f", &data("brindle/pools.yaml")])
        .fails(1, "already exists");
    let ghost = "apiVersion: brindle.dev/v1\nkind: BGPPeer\nmetadata: {name: ghost}\nspec: {peerIP: 198.18.3.3, asNumber: 65003}\n";
    ctl.run_with(&["replace", "-f", "-"], Some(ghost))
        .fails(1, "does not exist");

    // Local validation names the source, the resource, the field and the reason; one bad
    // document writes nothing, not even the good one beside it.
    let mixed = "apiVersion: brindle.dev/v1\nkind: IPPool\nmetadata: {name: fine}\nspec: {cidr: 10.251.0.0/16}\n---\napiVersion: brindle.dev/v1\nkind: IPPool\nmetadata: {name: bad}\nspec: {cidr: 10.252.0.1/16}\n";
    let o = ctl.run_with(&["apply", "-f", "-"], Some(mixed));
    o.fails(
        1,
        "<stdin>:6: IPPool \"bad\" is invalid: spec.cidr: \"10.252.0.1/16\" has host bits set",
    );
    assert!(o.stderr.contains("nothing was written"), "{o:?}");
    ctl.run(&["get", "ippool", "fine"])
        .fails(1, "IPPool \"fine\" not found");
    // Unknown fields, with their path.
    let typo = "apiVersion: brindle.dev/v1\nkind: IPPool\nmetadata: {name: t}\nspec: {cidr: 10.253.0.0/16, ipipmode: Always}\n";
    ctl.run_with(&["validate", "-f", "-"], Some(typo))
        .fails(1, "IPPool \"t\": unknown field spec.ipipmode");
    // Broken YAML: file, line and column.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("broken.yaml");
    std::fs::write(
        &bad,
        "apiVersion: brindle.dev/v1\nkind: IPPool\nmetadata:\n  name: [x\nspec: {}\n",
    )
    .expect("write");
    let o = ctl.run(&["apply", "-f", &bad.display().to_string()]);
    o.fails(1, &format!("{}:", bad.display()));
    assert!(o.stderr.contains("invalid YAML"), "{o:?}");
    // Rules the datastore enforces (overlap with another pool): named by the store's error.
    let overlap = "apiVersion: brindle.dev/v1\nkind: IPPool\nmetadata: {name: overlap}\nspec: {cidr: 10.244.128.0/17}\n";
    let o = ctl.run_with(&["apply", "-f", "-"], Some(overlap));
    o.fails(1, "<stdin>:1: IPPool \"overlap\" is invalid: spec.cidr: 10.244.128.0/17 overlaps IPPool \"default\"");
    // Not a Brindle (or Calico) document.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
    ctl.run_with(&["apply", "-f", "-"], Some(pod))
        .fails(1, "apiVersion \"v1\" (kind \"Pod\") is not brindle.dev/v1");
    ctl.run(&["validate", "-f", &data("brindle")]).ok();

    // label: set, refuse to change without --overwrite, remove.
    ctl.run(&["label", "ippools", "edge", "zone=a"]).ok();
    ctl.run(&["label", "ippools", "edge", "zone=b"])
        .fails(1, "--overwrite");
    ctl.run(&["label", "ippools", "edge", "zone=b", "--overwrite"])
        .ok();
    let y = ctl
        .run(&["get", "ippool", "edge", "-o", "json"])
        .ok()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&y).expect("json");
    assert_eq!(
        v["metadata"]["labels"],
        serde_json::json!({"team": "edge", "zone": "b"})
    );
    ctl.run(&["label", "ippool", "edge", "zone-"]).ok();
    ctl.run(&["label", "ippool", "edge", "bad key=1"])
        .fails(2, "not a valid label key");

    // delete: by name, from a file, missing.
    ctl.run(&["delete", "bgppeer", "global-router"]).ok();
    ctl.run(&["delete", "bgppeer", "global-router"])
        .fails(1, "not found");
    ctl.run(&["delete", "bgppeer", "global-router", "--ignore-not-found"])
        .ok();
    ctl.run(&[
        "delete",
        "-f",
        &data("brindle/peers.json"),
        "--ignore-not-found",
    ])
    .ok();
    assert_eq!(ctl.run(&["get", "bgppeers"]).ok(), "");

    // Usage errors exit 2.
    ctl.run(&["get", "pods"])
        .fails(2, "unknown resource kind \"pods\"");
    ctl.run(&["get"]).fails(2, "KIND");
    ctl.run(&["delete"])
        .fails(2, "delete needs -f FILE or KIND NAME");
    ctl.run(&["frobnicate"]).fails(2, "unrecognized subcommand");
}

/// Calico's documented samples: applied with one note per field not honoured, converted.
pub fn calico_scenario(ctl: &Ctl) {
    let o = ctl.run(&["convert", "-f", &data("calico")]);
    let out = o.ok();
    assert!(
        out.contains("kind: BGPConfiguration") && out.contains("asNumber: 63400"),
        "{out}"
    );
    assert!(
        out.contains("kind: BGPFilter") && out.contains("cidr: 77.0.0.0/16"),
        "{out}"
    );
    assert!(!out.contains("projectcalico"), "{out}");
    let notes: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("note: "))
        .collect();
    for f in [
        "spec.nodeMeshMaxRestartTime",
        "spec.bindMode",
        "spec.prefixAdvertisements",
    ] {
        assert_eq!(
            notes.iter().filter(|n| n.contains(f)).count(),
            1,
            "{f}: {notes:#?}"
        );
    }
    // Calico's defaults (assignmentMode Automatic) are Brindle's behaviour: no note.
    assert_eq!(notes.len(), 3, "{notes:#?}");
    assert!(
        notes[0].contains("bgpconfig.yaml:1: BGPConfiguration \"default\""),
        "{notes:#?}"
    );

    let o = ctl.run(&["apply", "-f", &data("calico")]);
    o.ok();
    assert_eq!(o.stderr.matches("note: ").count(), 3, "{o:?}");
    for m in [
        "IPPool \"my.ippool-1\" created",
        "BGPPeer \"some.name\" created",
        "BGPPeer \"peer-with-route-reflectors\" created",
        "BGPFilter \"my-filter\" created",
        "IPAMConfig \"default\" created",
    ] {
        assert!(o.stderr.contains(m), "{m}: {o:?}");
    }
    let pool = ctl
        .run(&["get", "ippool", "my.ippool-1", "-o", "json"])
        .ok()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&pool).expect("json");
    assert_eq!(v["spec"]["ipipMode"], "CrossSubnet");
    assert_eq!(v["spec"]["natOutgoing"], true);
    let cfg = ctl
        .run(&["get", "ipamconfig", "default", "-o", "json"])
        .ok()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&cfg).expect("json");
    assert_eq!(v["spec"]["maxBlocksPerHost"], 4);
    // Calico's documented BGPFilter, every rule kept as written.
    let f = ctl
        .run(&["get", "bgpfilter", "my-filter", "-o", "json"])
        .ok()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&f).expect("json");
    assert_eq!(v["spec"]["importV4"][0]["prefixLength"]["min"], 30);
    assert_eq!(v["spec"]["exportV4"][1]["interface"], "*.calico");
    assert_eq!(
        v["spec"]["importV6"][1],
        serde_json::json!({"action": "Reject"})
    );
    let t = ctl.run(&["get", "bgpfilters"]).ok().to_string();
    assert!(t.contains("IMPORTV4") && t.contains("my-filter"), "{t}");
    // A filter Calico would refuse too names the field.
    let bad = "apiVersion: projectcalico.org/v3\nkind: BGPFilter\nmetadata: {name: bad}\nspec:\n  importV4:\n  - {action: Accept, cidr: 'ffee::/64', matchOperator: In}\n";
    ctl.run_with(&["apply", "-f", "-"], Some(bad))
        .fails(1, "spec.importV4[0].cidr");
    // Applying the same Calico documents again changes nothing.
    let o = ctl.run(&["apply", "-f", &data("calico")]);
    o.ok();
    assert_eq!(o.stderr.matches("unchanged").count(), 6, "{o:?}");
    // A Calico kind with no counterpart is refused, naming it.
    let felix = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {}\n";
    ctl.run_with(&["apply", "-f", "-"], Some(felix))
        .fails(1, "kind \"FelixConfiguration\" has no Brindle counterpart");
}
