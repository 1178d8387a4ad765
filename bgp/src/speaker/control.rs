//! The control API: newline-delimited JSON over a unix socket. One request per line, one
//! response per line: `{"peers":{}}` → `{"ok":[PeerStatus…]}`, `{"rib":{…RibFilter}}` →
//! `{"ok":[RibRoute…]}`; errors are `{"error":"…"}`. `brindlectl node status` reads it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tracing::{info, warn};

use super::{RibFilter, Speaker};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Peers {},
    Rib(RibFilter),
}

async fn answer(s: &Speaker, line: &str) -> serde_json::Value {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return serde_json::json!({ "error": format!("bad request: {e}") }),
    };
    let r = match req {
        Request::Peers {} => s.peers().await.map(|v| serde_json::json!({ "ok": v })),
        Request::Rib(f) => s.rib(f).await.map(|v| serde_json::json!({ "ok": v })),
    };
    r.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// Serves the API on `path` (replacing a stale socket file) until the speaker stops.
pub async fn serve(speaker: Speaker, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Made under a temporary name, set to 0600 (root only: it shows every peer and route),
    // then renamed into place: never reachable with looser permissions.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path)?;
    info!(socket = %path.display(), "control API listening (mode 0600)");
    loop {
        let (conn, _) = l.accept().await?;
        let s = speaker.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut out = answer(&s, &line).await.to_string();
                out.push('\n');
                if let Err(e) = w.write_all(out.as_bytes()).await {
                    warn!("control API client: {e}");
                    return;
                }
            }
        });
    }
}
