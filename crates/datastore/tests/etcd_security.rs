//! The etcd datastore against an etcd that requires client certificates (and then users),
//! as a production etcd for Calico is set up: the right files work, anything less fails
//! with an error that says why, and settings that would send secrets in the clear or be
//! silently unused are refused before connecting.

use std::path::{Path, PathBuf};

use brindle_api::{IPPool, IPPoolSpec};
use brindle_datastore::{ConnectError, DatastoreArgs, Store};
use brindle_testsupport::EtcdServer;

fn args(endpoint: &str) -> DatastoreArgs {
    DatastoreArgs::etcd(vec![endpoint.to_string()])
}

fn with_tls(endpoint: &str, ca: &Path, cert: Option<(&Path, &Path)>) -> DatastoreArgs {
    let mut a = args(endpoint);
    a.etcd_ca_cert_file = Some(ca.to_path_buf());
    if let Some((c, k)) = cert {
        a.etcd_cert_file = Some(c.to_path_buf());
        a.etcd_key_file = Some(k.to_path_buf());
    }
    a
}

/// Connects and lists the pools: the first operation is where a lazy connection fails.
async fn try_list(a: &DatastoreArgs) -> Result<Store, String> {
    let store = a.connect().await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        std::time::Duration::from_secs(15),
        store.all::<IPPool>().list(),
    )
    .await
    {
        Ok(Ok(_)) => Ok(store),
        Ok(Err(e)) => Err(format!("{e}: {:?}", std::error::Error::source(&e))),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_client_certificates_and_users() {
    let etcd = tokio::task::spawn_blocking(EtcdServer::start_tls)
        .await
        .unwrap();
    let t = etcd.tls().expect("tls").clone();
    let ep = etcd.endpoint();
    assert!(ep.starts_with("https://"), "{ep}");

    // The CA and a client certificate it signed: everything works.
    let good = with_tls(&ep, &t.ca, Some((&t.client_cert, &t.client_key)));
    let store = try_list(&good).await.expect("with the client certificate");
    store
        .all::<IPPool>()
        .create(&IPPool::new("p", IPPoolSpec::new("10.80.0.0/16")))
        .await
        .expect("create over TLS");

    // Less than that fails, on the first operation, and says it is the connection.
    for (what, a) in [
        ("no client certificate", with_tls(&ep, &t.ca, None)),
        (
            "a certificate from another CA",
            with_tls(&ep, &t.ca, Some((&t.stranger_cert, &t.stranger_key))),
        ),
        (
            "plain http to the TLS port",
            args(&ep.replace("https://", "http://")),
        ),
    ] {
        let e = try_list(&a)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: it worked"));
        eprintln!("{what}: {e}");
        assert!(
            e.contains("etcd") && e.contains(ep.trim_start_matches("https://")),
            "{what}: the error names etcd and the endpoint: {e}"
        );
    }
    // etcd's server certificate is checked against the CA given.
    let e = try_list(&with_tls(
        &ep,
        &t.stranger_cert,
        Some((&t.client_cert, &t.client_key)),
    ))
    .await
    .expect_err("a CA that did not sign etcd's certificate");
    assert!(e.contains("etcd"), "{e}");

    // Settings refused before any connection, with the reason.
    let refused = |a: DatastoreArgs| async move {
        match a.connect().await {
            Err(e @ ConnectError::EtcdSettings(_)) => e.to_string(),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("connected"),
        }
    };
    let mut a = args("http://127.0.0.1:2379");
    a.etcd_username = Some("root".into());
    let pw = tempfile_with("secret\n");
    a.etcd_password_file = Some(pw.clone());
    assert!(refused(a)
        .await
        .contains("refusing to send the etcd user's password over plain http://"));
    let a = with_tls("http://127.0.0.1:2379", &t.ca, None);
    assert!(refused(a)
        .await
        .contains("TLS files are given but the endpoints are plain http://"));
    assert!(refused(args(&ep)).await.contains("--etcd-ca-cert-file"));
    let mut a = with_tls(&ep, &t.ca, None);
    a.etcd_cert_file = Some(t.client_cert.clone());
    assert!(refused(a).await.contains("go together"));
    let mut a = with_tls(&ep, &t.ca, None);
    a.etcd_ca_cert_file = Some("/nonexistent/ca.pem".into());
    assert!(refused(a)
        .await
        .contains("cannot read the etcd CA certificate /nonexistent/ca.pem"));

    // etcd's own users: root with a password, then auth on.
    let raw = etcd_client::Client::connect(
        [&ep],
        Some(
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(
                        std::fs::read(&t.ca).unwrap(),
                    ))
                    .identity(etcd_client::Identity::from_pem(
                        std::fs::read(&t.client_cert).unwrap(),
                        std::fs::read(&t.client_key).unwrap(),
                    )),
            ),
        ),
    )
    .await
    .unwrap();
    let mut auth = raw.auth_client();
    auth.user_add("root", "secret", None).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.auth_enable().await.unwrap();

    let mut a = good.clone();
    a.etcd_username = Some("root".into());
    a.etcd_password_file = Some(pw.clone());
    let s = try_list(&a).await.expect("as root");
    assert_eq!(s.all::<IPPool>().list().await.unwrap().items.len(), 1);
    // The token expires (2 s idle here), then etcd restarts (its simple tokens are gone):
    // the client must log in again by itself each time (an agent runs for months).
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(
        s.all::<IPPool>()
            .list()
            .await
            .expect("after the token expired")
            .items
            .len(),
        1
    );
    let mut etcd = etcd;
    tokio::task::block_in_place(|| etcd.restart());
    let mut last = String::new();
    let mut relisted = false;
    for _ in 0..40 {
        match s.all::<IPPool>().list().await {
            Ok(l) => {
                assert_eq!(l.items.len(), 1);
                relisted = true;
                break;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        relisted,
        "after etcd's restart the client never got in again: {last}"
    );
    let wrong = tempfile_with("guess");
    a.etcd_password_file = Some(wrong.clone());
    let e = try_list(&a).await.expect_err("a wrong password");
    eprintln!("a wrong password: {e}");
    assert!(e.contains("etcd"), "{e}");
    // The certificate alone is user "client" (its CN), who has no rights now.
    assert!(try_list(&good).await.is_err(), "no user, auth on");
    for f in [pw, wrong] {
        let _ = std::fs::remove_file(f);
    }
}

fn tempfile_with(text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "brindle-etcd-pw-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&p, text).unwrap();
    p
}
