//! Admission: the connection limits checked right after accept (`max_connections`,
//! `max_connections_per_ip`), before a single byte is read.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{lock, Engine};

impl Engine {
    /// Counts a new connection from `ip`; `None` if a limit says no.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut per_ip = lock(&self.per_ip);
        let n = per_ip.entry(ip).or_insert(0);
        if self.limits.max_connections_per_ip > 0 && *n >= self.limits.max_connections_per_ip {
            drop(per_ip);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *n += 1;
        Some(Admitted {
            engine: self.clone(),
            ip,
        })
    }
}

/// A connection counted against the limits; uncounted on drop.
pub(super) struct Admitted {
    engine: Arc<Engine>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.engine.connections.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = lock(&self.engine.per_ip);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::config::Limits;
    use crate::engine::Access;

    #[test]
    fn connection_limits_count_per_ip_and_in_all() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        };
        let engine = Engine::new(limits, Access::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = engine.admit(a).unwrap();
        let _second = engine.admit(a).unwrap();
        assert!(engine.admit(a).is_none(), "third from one address");
        let _other = engine.admit(b).unwrap();
        assert!(engine.admit(b).is_none(), "fourth in all");
        drop(first);
        assert!(
            engine.admit(a).is_some(),
            "a closed connection frees its slot"
        );
    }
}
