//! c10m-loadgen: placeholder until the loadgen issue fills it.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("c10m-loadgen: not built yet");
    std::process::exit(2);
}
