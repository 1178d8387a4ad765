//! How every Brindle binary chooses its datastore: the same flags and environment everywhere.
//!
//! ```text
//! --datastore kubernetes|etcd      BRINDLE_DATASTORE       (default kubernetes)
//! --etcd-endpoints URL[,URL...]    BRINDLE_ETCD_ENDPOINTS  (default http://127.0.0.1:2379)
//! --kubeconfig PATH                KUBECONFIG              (else ~/.kube/config, else in-cluster)
//! --context NAME                   BRINDLE_KUBE_CONTEXT    (else the kubeconfig's current context)
//! --etcd-ca-cert-file PATH         BRINDLE_ETCD_CA_CERT_FILE  or Calico's ETCD_CA_CERT_FILE
//! --etcd-cert-file PATH            BRINDLE_ETCD_CERT_FILE     or ETCD_CERT_FILE
//! --etcd-key-file PATH             BRINDLE_ETCD_KEY_FILE      or ETCD_KEY_FILE
//! --etcd-username NAME             BRINDLE_ETCD_USERNAME      or ETCD_USERNAME
//! --etcd-password-file PATH        BRINDLE_ETCD_PASSWORD_FILE (or the password itself in
//!                                  BRINDLE_ETCD_PASSWORD / ETCD_PASSWORD)
//! ```
//!
//! TLS needs https:// endpoints and the CA; a client certificate and its key go together;
//! a user and password are refused over plain http:// (they would cross the network in the
//! clear), as are TLS files with http:// endpoints (they would be silently unused).

use std::path::PathBuf;

use crate::backend::etcd::{EtcdBackend, EtcdSecurity};
use crate::backend::kubernetes::KubernetesBackend;
use crate::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatastoreKind {
    Kubernetes,
    Etcd,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DatastoreArgs {
    /// Where Brindle keeps its state.
    #[arg(
        long,
        global = true,
        env = "BRINDLE_DATASTORE",
        value_enum,
        default_value = "kubernetes"
    )]
    pub datastore: DatastoreKind,

    /// etcd v3 endpoints, comma-separated (with --datastore etcd).
    #[arg(
        long,
        global = true,
        env = "BRINDLE_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// kubeconfig file (with --datastore kubernetes); in a pod the service account is used.
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// kubeconfig context to use instead of the current one (with --datastore kubernetes).
    #[arg(long, global = true, env = "BRINDLE_KUBE_CONTEXT")]
    pub context: Option<String>,

    /// CA certificate (PEM) that signed etcd's server certificate (https:// endpoints).
    #[arg(long, global = true, env = "BRINDLE_ETCD_CA_CERT_FILE")]
    pub etcd_ca_cert_file: Option<PathBuf>,

    /// Client certificate (PEM), for an etcd that requires one (--client-cert-auth).
    #[arg(long, global = true, env = "BRINDLE_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "BRINDLE_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,

    /// etcd user (etcd's own authentication), with --etcd-password-file.
    #[arg(long, global = true, env = "BRINDLE_ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    /// File holding the etcd user's password (BRINDLE_ETCD_PASSWORD holds it directly).
    #[arg(long, global = true, env = "BRINDLE_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("--datastore kubernetes: cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("--datastore kubernetes: no cluster configuration found (no --kubeconfig or KUBECONFIG, no ~/.kube/config, not in a pod): {0}")]
    NoClusterConfig(#[source] kube::config::InferConfigError),
    #[error("--datastore kubernetes: {0}")]
    Client(#[source] kube::Error),
    #[error("--datastore kubernetes --context: {0}")]
    Context(#[source] kube::config::KubeconfigError),
    #[error("--datastore etcd: {0}")]
    Etcd(#[source] crate::StoreError),
    #[error("--datastore etcd: --etcd-endpoints is empty")]
    NoEtcdEndpoints,
    #[error("--datastore etcd: {0}")]
    EtcdSettings(String),
}

/// etcd's TLS files and user, resolved ([`DatastoreArgs::etcd_files`]). Its `Debug` leaves
/// the password out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for EtcdFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdFiles")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A setting from our flag or environment variable, else from Calico's variable.
fn or_env<T: Clone + From<String>>(ours: &Option<T>, calico: &str) -> Option<T> {
    ours.clone().or_else(|| {
        std::env::var(calico)
            .ok()
            .filter(|v| !v.is_empty())
            .map(T::from)
    })
}

fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|e| {
        ConnectError::EtcdSettings(format!("cannot read the {what} {}: {e}", path.display()))
    })
}

impl DatastoreArgs {
    /// Plain etcd at `endpoints`, nothing else set (tests, tools).
    pub fn etcd(endpoints: Vec<String>) -> Self {
        DatastoreArgs {
            datastore: DatastoreKind::Etcd,
            etcd_endpoints: endpoints,
            kubeconfig: None,
            context: None,
            etcd_ca_cert_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            etcd_username: None,
            etcd_password_file: None,
        }
    }

    /// The etcd TLS files and user as given (flags, `BRINDLE_*`, else Calico's `ETCD_*`;
    /// an empty value is none), the password read from its file.
    pub fn etcd_files(&self) -> Result<EtcdFiles, ConnectError> {
        let path = |ours: &Option<PathBuf>, calico: &str| {
            or_env(ours, calico).filter(|p: &PathBuf| !p.as_os_str().is_empty())
        };
        let password = match self
            .etcd_password_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(p) => Some(
                String::from_utf8_lossy(&read("etcd password file", p)?)
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => or_env(
                &std::env::var("BRINDLE_ETCD_PASSWORD").ok(),
                "ETCD_PASSWORD",
            )
            .filter(|p: &String| !p.is_empty()),
        };
        Ok(EtcdFiles {
            ca: path(&self.etcd_ca_cert_file, "ETCD_CA_CERT_FILE"),
            cert: path(&self.etcd_cert_file, "ETCD_CERT_FILE"),
            key: path(&self.etcd_key_file, "ETCD_KEY_FILE"),
            username: or_env(&self.etcd_username, "ETCD_USERNAME")
                .filter(|u: &String| !u.is_empty()),
            password,
        })
    }

    /// The TLS and user settings for etcd, checked against the endpoints.
    pub fn etcd_security(&self) -> Result<EtcdSecurity, ConnectError> {
        let bad = |m: String| Err(ConnectError::EtcdSettings(m));
        let EtcdFiles {
            ca,
            cert,
            key,
            username: user,
            password,
        } = self.etcd_files()?;
        let plain: Vec<&String> = self
            .etcd_endpoints
            .iter()
            .filter(|e| !e.trim_start().starts_with("https://"))
            .collect();
        let secure = self.etcd_endpoints.len() > plain.len();
        if secure && !plain.is_empty() {
            return bad(format!(
                "--etcd-endpoints mixes https:// and plain endpoints ({}): use https:// for all",
                plain
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if cert.is_some() != key.is_some() {
            return bad("--etcd-cert-file and --etcd-key-file go together (a client certificate and its key)".into());
        }
        if user.is_some() != password.is_some() {
            return bad("--etcd-username needs a password (--etcd-password-file or BRINDLE_ETCD_PASSWORD), and a password a username".into());
        }
        let tls_files = ca.is_some() || cert.is_some();
        if !secure {
            if user.is_some() {
                return bad(format!(
                    "refusing to send the etcd user's password over plain http:// ({}): give https:// endpoints and --etcd-ca-cert-file",
                    self.etcd_endpoints.join(",")
                ));
            }
            if tls_files {
                return bad(format!(
                    "TLS files are given but the endpoints are plain http:// ({}): give https:// endpoints",
                    self.etcd_endpoints.join(",")
                ));
            }
            return Ok(EtcdSecurity::default());
        }
        let Some(ca) = ca else {
            return bad("https:// endpoints need the CA that signed etcd's certificate: --etcd-ca-cert-file (ETCD_CA_CERT_FILE)".into());
        };
        let mut tls = etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(read("etcd CA certificate", &ca)?),
        );
        if let (Some(cert), Some(key)) = (cert, key) {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read("etcd client certificate", &cert)?,
                read("etcd client key", &key)?,
            ));
        }
        Ok(EtcdSecurity {
            tls: Some(tls),
            user: user.zip(password),
        })
    }

    pub async fn connect(&self) -> Result<Store, ConnectError> {
        match self.datastore {
            DatastoreKind::Etcd => {
                if self.etcd_endpoints.iter().all(|e| e.trim().is_empty()) {
                    return Err(ConnectError::NoEtcdEndpoints);
                }
                let security = self.etcd_security()?;
                let b = EtcdBackend::connect_with(&self.etcd_endpoints, security)
                    .await
                    .map_err(ConnectError::Etcd)?;
                Ok(Store::new(b))
            }
            DatastoreKind::Kubernetes => {
                let options = kube::config::KubeConfigOptions {
                    context: self.context.clone(),
                    ..Default::default()
                };
                let config = match &self.kubeconfig {
                    Some(path) => {
                        let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                            ConnectError::Kubeconfig {
                                path: path.clone(),
                                source,
                            }
                        })?;
                        kube::Config::from_custom_kubeconfig(kc, &options)
                            .await
                            .map_err(|source| ConnectError::Kubeconfig {
                                path: path.clone(),
                                source,
                            })?
                    }
                    None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                        .await
                        .map_err(ConnectError::Context)?,
                    None => kube::Config::infer()
                        .await
                        .map_err(ConnectError::NoClusterConfig)?,
                };
                let b = KubernetesBackend::from_config(config).map_err(ConnectError::Client)?;
                Ok(Store::new(b))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ds: DatastoreArgs,
    }

    #[test]
    fn flags() {
        let c = Cli::try_parse_from([
            "x",
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:1,http://127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(c.ds.datastore, DatastoreKind::Etcd);
        assert_eq!(c.ds.etcd_endpoints.len(), 2);
        let err = Cli::try_parse_from(["x", "--datastore", "consul"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("kubernetes"), "{err}");
    }
}
