//! brindlectl against a real etcd.

mod common;

use common::*;

#[test]
fn resources_on_etcd() {
    let etcd = brindle_testsupport::EtcdServer::start();
    resource_scenario(&Ctl::etcd(&etcd.endpoint()));
}

#[test]
fn calico_documents_on_etcd() {
    let etcd = brindle_testsupport::EtcdServer::start();
    calico_scenario(&Ctl::etcd(&etcd.endpoint()));
}

#[test]
fn kubectl_plugin_version_and_completions() {
    let etcd = brindle_testsupport::EtcdServer::start();
    let ctl = Ctl::etcd(&etcd.endpoint());
    // The same program under kubectl's plugin name.
    let plugin = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-brindle"))
        .args(["get", "ippools", "--help"])
        .output()
        .expect("kubectl-brindle");
    let help = String::from_utf8_lossy(&plugin.stdout);
    assert!(help.contains("kubectl brindle get"), "{help}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-brindle"))
        .args(["get", "ippools"])
        .args(&ctl.flags)
        .output()
        .expect("kubectl-brindle");
    assert!(o.status.success(), "{o:?}");

    for (shell, needle) in [
        ("bash", "_brindlectl()"),
        ("zsh", "#compdef brindlectl"),
        ("fish", "complete -c brindlectl"),
    ] {
        let out = ctl.run(&["completion", shell]).ok().to_string();
        assert!(
            out.contains(needle) && out.contains("ipam"),
            "{shell}: {out}"
        );
    }
    ctl.run(&["completion", "tcsh"]).fails(2, "invalid value");

    // version: the client, and agents as their records say (none registered yet here).
    let v = ctl.run(&["version"]).ok().to_string();
    assert!(
        v.contains(&format!("Client Version:  {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("Agents:          none registered"), "{v}");
    // An unreachable datastore: the client version still prints, then a clear error.
    let dead = Ctl::etcd("http://127.0.0.1:9");
    let o = dead.run(&["version"]);
    assert!(o.stdout.contains("Client Version"), "{o:?}");
    o.fails(1, "127.0.0.1:9");
    dead.run(&["get", "ippools"]).fails(1, "127.0.0.1:9");
}
