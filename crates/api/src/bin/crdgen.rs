//! Writes Brindle's CRDs to one file (default `manifests/00-crds.yaml`, so that
//! `kubectl apply -f manifests/` installs them first). `crdgen --check` compares instead of
//! writing and fails on any difference.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut out = PathBuf::from(brindle_api::crd::MANIFEST);
    let mut check = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--check" => check = true,
            "--out" => match args.next() {
                Some(f) => out = f.into(),
                None => return fail("--out needs a file"),
            },
            other => {
                return fail(&format!(
                    "unknown argument {other:?} (use --out FILE, --check)"
                ))
            }
        }
    }
    let yaml = match brindle_api::crd::manifest() {
        Ok(y) => y,
        Err(e) => return fail(&format!("rendering the CRDs: {e}")),
    };
    if check {
        if std::fs::read_to_string(&out).ok().as_deref() != Some(yaml.as_str()) {
            eprintln!("{} differs from the types; run crdgen", out.display());
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    if let Err(e) = std::fs::write(&out, yaml) {
        return fail(&format!("writing {}: {e}", out.display()));
    }
    println!("wrote {}", out.display());
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("crdgen: {msg}");
    ExitCode::from(2)
}
