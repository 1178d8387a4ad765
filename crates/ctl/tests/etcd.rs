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
