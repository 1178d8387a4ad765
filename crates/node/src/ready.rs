//! The dataplane-ready file (`--dataplane-ready-file`, the CNI plugin's
//! `dataplane_ready_file`): there once this node's dataplane has been programmed since boot.
//! When the agent does not answer on its IPAM socket, the plugin wires a pod only if the file
//! is there: before the first sync nothing guards the node's ports (BGP among them), stops a
//! pod's spoofed sources or enforces NetworkPolicy. It lives on tmpfs (`/run`), so a reboot
//! removes it; an agent's restart does not (the rules stay in the kernel meanwhile).

use std::path::Path;

use tracing::{info, warn};

/// Writes the file (atomically: a temporary name, then renamed), saying `why`.
pub fn mark(file: Option<&Path>, why: &str) {
    let Some(file) = file else { return };
    let write = || -> std::io::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(
            &tmp,
            format!("{why} (brindle-node pid {})\n", std::process::id()),
        )?;
        std::fs::rename(&tmp, file)
    };
    match write() {
        Ok(()) => info!(file = %file.display(), "dataplane ready: {why}"),
        // The plugin then wires pods only through this agent (which it still answers).
        Err(e) => {
            warn!(file = %file.display(), "cannot write the dataplane-ready file; the CNI plugin will not wire pods without this agent: {e}")
        }
    }
}

/// Removes the file (before the dataplane is taken down). Whether it was there.
pub fn clear(file: Option<&Path>) -> std::io::Result<bool> {
    let Some(file) = file else { return Ok(false) };
    match std::fs::remove_file(file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_then_cleared_and_nothing_without_a_path() {
        let dir = std::env::temp_dir().join(format!("brl-ready-{}", std::process::id()));
        let file = dir.join("run/brindle/dataplane-ready");
        mark(Some(&file), "synced");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(text.starts_with("synced (brindle-node pid"), "{text:?}");
        assert_eq!(
            std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
            1,
            "no temporary left"
        );
        assert!(clear(Some(&file)).unwrap());
        assert!(!file.exists());
        assert!(!clear(Some(&file)).unwrap(), "already gone");
        mark(None, "synced");
        assert!(!clear(None).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
