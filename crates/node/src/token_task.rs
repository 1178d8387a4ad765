//! Keeps the CNI plugin's copy of this pod's service account token fresh. The kubelet rotates
//! projected tokens (they expire); the plugin's kubeconfig (written by `brindle-cni-install`)
//! names the copy with `tokenFile`, which the plugin's client re-reads.

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

pub struct TokenTask {
    /// The pod's token, as the kubelet keeps it.
    pub source: PathBuf,
    /// The copy the plugin reads (`--cni-token-file`).
    pub copy: PathBuf,
}

impl TokenTask {
    pub async fn run(self) {
        let mut warned = false;
        loop {
            match self.sync() {
                Ok(true) => {
                    info!(file = %self.copy.display(), "refreshed the CNI plugin's service account token")
                }
                Ok(false) => {}
                Err(e) if !warned => {
                    warn!(file = %self.copy.display(), "cannot refresh the CNI plugin's token (pods may fail to start once it expires): {e}");
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }

    /// Copies the token when it differs; true when it did.
    fn sync(&self) -> std::io::Result<bool> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let token = std::fs::read(&self.source)?;
        if std::fs::read(&self.copy).ok().as_deref() == Some(token.as_slice()) {
            return Ok(false);
        }
        let tmp = self.copy.with_extension("brindle-tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&token)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.copy)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_only_when_the_token_changed() {
        let d = tempfile::tempdir().unwrap();
        let t = TokenTask {
            source: d.path().join("token"),
            copy: d.path().join("cni-token"),
        };
        assert!(t.sync().is_err(), "no token yet is an error");
        std::fs::write(&t.source, "one").unwrap();
        assert!(t.sync().unwrap());
        assert!(!t.sync().unwrap());
        std::fs::write(&t.source, "two").unwrap();
        assert!(t.sync().unwrap());
        assert_eq!(std::fs::read_to_string(&t.copy).unwrap(), "two");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&t.copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
