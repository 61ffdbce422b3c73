//! c10m-sysctl: placeholder until the sysctl issue fills it.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("c10m-sysctl: not built yet");
    std::process::exit(2);
}
