//! Runs a shell script inside a qemu VM booted from Debian's kernel, for what the host kernel
//! cannot do (it has no `ipip`). The recipe (DESIGN.md §7): `linux-image-amd64` under TCG
//! (KVM does not boot a stock kernel here), a busybox initramfs that loads virtio, 9p and
//! overlay, mounts the host's root read-only over 9p with a tmpfs overlay and `switch_root`s
//! into it, so every host binary (ours, ip, iptables, bird, etcd, python3) runs unchanged and
//! the kernel can load its own modules. No network to the outside (`-nic none`).
//!
//! The initramfs is built once and cached under the target directory, keyed by everything it
//! is made of. The script's output and a result line come back over the serial console; a VM
//! that does not finish in time is killed and the console's tail is reported. A guest that
//! hangs before the script starts is booted again (see `run_in_vm`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Modules the initramfs loads (with their dependencies) to reach the host's root.
const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

pub struct VmSpec<'a> {
    /// Run by `/bin/sh` inside the VM, as root, from `/`.
    pub script: &'a str,
    /// `modprobe`d before the script (the kernel also auto-loads on demand).
    pub modules: &'a [&'a str],
    /// For boot and script together, over every boot attempt.
    pub timeout: Duration,
    /// From starting qemu to stage 2 (the kernel up, the host's root mounted); a guest slower
    /// than this is booted again (see `run_in_vm`). An idle host gets there in a few seconds
    /// and to the script in about 9 s.
    pub boot_timeout: Duration,
    pub memory_mb: u32,
    pub cpus: u32,
}

impl Default for VmSpec<'_> {
    fn default() -> Self {
        VmSpec {
            script: "true",
            modules: &[],
            timeout: Duration::from_secs(600),
            boot_timeout: Duration::from_secs(180),
            memory_mb: 3072,
            cpus: 2,
        }
    }
}

#[derive(Debug)]
pub struct VmResult {
    /// The script's exit status.
    pub status: i32,
    /// What the script printed (the console between the boot and the result lines).
    pub output: String,
    /// From starting qemu to the host root mounted and the script about to run.
    pub boot: Duration,
    pub total: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot run a VM here: {0}")]
    Unavailable(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the VM did not finish within {timeout:?}; console tail:\n{tail}")]
    Timeout { timeout: Duration, tail: String },
    #[error(
        "the VM did not boot in {attempts} attempt(s) of {each:?} each; last console tail:\n{tail}"
    )]
    BootHung {
        attempts: u32,
        each: Duration,
        tail: String,
    },
    #[error("the VM stopped without a result line (crash or panic?); console tail:\n{0}")]
    NoResult(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |e| VmError::Io(what, e)
}

/// The kernel to boot: `$BRINDLE_VM_KERNEL` (a version), else the newest `/boot/vmlinuz-*`
/// whose modules are installed.
pub fn kernel() -> Result<(String, PathBuf), VmError> {
    let want = std::env::var("BRINDLE_VM_KERNEL").ok();
    let mut found: Vec<String> = std::fs::read_dir("/boot")
        .map_err(io("reading /boot"))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .filter(|v| Path::new(&format!("/lib/modules/{v}/modules.dep")).exists())
        .filter(|v| want.as_ref().is_none_or(|w| w == v))
        .collect();
    found.sort();
    let v = found.pop().ok_or_else(|| {
        VmError::Unavailable(
            "no /boot/vmlinuz-* with its modules (apt-get install linux-image-amd64)".into(),
        )
    })?;
    let path = PathBuf::from(format!("/boot/vmlinuz-{v}"));
    Ok((v, path))
}

/// Where built initramfs images and per-run files live: `<target>/brindle-vm`.
fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return Path::new(&d).join("brindle-vm");
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(|t| t.join("brindle-vm"))
        .unwrap_or_else(|| std::env::temp_dir().join("brindle-vm"))
}

/// `modules.dep` order: every module after what it depends on.
fn with_deps(kver: &str, roots: &[&str]) -> Result<Vec<PathBuf>, VmError> {
    let base = PathBuf::from(format!("/lib/modules/{kver}"));
    let dep = std::fs::read_to_string(base.join("modules.dep")).map_err(io("modules.dep"))?;
    let table: std::collections::HashMap<String, (String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            let name = Path::new(m)
                .file_name()?
                .to_str()?
                .split(".ko")
                .next()?
                .replace('-', "_");
            Some((
                name,
                (
                    m.to_owned(),
                    deps.split_whitespace().map(str::to_owned).collect(),
                ),
            ))
        })
        .collect();
    let by_path: std::collections::HashMap<&str, &str> = table
        .iter()
        .map(|(n, (p, _))| (p.as_str(), n.as_str()))
        .collect();
    let mut out: Vec<PathBuf> = vec![];
    fn visit(
        name: &str,
        table: &std::collections::HashMap<String, (String, Vec<String>)>,
        by_path: &std::collections::HashMap<&str, &str>,
        base: &Path,
        out: &mut Vec<PathBuf>,
    ) -> Result<(), VmError> {
        // Built into the kernel: nothing to load.
        let Some((path, deps)) = table.get(name) else {
            return Ok(());
        };
        for d in deps {
            if let Some(n) = by_path.get(d.as_str()) {
                visit(n, table, by_path, base, out)?;
            }
        }
        let full = base.join(path);
        if !out.contains(&full) {
            out.push(full);
        }
        Ok(())
    }
    for r in roots {
        visit(&r.replace('-', "_"), &table, &by_path, &base, &mut out)?;
    }
    Ok(out)
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100000001b3);
    }
}

const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /dev /ro /rw /newroot
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
for m in $($B cat /mods/order); do $B insmod /mods/$m || echo "brindle-vm: insmod $m failed"; done
STAGE2=$($B sed -n 's/.*brindle.stage2=\([^ ]*\).*/\1/p' /proc/cmdline)
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /ro || echo "brindle-vm: 9p mount failed"
$B mount -t tmpfs rw /rw
$B mkdir -p /rw/upper /rw/work
$B mount -t overlay overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work /newroot || echo "brindle-vm: overlay failed"
$B umount /proc
$B mount --move /dev /newroot/dev
exec $B switch_root /newroot /bin/sh "$STAGE2"
"#;

/// newc cpio, the initramfs format.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

/// Builds (or reuses) the initramfs for kernel `kver`.
pub fn initramfs(kver: &str) -> Result<PathBuf, VmError> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| {
            VmError::Unavailable("no busybox (apt-get install busybox-static)".into())
        })?;
    let modules = with_deps(kver, ROOT_MODULES)?;
    let mut key = 0xcbf29ce484222325u64;
    fnv(&mut key, INIT.as_bytes());
    fnv(&mut key, kver.as_bytes());
    for p in std::iter::once(PathBuf::from(busybox)).chain(modules.iter().cloned()) {
        let m = std::fs::metadata(&p).map_err(io(format!("{}", p.display())))?;
        fnv(&mut key, p.to_string_lossy().as_bytes());
        fnv(&mut key, &m.len().to_le_bytes());
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or_default();
        fnv(&mut key, &mtime.to_le_bytes());
    }
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let path = dir.join(format!("initramfs-{kver}-{key:016x}.cpio"));
    if path.exists() {
        return Ok(path);
    }
    let mut c = Cpio {
        out: vec![],
        ino: 0,
    };
    for d in ["bin", "mods", "proc", "dev", "ro", "rw", "newroot"] {
        c.entry(d, 0o040755, &[]);
    }
    let bb = std::fs::read(busybox).map_err(io("reading busybox"))?;
    c.entry("bin/busybox", 0o100755, &bb);
    c.entry("init", 0o100755, INIT.as_bytes());
    let mut order = String::new();
    for m in &modules {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let data = std::fs::read(m).map_err(io(format!("reading {}", m.display())))?;
        c.entry(&format!("mods/{name}"), 0o100644, &data);
        order.push_str(name);
        order.push('\n');
    }
    c.entry("mods/order", 0o100644, order.as_bytes());
    c.entry("TRAILER!!!", 0, &[]);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &c.out).map_err(io("writing the initramfs"))?;
    std::fs::rename(&tmp, &path).map_err(io("placing the initramfs"))?;
    Ok(path)
}

/// Stage 2 has begun: the kernel is up and the host's root mounted (the boot deadline ends).
const ROOTED: &str = "BRINDLE-VM-STAGE2";
const BOOTED: &str = "BRINDLE-VM-BOOTED";
const EXIT: &str = "BRINDLE-VM-EXIT";

fn stage2(script: &Path, modules: &[&str]) -> String {
    format!(
        r#"#!/bin/sh
echo {ROOTED}
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
cp {script} /script.sh
mount -t tmpfs tmpfs /run
mkdir -p /run/netns /run/lock
# /tmp stays the overlay's (writes land in its tmpfs, never on the host): a checkout or target
# directory under the host's /tmp must stay visible.
mkdir -p /tmp
ip link set lo up
for m in {modules}; do modprobe "$m" || echo "brindle-vm: modprobe $m failed"; done
echo {BOOTED}
cd /
sh /script.sh
echo "{EXIT} $?"
echo 1 > /proc/sys/kernel/sysrq
echo o > /proc/sysrq-trigger
sleep 60
"#,
        script = script.display(),
        modules = modules.join(" "),
    )
}

/// Boots the VM, runs `spec.script`, powers off. A guest that has not reached stage 2 (its
/// kernel up, the host's root mounted) within `spec.boot_timeout` is killed and booted
/// afresh, up to `BOOT_ATTEMPTS` times in all: under TCG on a loaded host a guest kernel now
/// and then stalls for good in early boot (RCU stalls on a vCPU, nothing else printed),
/// before anything of the script has run, so a fresh boot is the same test. `spec.timeout`
/// bounds all attempts together.
pub fn run_in_vm(spec: &VmSpec) -> Result<VmResult, VmError> {
    let qemu = "qemu-system-x86_64";
    if Command::new(qemu)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Err(VmError::Unavailable(
            "no qemu-system-x86_64 (apt-get install qemu-system-x86)".into(),
        ));
    }
    let (kver, kernel) = kernel()?;
    let initrd = initramfs(&kver)?;
    let deadline = Instant::now() + spec.timeout;
    let mut attempt = 1;
    loop {
        match boot_once(qemu, &kernel, &initrd, spec, deadline)? {
            Attempt::Done(r) => return Ok(r),
            Attempt::BootHung(tail) if attempt < BOOT_ATTEMPTS => {
                eprint_block(
                    &format!(
                        "VM attempt {attempt}: no boot within {:?}, booting again",
                        spec.boot_timeout
                    ),
                    &tail,
                );
                attempt += 1;
            }
            Attempt::BootHung(tail) => {
                return Err(VmError::BootHung {
                    attempts: attempt,
                    each: spec.boot_timeout,
                    tail,
                })
            }
        }
    }
}

/// Boots at most this many times when the guest hangs before the script.
pub const BOOT_ATTEMPTS: u32 = 3;

enum Attempt {
    Done(VmResult),
    /// The console's tail of a guest that did not reach the script in time.
    BootHung(String),
}

fn boot_once(
    qemu: &str,
    kernel: &Path,
    initrd: &Path,
    spec: &VmSpec,
    deadline: Instant,
) -> Result<Attempt, VmError> {
    let run = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(cache_dir())
        .map_err(io("making the run directory"))?;
    let script = run.path().join("script.sh");
    std::fs::write(&script, spec.script).map_err(io("writing the script"))?;
    let stage = run.path().join("stage2.sh");
    std::fs::write(&stage, stage2(&script, spec.modules)).map_err(io("writing stage 2"))?;
    let console = run.path().join("console.log");
    // qemu's own complaints go to a file: a pipe nobody reads could fill and stall it.
    let qemu_err = run.path().join("qemu.err");
    let err_file = std::fs::File::create(&qemu_err).map_err(io("creating qemu's error log"))?;
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-accel", "tcg,thread=multi", "-machine", "pc"])
        .args([
            "-smp",
            &spec.cpus.to_string(),
            "-m",
            &spec.memory_mb.to_string(),
        ])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet brindle.stage2={}",
            stage.display()
        ))
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .map_err(io("starting qemu"))?;
    let mut boot = None;
    let mut rooted = false;
    let read = || std::fs::read_to_string(&console).unwrap_or_default();
    loop {
        if let Some(_st) = child.try_wait().map_err(io("waiting for qemu"))? {
            break;
        }
        if boot.is_none() {
            let text = read();
            rooted |= text.contains(ROOTED);
            if text.contains(BOOTED) {
                boot = Some(start.elapsed());
            }
        }
        let now = Instant::now();
        if now > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VmError::Timeout {
                timeout: spec.timeout,
                tail: tail_of(&read(), 60),
            });
        }
        if !rooted && start.elapsed() > spec.boot_timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Attempt::BootHung(tail_of(&read(), 20)));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let total = start.elapsed();
    let text = read();
    let body = text
        .split_once(BOOTED)
        .map(|(_, b)| b)
        .unwrap_or(text.as_str());
    let Some((output, rest)) = body.rsplit_once(EXIT) else {
        let stderr = std::fs::read_to_string(&qemu_err).unwrap_or_default();
        return Err(VmError::NoResult(format!(
            "{}\nqemu: {}",
            tail_of(&text, 60),
            stderr.trim()
        )));
    };
    let status = rest
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    Ok(Attempt::Done(VmResult {
        status,
        output: output.trim_start_matches(['\r', '\n']).to_owned(),
        boot: boot.unwrap_or(total),
        total,
    }))
}

fn tail_of(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes `s` to stderr, for a test's log.
pub fn eprint_block(title: &str, s: &str) {
    let mut e = std::io::stderr();
    let _ = writeln!(e, "---- {title} ----\n{s}\n---- end of {title} ----");
}
