//! `brindlectl`: see the crate documentation.
fn main() -> std::process::ExitCode {
    brindle_ctl::main("brindlectl")
}
