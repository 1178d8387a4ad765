//! How every Brindle binary chooses its datastore: the same flags and environment everywhere.
//!
//! ```text
//! --datastore kubernetes|etcd      BRINDLE_DATASTORE       (default kubernetes)
//! --etcd-endpoints URL[,URL...]    BRINDLE_ETCD_ENDPOINTS  (default http://127.0.0.1:2379)
//! --kubeconfig PATH                KUBECONFIG              (else ~/.kube/config, else in-cluster)
//! --context NAME                   BRINDLE_KUBE_CONTEXT    (else the kubeconfig's current context)
//! ```

use std::path::PathBuf;

use crate::backend::{etcd::EtcdBackend, kubernetes::KubernetesBackend};
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
}

impl DatastoreArgs {
    pub async fn connect(&self) -> Result<Store, ConnectError> {
        match self.datastore {
            DatastoreKind::Etcd => {
                if self.etcd_endpoints.iter().all(|e| e.trim().is_empty()) {
                    return Err(ConnectError::NoEtcdEndpoints);
                }
                let b = EtcdBackend::connect(&self.etcd_endpoints)
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
