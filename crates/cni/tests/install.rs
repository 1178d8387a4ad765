//! `brindle-cni-install` (the DaemonSet's init container) writes a configuration list that
//! the plugin it installed accepts: a real ADD, CHECK and DEL through the installed binary,
//! with the configuration the installer wrote, in a node namespace against a real etcd.

mod common;

use std::path::Path;
use std::process::Command;

use brindle_testsupport::{CniCall, Netns};
use common::*;
use serde_json::Value;

fn install(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_brindle-cni-install"));
    let out = Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args([
            "--source-dir",
            Path::new(env!("CARGO_BIN_EXE_brindle-cni"))
                .parent()
                .unwrap()
                .to_str()
                .unwrap(),
            "--bin-dir",
            dir.join("bin").to_str().unwrap(),
            "--conf-dir",
            dir.join("net.d").to_str().unwrap(),
            "--host-root",
            dir.join("host").to_str().unwrap(),
        ])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// What libcni hands each plugin of a list: its own entry plus the list's name and version.
fn plugin_conf(list: &Value, i: usize) -> Value {
    let mut c = list["plugins"][i].clone();
    c["name"] = list["name"].clone();
    c["cniVersion"] = list["cniVersion"].clone();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_plugin_accepts_the_installed_configuration() {
    let f = Fixture::new("10.67.0.0/16").await;
    let d = &f.dir.0;
    std::fs::write(d.join("nodename"), NODE).unwrap();
    // A host that has the reference plugins: portmap is chained after brindle-cni.
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(d.join("bin/portmap"), b"").unwrap();
    let endpoint = format!("http://{}", f.forward.addr);
    let (ok, text) = install(
        d,
        &[
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            &endpoint,
            "--nodename-file",
            d.join("nodename").to_str().unwrap(),
            "--log-file",
            d.join("cni.log").to_str().unwrap(),
            "--ipam-lock-file",
            d.join("ipam.lock").to_str().unwrap(),
            "--dataplane-ready-file",
            f.ready_file().to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{text}");
    let installed = d.join("bin/brindle-cni");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_brindle-cni")).unwrap()
    );
    assert!(d.join("bin/brindle-ipam").exists());
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("net.d/10-brindle.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(list["name"], "k8s-pod-network");
    assert_eq!(list["plugins"][1]["type"], "portmap", "{list}");
    // No temporary file is left beside the targets.
    for sub in ["bin", "net.d"] {
        for e in std::fs::read_dir(d.join(sub)).unwrap() {
            let n = e.unwrap().file_name().into_string().unwrap();
            assert!(!n.contains("brindle-tmp"), "{sub}/{n} left behind");
        }
    }

    let conf = plugin_conf(&list, 0).to_string();
    let pod = Netns::new("brl-pod");
    let run = |command: &str| {
        let out = CniCall {
            command,
            container: "c-install",
            netns: Some(&pod.path()),
            pod: Some(("default", "installed")),
            env: &[],
        }
        .run(
            f.node.command(&[installed.to_str().unwrap()]),
            conf.as_bytes(),
        )
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{command}: {text}");
        text
    };
    let add: Value = serde_json::from_str(&run("ADD")).unwrap();
    let ip = ip_of(&add);
    assert!(ip.starts_with("10.67."), "{add}");
    assert_eq!(f.allocated().await.len(), 1);
    let link = &f.node.ip_json(&[
        "link",
        "show",
        add["interfaces"][0]["name"].as_str().unwrap(),
    ])[0];
    assert_eq!(
        link["mtu"], 1480,
        "the installer's default MTU leaves room for IPIP"
    );
    run("DEL");
    assert!(f.allocated().await.is_empty());

    // Run again (a restarted init container): same files, nothing rewritten needlessly.
    let (ok, text) = install(
        d,
        &["--datastore", "etcd", "--etcd-endpoints", &endpoint],
        &[],
    );
    assert!(ok, "{text}");
    assert!(text.contains("is up to date"), "{text}");
    assert!(plugin_conf(&list, 0)["ipam"].get("assign_ipv6").is_none());

    // Dual stack asked for: the plugin's IPAM gives an IPv6 address too.
    let (ok, text) = install(
        d,
        &["--datastore", "etcd", "--etcd-endpoints", &endpoint],
        &[("BRINDLE_CNI_ASSIGN_IPV6", "true")],
    );
    assert!(ok, "{text}");
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("net.d/10-brindle.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(plugin_conf(&list, 0)["ipam"]["assign_ipv6"], true, "{list}");
    assert!(plugin_conf(&list, 0)["ipam"].get("assign_ipv4").is_none());

    // IPv6 only: no IPv4 address asked for; both off is refused.
    let args = ["--datastore", "etcd", "--etcd-endpoints", &endpoint];
    let v6 = [
        ("BRINDLE_CNI_ASSIGN_IPV6", "true"),
        ("BRINDLE_CNI_ASSIGN_IPV4", "false"),
    ];
    let (ok, text) = install(d, &args, &v6);
    assert!(ok, "{text}");
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("net.d/10-brindle.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        plugin_conf(&list, 0)["ipam"]["assign_ipv4"],
        false,
        "{list}"
    );
    let (ok, text) = install(d, &args, &[("BRINDLE_CNI_ASSIGN_IPV4", "false")]);
    assert!(!ok && text.contains("--assign-ipv4 false needs"), "{text}");
}

#[test]
fn in_a_pod_it_writes_a_kubeconfig_with_a_token_file_the_agent_refreshes() {
    let d = common::tempfile_dir::Dir::new();
    let sa = d.0.join("sa");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(
        sa.join("ca.crt"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(sa.join("token"), "eyJhbGciOi.test.token").unwrap();
    // A configuration of another network that sorts first is reported.
    std::fs::create_dir_all(d.0.join("net.d")).unwrap();
    std::fs::write(d.0.join("net.d/05-old.conflist"), "{}").unwrap();
    let (ok, text) = install(
        &d.0,
        &[
            "--service-account-dir",
            sa.to_str().unwrap(),
            "--portmap",
            "false",
        ],
        &[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("05-old.conflist sorts before"), "{text}");
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(d.0.join("net.d/10-brindle.conflist")).unwrap(),
    )
    .unwrap();
    let p = &list["plugins"][0];
    assert_eq!(p["datastore_type"], "kubernetes");
    assert_eq!(p["kubeconfig"], "/etc/cni/net.d/brindle-kubeconfig");
    assert_eq!(list["plugins"].as_array().unwrap().len(), 1, "{list}");

    let kc_path = d.0.join("net.d/brindle-kubeconfig");
    let kc = kube::config::Kubeconfig::read_from(&kc_path).unwrap();
    let cluster = kc.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some("https://10.96.0.1:443"));
    assert!(cluster.certificate_authority_data.is_some());
    let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
    assert_eq!(
        user.token_file.as_deref(),
        Some("/var/lib/brindle/cni-token")
    );
    let copy = d.0.join("host/var/lib/brindle/cni-token");
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        "eyJhbGciOi.test.token"
    );
    use std::os::unix::fs::PermissionsExt;
    for p in [&copy, &kc_path] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} holds a credential", p.display());
    }

    // Outside a pod the Kubernetes datastore needs --kubeconfig, and says so.
    let (ok, text) = install(&d.0, &[], &[]);
    assert!(!ok);
    assert!(text.contains("give --kubeconfig"), "{text}");

    // --uninstall removes what it wrote and nothing else: the other network's list and a
    // plugin of someone else's stay.
    std::fs::write(d.0.join("bin/portmap"), b"theirs").unwrap();
    let (ok, text) = install(&d.0, &["--uninstall"], &[]);
    assert!(ok, "{text}");
    for gone in [
        "net.d/10-brindle.conflist",
        "net.d/brindle-kubeconfig",
        "bin/brindle-cni",
        "bin/brindle-ipam",
        "host/var/lib/brindle/cni-token",
    ] {
        assert!(!d.0.join(gone).exists(), "{gone} left: {text}");
    }
    assert!(d.0.join("net.d/05-old.conflist").exists() && d.0.join("bin/portmap").exists());
    let (ok, text) = install(&d.0, &["--uninstall"], &[]);
    assert!(
        ok && text.contains("nothing of brindle-cni's here"),
        "{text}"
    );
    // A list of that name that is not ours stays.
    std::fs::write(
        d.0.join("net.d/10-brindle.conflist"),
        r#"{"plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let (ok, text) = install(&d.0, &["--uninstall"], &[]);
    assert!(ok && text.contains("not brindle-cni's"), "{text}");
    assert!(d.0.join("net.d/10-brindle.conflist").exists());
}

/// etcd's TLS files and password are copied where the plugin on the host reads them
/// (root-only), and the configuration names them by their host paths, with Calico's keys.
#[test]
fn etcd_tls_files_are_copied_for_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("secrets");
    std::fs::create_dir_all(&src).unwrap();
    for (f, text) in [
        ("ca.pem", "CA"),
        ("cert.pem", "CERT"),
        ("key.pem", "KEY"),
        ("pw", "s3cret\n"),
    ] {
        std::fs::write(src.join(f), text).unwrap();
    }
    let path = |f: &str| src.join(f).display().to_string();
    let (ok, text) = install(
        d,
        &[
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            "https://198.18.0.10:2379",
            "--etcd-username",
            "brindle",
            "--etcd-password-file",
            &path("pw"),
        ],
        // Calico's variable names for the files.
        &[
            ("ETCD_CA_CERT_FILE", &path("ca.pem")),
            ("ETCD_CERT_FILE", &path("cert.pem")),
            ("ETCD_KEY_FILE", &path("key.pem")),
        ],
    );
    assert!(ok, "{text}");
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("net.d/10-brindle.conflist")).unwrap(),
    )
    .unwrap();
    let conf = &list["plugins"][0];
    use std::os::unix::fs::PermissionsExt;
    for (key, file, want) in [
        ("etcd_ca_cert_file", "etcd-ca", "CA"),
        ("etcd_cert_file", "etcd-cert", "CERT"),
        ("etcd_key_file", "etcd-key", "KEY"),
        ("etcd_password_file", "etcd-password", "s3cret"),
    ] {
        assert_eq!(
            conf[key],
            format!("/etc/cni/net.d/brindle-etcd/{file}"),
            "{conf}"
        );
        let copy = d.join("net.d/brindle-etcd").join(file);
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), want);
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    assert_eq!(conf["etcd_username"], "brindle");
    // Uninstalled, the copies of etcd's credentials go with the rest.
    let (ok, text) = install(d, &["--uninstall"], &[]);
    assert!(ok, "{text}");
    assert!(!d.join("net.d/brindle-etcd").exists(), "{text}");
}
