//! Seed 000, "scheduled broadcast": every 10 seconds every connected client receives the
//! server time. Workerman needs `count = 1` for this; ringcast's timer runs once per node and
//! its broadcast reaches the clients of every shard.
//!
//!     cargo run --example timer_broadcast -- [LISTEN_ADDR] [INTERVAL]
//!     # defaults: 0.0.0.0:2020 10s

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringcast::{Message, Server};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "0.0.0.0:2020".into());
    let every = args
        .next()
        .map_or(Duration::from_secs(10), |s| humantime::parse_duration(&s).expect("interval"));

    let node = Server::builder()
        .listen(listen.parse().expect("listen address"))
        .timer(every, |ctx| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            ctx.broadcast(Message::text(now.to_string()));
        })
        .start()?;

    println!("listening on {}", node.local_addr());
    node.join()
}
