//! The VM runner itself: a boot with the Debian kernel, a module the host lacks, the script's
//! status and output, a hung script killed at the bound, and a guest that hangs in boot booted
//! again.

use std::time::Duration;

use brindle_testsupport::vm::{run_in_vm, VmError, VmSpec};

#[test]
fn a_script_runs_in_the_vm_with_ipip_and_returns_its_status() {
    let r = run_in_vm(&VmSpec {
        script:
            "ip link show tunl0 && echo from-the-vm $(uname -r) && test -x /usr/bin/etcd; exit 7",
        modules: &["ipip"],
        ..Default::default()
    })
    .expect("vm");
    eprintln!("boot {:?}, total {:?}\n{}", r.boot, r.total, r.output);
    assert_eq!(r.status, 7, "{}", r.output);
    assert!(r.output.contains("tunl0@NONE"), "{}", r.output);
    assert!(r.output.contains("from-the-vm"), "{}", r.output);
}

#[test]
fn a_hung_vm_is_killed_and_reported() {
    let e = run_in_vm(&VmSpec {
        script: "echo about-to-hang; sleep 1000",
        timeout: Duration::from_secs(45),
        ..Default::default()
    })
    .expect_err("must time out");
    match e {
        VmError::Timeout { tail, .. } => assert!(tail.contains("about-to-hang"), "{tail}"),
        other => panic!("{other}"),
    }
}

#[test]
fn a_guest_that_does_not_boot_in_time_is_booted_again_then_reported() {
    // No guest reaches the script in a second, so every attempt is cut off in boot (and the
    // error is not the overall Timeout).
    let e = run_in_vm(&VmSpec {
        script: "echo never-reached",
        boot_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(120),
        ..Default::default()
    })
    .expect_err("must not boot");
    match e {
        VmError::BootHung { attempts, .. } => {
            assert_eq!(attempts, brindle_testsupport::vm::BOOT_ATTEMPTS)
        }
        other => panic!("{other}"),
    }
}
