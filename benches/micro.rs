//! Criterion micro-benchmarks of the hot pieces: frame encoding, inbound frame parsing, the
//! per-connection queue with vectored-write preparation, and cross-shard dispatch.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::fanout::{Outbox, SharedFrame};
use ringcast::proto::{Codec, Message};

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_frame");
    for size in [64usize, 1024, 64 * 1024] {
        let msg = Message::binary(vec![7u8; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &msg, |b, m| {
            b.iter(|| black_box(m).encode())
        });
    }
    g.finish();
}

/// Masked client frames, as a relay publisher sends them.
fn client_frames(size: usize, count: usize) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(0x82);
        match size {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend((0..size).map(|i| (i as u8) ^ key[i % 4]));
    }
    out
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_inbound");
    for size in [64usize, 1024] {
        let wire = client_frames(size, 64);
        g.throughput(Throughput::Elements(64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            let mut codec = Codec::default();
            let mut out = Vec::new();
            b.iter(|| {
                let mut n = 0;
                codec.handle_read(black_box(&wire), 1 << 20, &mut out, |_| n += 1).unwrap();
                assert_eq!(n, 64);
            })
        });
    }
    g.finish();
}

/// One broadcast into 1,000 outboxes, then every outbox's writev batch prepared and completed.
fn outbox_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbox");
    let frame = SharedFrame::new(Message::binary(vec![1u8; 64]).encode());
    let mut boxes: Vec<Outbox> = (0..1000).map(|_| Outbox::default()).collect();
    let mut batch: Vec<SharedFrame> = Vec::with_capacity(1024);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("push_1000_recipients", |b| {
        b.iter(|| {
            for o in boxes.iter_mut() {
                o.push(frame.clone(), 1 << 20);
            }
            for o in boxes.iter_mut() {
                o.take_batch(&mut batch);
                let n: usize = batch.iter().map(SharedFrame::len).sum();
                o.complete(&mut batch, n);
            }
        })
    });
    g.bench_function("writev_batch_of_64_partial", |b| {
        let mut o = Outbox::default();
        b.iter(|| {
            for _ in 0..64 {
                o.push(frame.clone(), 1 << 20);
            }
            o.take_batch(&mut batch);
            o.complete(&mut batch, 64 * frame.len() / 2 + 3);
            o.take_batch(&mut batch);
            let rest: usize = batch.iter().map(SharedFrame::len).sum();
            o.complete(&mut batch, rest);
        })
    });
    g.finish();
}

/// `Handle::broadcast` into a running 2-shard node with no connections: encode once, one
/// crossbeam send per shard, eventfd wake-ups coalesced.
fn cross_shard(c: &mut Criterion) {
    let node = ringcast::Server::builder()
        .configure(|cfg| {
            cfg.listen = "127.0.0.1:0".parse().unwrap();
            cfg.shards = 2;
            cfg.pin = false;
        })
        .start()
        .expect("start node");
    let mut g = c.benchmark_group("cross_shard");
    g.throughput(Throughput::Elements(1));
    g.bench_function("broadcast_to_2_shards", |b| {
        b.iter(|| {
            while node.broadcast(black_box("tick")).is_err() {
                std::thread::yield_now();
            }
        })
    });
    g.finish();
    node.shutdown();
    node.join().unwrap();
}

criterion_group!(benches, encode, parse, outbox_fanout, cross_shard);
criterion_main!(benches);
