//! The node's per-address tables ([`crate::auth::IpTable`]), striped over
//! [`crate::auth::ip::STRIPES`] mutexes. Touched only at accept, at the end of a handshake and
//! when a connection that was counted closes: never on the per-message path.

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::auth::ip::STRIPES;
use crate::auth::{IpKey, IpTable, Policy, RateVerdict};

/// Per-address limits of one node.
pub(crate) struct IpLimits {
    stripes: Box<[Mutex<IpTable>]>,
    connections_per_ip_max: usize,
    rate: f64,
    burst: f64,
}

impl IpLimits {
    pub(crate) fn new(policy: &Policy) -> Self {
        let per_stripe = (policy.ips_tracked_max / STRIPES).max(1);
        IpLimits {
            stripes: (0..STRIPES).map(|_| Mutex::new(IpTable::new(per_stripe))).collect(),
            connections_per_ip_max: policy.connections_per_ip_max,
            rate: policy.handshakes_per_ip_per_sec,
            burst: policy.handshakes_per_ip_burst,
        }
    }

    fn stripe(&self, key: IpKey) -> MutexGuard<'_, IpTable> {
        // A panic while holding a stripe cannot leave a table half-updated in a way that
        // matters (counts are plain integers): keep using it.
        self.stripes[key.stripe()].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handshake from `ip` at `now`: allowed unless the address is over its rate.
    pub(crate) fn handshake(&self, ip: IpAddr, now: Instant) -> RateVerdict {
        if self.rate <= 0.0 {
            return RateVerdict { allowed: true, evicted: 0 };
        }
        let key = IpKey::of(ip);
        self.stripe(key).handshake(key, now, self.rate, self.burst)
    }

    /// Count a connection from `ip`: `Ok(None)` when there is no per-address limit (nothing
    /// to release later), `Ok(Some(key))` when counted, `Err(())` when the address is full.
    pub(crate) fn open(&self, ip: IpAddr) -> Result<Option<IpKey>, ()> {
        if self.connections_per_ip_max == 0 {
            return Ok(None);
        }
        let key = IpKey::of(ip);
        if self.stripe(key).open(key, self.connections_per_ip_max) {
            Ok(Some(key))
        } else {
            Err(())
        }
    }

    /// A connection counted by [`IpLimits::open`] is gone.
    pub(crate) fn close(&self, key: IpKey) {
        self.stripe(key).close(key);
    }
}
