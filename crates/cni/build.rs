//! `brindle-cni` runs once per pod ADD and DEL, so its start-up is part of every pod's
//! start. Linked as a position-dependent executable, the loader has no relocations to apply
//! to its own ~20 MB (dynamic libraries are still placed at random): about half of the
//! process's start-up CPU time. Only this binary; the daemons keep the default.
fn main() {
    println!("cargo:rustc-link-arg-bin=brindle-cni=-no-pie");
}
