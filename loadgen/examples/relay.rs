//! The integration tests' blocking relay as a standalone server, for trying the generator:
//!
//! ```text
//! cargo run --release -p ringcast-loadgen --example relay -- 127.0.0.1:9001
//! ringcast-loadgen --url ws://127.0.0.1:9001/ --connections 50 --rate 500 --duration 3
//! ```

#[path = "../tests/relay/mod.rs"]
mod relay;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let r = relay::start_on(&addr);
    eprintln!("relay listening on {}", r.url());
    loop {
        std::thread::park();
    }
}
