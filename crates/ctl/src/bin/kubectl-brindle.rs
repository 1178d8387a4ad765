//! `kubectl-brindle`: brindlectl as a kubectl plugin (`kubectl brindle get ippools`).
fn main() -> std::process::ExitCode {
    brindle_ctl::main("kubectl-brindle")
}
