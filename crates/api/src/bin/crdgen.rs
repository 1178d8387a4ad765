//! Writes Brindle's CRDs to a directory (default `manifests/crds`), one file per CRD.
//! `crdgen --check` compares instead of writing and fails on any difference.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut dir = PathBuf::from("manifests/crds");
    let mut check = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--check" => check = true,
            "--dir" => match args.next() {
                Some(d) => dir = d.into(),
                None => return fail("--dir needs a directory"),
            },
            other => {
                return fail(&format!(
                    "unknown argument {other:?} (use --dir DIR, --check)"
                ))
            }
        }
    }
    let mut stale = 0;
    for (file, crd) in brindle_api::crd::all() {
        let yaml = match brindle_api::crd::to_yaml(&crd) {
            Ok(y) => y,
            Err(e) => return fail(&format!("rendering {file}: {e}")),
        };
        let path = dir.join(&file);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!("{} differs from the types; run crdgen", path.display());
                stale += 1;
            }
        } else if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, yaml))
        {
            return fail(&format!("writing {}: {e}", path.display()));
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("crdgen: {msg}");
    ExitCode::from(2)
}
