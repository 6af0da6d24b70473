//! Seed 000, "group chat": whatever a client sends is sent to every connected client.
//!
//!     cargo run --example group_chat -- [LISTEN_ADDR]      # default 0.0.0.0:2020

use ringcast::Server;

fn main() -> std::io::Result<()> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "0.0.0.0:2020".into());

    let node = Server::builder()
        .listen(listen.parse().expect("listen address"))
        .on_connect(|_ctx, id, info| eprintln!("connection {id} from {}", info.peer))
        .on_message(|ctx, _from, message| ctx.broadcast(message))
        .on_close(|_ctx, id| eprintln!("connection {id} closed"))
        .start()?;

    println!("listening on {}", node.local_addr());
    node.join()
}
