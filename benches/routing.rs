//! Routing-table footprint and send-path cost (`ringcast::route::Router`).
//!
//! Memory is measured, not estimated: a counting global allocator tracks live heap bytes, and
//! the table for 10,000 connections × 10 groups each (1,000 groups of 100) must stay within
//! 128 bytes per membership (the budget that keeps a million memberships per shard around
//! 100 MB). `recipients` is timed with a plain `Instant` loop; those figures are a report, not
//! a pass/fail threshold.
//!
//! `cargo bench --bench routing` prints a few `routing: ...` lines.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ringcast::ids::{GroupId, Slot, Uid};
use ringcast::route::{Counts, Router, Target};

/// The system allocator, plus a count of live bytes.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees carry over; the counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract (non-zero size).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds `realloc`'s
        // contract for `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const CONNECTIONS: u32 = 10_000;
const GROUPS_PER_CONNECTION: u32 = 10;
const GROUPS: u32 = 1_000;
const GROUP_MEMBERS: u32 = CONNECTIONS * GROUPS_PER_CONNECTION / GROUPS;
const GROUPS_MAX: usize = 64;
const MEMBERSHIP_BYTES_MAX: f64 = 128.0;
/// Connections sharing one uid in the binding measurement.
const SLOTS_PER_UID: u32 = 4;

/// Group of `slot`'s `k`-th membership. Groups come in `GROUPS_PER_CONNECTION` bands of
/// `GROUP_MEMBERS`; within band `k` the slot block `q = slot / GROUP_MEMBERS` is rotated by a
/// band-specific stride, so every group gets exactly one slot of each block (exactly
/// `GROUP_MEMBERS` members) while groups of different bands barely overlap (unlike a plain
/// modulus, which would give whole bands identical member lists).
fn group_of(slot: Slot, k: u32) -> u32 {
    let (q, r) = (slot / GROUP_MEMBERS, slot % GROUP_MEMBERS);
    let stride = 7 * k + 1;
    k * GROUP_MEMBERS + (r + q * stride) % GROUP_MEMBERS
}

/// Nanoseconds per call of `f`, after a warm-up of a tenth as many calls.
fn ns_per_op(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn main() {
    // Everything allocated from here on (the names included) belongs to the router.
    let before_bytes = live_bytes();
    let names: Vec<GroupId> =
        (0..GROUPS).map(|i| GroupId::new(&format!("room-{i:04}"), 64).unwrap()).collect();
    let mut router = Router::new();
    for slot in 0..CONNECTIONS {
        for k in 0..GROUPS_PER_CONNECTION {
            router.join(slot, &names[group_of(slot, k) as usize], GROUPS_MAX).unwrap();
        }
    }
    drop(names); // The router holds the only references now.
    let memberships = (CONNECTIONS * GROUPS_PER_CONNECTION) as usize;
    assert_eq!(router.counts(), Counts { groups: GROUPS as usize, memberships, uids: 0, bound: 0 });
    assert!(router.groups().all(|g| router.members(g).len() == GROUP_MEMBERS as usize));
    let membership_bytes = (live_bytes() - before_bytes) as f64 / memberships as f64;
    println!(
        "routing: memory per membership: {membership_bytes:.1} bytes \
         ({CONNECTIONS} connections x {GROUPS_PER_CONNECTION} groups, {GROUPS} groups)"
    );
    assert!(
        membership_bytes <= MEMBERSHIP_BYTES_MAX,
        "{membership_bytes:.1} bytes per membership exceeds {MEMBERSHIP_BYTES_MAX}"
    );

    // Uid bindings on top (the per-slot state already exists, as for most real connections).
    let before_bytes = live_bytes();
    let uids: Vec<Uid> = (0..CONNECTIONS / SLOTS_PER_UID)
        .map(|i| Uid::new(&format!("user-{i:05}"), 64).unwrap())
        .collect();
    for slot in 0..CONNECTIONS {
        router.bind_uid(slot, &uids[(slot / SLOTS_PER_UID) as usize]);
    }
    drop(uids);
    let binding_bytes = (live_bytes() - before_bytes) as f64 / f64::from(CONNECTIONS);
    println!(
        "routing: memory per uid binding: {binding_bytes:.1} bytes \
         ({CONNECTIONS} connections, {SLOTS_PER_UID} per uid)"
    );

    // Send path. A small room (the common chat case) on the same, populated router.
    let small = GroupId::new("small-room", 64).unwrap();
    for slot in 0..10 {
        router.join(slot * 997 % CONNECTIONS, &small, GROUPS_MAX).unwrap();
    }
    let sender = router.members(&small)[3];
    let mut out: Vec<Slot> = Vec::with_capacity(CONNECTIONS as usize);
    let one = [small];
    let three = [0, GROUP_MEMBERS, 2 * GROUP_MEMBERS]
        .map(|i| GroupId::new(&format!("room-{i:04}"), 64).unwrap());

    let ns = ns_per_op(2_000_000, || {
        router.recipients(Target::Groups(black_box(&one)), &[], &mut out);
        black_box(&out);
    });
    println!("routing: recipients, 1 group of 10: {ns:.1} ns/op");
    let ns = ns_per_op(2_000_000, || {
        router.recipients(Target::Groups(black_box(&one)), &[sender], &mut out);
        black_box(&out);
    });
    assert_eq!(out.len(), 9);
    println!("routing: recipients, 1 group of 10 minus the sender: {ns:.1} ns/op");
    let ns = ns_per_op(200_000, || {
        router.recipients(Target::Groups(black_box(&three)), &[], &mut out);
        black_box(&out);
    });
    let listed = out.len();
    assert!(listed < 3 * GROUP_MEMBERS as usize, "the bands overlap, so some are de-duplicated");
    println!(
        "routing: recipients, 3 groups of {GROUP_MEMBERS} ({listed} distinct): {ns:.1} ns/op \
         ({:.2} ns per recipient)",
        ns / listed as f64
    );
}
