//! ringcast
pub mod addressing;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod command;
pub mod config;
pub mod fanout;
pub mod fuzzing;
pub mod history;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod observe;
pub mod proto;
pub mod route;
pub mod server;
pub mod shard;
pub mod tls;

pub use addressing::{
    Applied, ClientInfo, GroupInfo, Publish, PublishReport, RequestError, Session, Stats, To,
    UidInfo,
};
pub use config::{Config, OnMessage, SlowConsumerPolicy};
pub use ids::{ConnId, GroupId, NodeId, Uid};
pub use proto::Message;
pub use server::{Builder, Handle, Server, ShardHealth};
pub use shard::{ConnInfo, Ctx, Pending};
