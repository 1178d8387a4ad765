//! `brindle-cni`: Brindle's CNI plugin (CNI 1.0.0 / 1.1.0). Invoked as `brindle-ipam` (a copy
//! or link of this binary, or `BRINDLE_CNI_MODE=ipam`), it is an IPAM-only plugin for other
//! main plugins, like calico-ipam.
//!
//! Reads the network configuration on stdin and `CNI_*` from the environment; writes the
//! result or the spec's error JSON on stdout and exits non-zero on error. Logs one line per
//! operation to `log_file_path`.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;

use brindle_cni::config::{Env, NetConf};
use brindle_cni::plugin;
use brindle_cni::spec::{self, code, CniError, CniResult};

fn main() -> ExitCode {
    let mut stdin = vec![];
    let env = Env::from_env(|k| std::env::var(k).ok());
    let command = env.as_ref().map(|e| e.command.clone()).unwrap_or_default();
    // VERSION needs no configuration beyond an optional cniVersion.
    if command == "VERSION" {
        let _ = std::io::stdin().read_to_end(&mut stdin);
        let requested = serde_json::from_slice::<serde_json::Value>(&stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_owned));
        return emit(
            Ok(Some(spec::version_answer(requested.as_deref()))),
            "1.1.0",
        );
    }
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return emit(
            Err(CniError::new(code::IO, "cannot read stdin", e.to_string())),
            "1.1.0",
        );
    }
    let conf = match NetConf::parse(&stdin) {
        Ok(c) => c,
        Err(e) => return emit(Err(e), "1.1.0"),
    };
    let version = conf.cni_version.clone();
    let env = match env {
        Ok(e) => e,
        Err(e) => return emit(Err(e), &version),
    };
    let _log = init_logging(&conf);
    let ipam_only = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .is_some_and(|n| n == "brindle-ipam")
        || std::env::var("BRINDLE_CNI_MODE").as_deref() == Ok("ipam");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return emit(
                Err(CniError::new(code::IO, "starting a runtime", e.to_string())),
                &version,
            )
        }
    };
    let out = rt.block_on(run(conf, env, ipam_only));
    if let Err(e) = &out {
        tracing::error!(op = %command, error = %e, "failed");
    }
    emit(out, &version)
}

async fn run(conf: NetConf, env: Env, ipam_only: bool) -> CniResult<Option<serde_json::Value>> {
    let version = conf.cni_version.clone();
    let command = env.command.clone();
    let ctx = plugin::Ctx::new(conf, env).await?;
    match command.as_str() {
        "ADD" => Ok(Some(ctx.add(ipam_only).await?.to_json(&version))),
        "DEL" => ctx.del(ipam_only).await.map(|()| None),
        "CHECK" => ctx.check(ipam_only).await.map(|()| None),
        "GC" => ctx.gc().await.map(|()| None),
        "STATUS" => ctx.status().await.map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
            "",
        )),
    }
}

fn emit(out: CniResult<Option<serde_json::Value>>, version: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match out {
        Ok(v) => {
            if let Some(v) = v {
                let _ = writeln!(stdout, "{v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(stdout, "{}", e.to_json(version));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to the configured file (never to stdout, which carries the result).
fn init_logging(conf: &NetConf) -> Option<()> {
    use std::sync::Mutex;
    if let Some(dir) = conf.log_file_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&conf.log_file_path)
        .ok()?;
    let filter = tracing_subscriber::EnvFilter::try_new(&conf.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .try_init()
        .ok()
}
