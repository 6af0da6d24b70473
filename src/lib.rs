//! ringcast
pub mod command;
pub mod config;
pub mod fanout;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod proto;
pub mod route;
pub mod server;
pub mod shard;

pub use config::{Config, OnMessage, SlowConsumerPolicy};
pub use proto::Message;
pub use server::{Builder, ConnId, ConnInfo, Handle, PublishError, Server};
pub use shard::Ctx;
