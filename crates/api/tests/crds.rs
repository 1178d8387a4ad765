//! The committed CRDs in manifests/00-crds.yaml must be exactly what the types generate.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(brindle_api::crd::MANIFEST);
    let want = brindle_api::crd::manifest().expect("render");
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
}

#[test]
fn crds_carry_printcolumns_and_group() {
    for crd in brindle_api::crd::all() {
        let file = crd.metadata.name.clone().unwrap_or_default();
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
