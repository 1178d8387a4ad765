//! The committed CRDs in manifests/crds/ must be exactly what the types generate.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/crds");
    let mut expected = vec![];
    for (file, crd) in brindle_api::crd::all() {
        let want = brindle_api::crd::to_yaml(&crd).expect("render");
        let path = dir.join(&file);
        let have = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p brindle-api --bin crdgen`",
                path.display()
            )
        });
        assert!(
            have == want,
            "{} is stale; run `cargo run -p brindle-api --bin crdgen`",
            path.display()
        );
        expected.push(file);
    }
    // No leftover CRD files for kinds that no longer exist.
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("manifests/crds")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(
        present, expected,
        "files in manifests/crds/ that no type generates"
    );
}

#[test]
fn crds_carry_printcolumns_and_group() {
    for (file, crd) in brindle_api::crd::all() {
        assert_eq!(crd.spec.group, "brindle.dev", "{file}");
        assert_eq!(crd.spec.scope, "Cluster", "{file}");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1");
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| !c.is_empty()),
            "{file} has no printcolumns"
        );
    }
}
