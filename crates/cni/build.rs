//! `brindle-cni` runs once per pod ADD and DEL, so its start-up is part of every pod's
//! start. Linked as a position-dependent executable, the loader has no relocations to apply
//! to its own ~20 MB (dynamic libraries are still placed at random): about half of the
//! process's start-up CPU time. Only this binary; the daemons keep the default.
//!
//! A static build (`-C target-feature=+crt-static`, as the image's) is left as rustc links
//! it: a static PIE must stay a PIE (`-no-pie` would break it), and with
//! `-C relocation-model=static` it is position-dependent already.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bin=brindle-cni=-no-pie");
    }
}
