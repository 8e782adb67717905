//! Connection limits shared by every shard and listener: connections open in all (Kafka's
//! `max.connections`), per client address (`max.connections.per.ip`, with per-address
//! overrides), and how fast new ones are taken (`max.connection.creation.rate`). Over a
//! count, a connection is closed as soon as it is accepted; over the rate, accepting
//! waits, so the kernel's backlog holds the clients meanwhile (Kafka throttles the same
//! way).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `ConnectionLimits::new` takes; 0 means no limit.
#[derive(Debug, Clone, Default)]
pub struct LimitSettings {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Limits of particular addresses, over `max_connections_per_ip`.
    pub per_ip_overrides: Vec<(IpAddr, usize)>,
    /// New connections per second, broker-wide.
    pub creation_rate: u32,
}

#[derive(Debug)]
pub struct ConnectionLimits {
    settings: LimitSettings,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// The current one-second window of the creation rate (from the first connection),
    /// and connections taken in it.
    window: Option<Instant>,
    created: u32,
}

/// Why a connection is not taken now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Close it: a count is at its limit.
    Full(String),
    /// Take it after this long (the creation rate).
    Later(Duration),
}

/// One admitted connection's place in the counts, given back on drop.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(settings: LimitSettings) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            settings,
            state: Mutex::new(State {
                total: 0,
                per_ip: HashMap::new(),
                window: None,
                created: 0,
            }),
        })
    }

    fn per_ip_limit(&self, ip: IpAddr) -> usize {
        self.settings
            .per_ip_overrides
            .iter()
            .find(|(address, _)| *address == ip)
            .map_or(self.settings.max_connections_per_ip, |(_, limit)| *limit)
    }

    /// Takes a connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Refusal::Full("connection limits unavailable".into()))?;
        let rate = self.settings.creation_rate;
        if rate > 0 {
            let elapsed = state.window.map_or(Duration::MAX, |window| {
                now.saturating_duration_since(window)
            });
            if elapsed >= Duration::from_secs(1) {
                (state.window, state.created) = (Some(now), 0);
            } else if state.created >= rate {
                return Err(Refusal::Later(Duration::from_secs(1) - elapsed));
            }
        }
        let max = self.settings.max_connections;
        if max > 0 && state.total >= max {
            return Err(Refusal::Full(format!(
                "the broker has {max} connections (max_connections)"
            )));
        }
        let per_ip = self.per_ip_limit(ip);
        let from_ip = state.per_ip.get(&ip).copied().unwrap_or(0);
        if per_ip > 0 && from_ip >= per_ip {
            return Err(Refusal::Full(format!(
                "{ip} has {per_ip} connections (max_connections_per_ip)"
            )));
        }
        state.total += 1;
        state.created += 1;
        *state.per_ip.entry(ip).or_default() += 1;
        Ok(Admitted {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut state) = self.limits.state.lock() {
            state.total = state.total.saturating_sub(1);
            if let Some(count) = state.per_ip.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    state.per_ip.remove(&self.ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn counts_are_per_address_and_in_all_and_return_on_drop() {
        let limits = ConnectionLimits::new(LimitSettings {
            max_connections: 4,
            max_connections_per_ip: 2,
            per_ip_overrides: vec![(ip(9), 3)],
            creation_rate: 0,
        });
        let now = Instant::now();
        let a1 = limits.admit(ip(1), now).unwrap();
        let _a2 = limits.admit(ip(1), now).unwrap();
        assert!(matches!(limits.admit(ip(1), now), Err(Refusal::Full(_))));
        let _b = [
            limits.admit(ip(9), now).unwrap(),
            limits.admit(ip(9), now).unwrap(),
        ];
        assert!(
            matches!(limits.admit(ip(2), now), Err(Refusal::Full(m)) if m.contains("max_connections"))
        );
        drop(a1);
        assert!(limits.admit(ip(1), now).is_ok());
    }

    #[test]
    fn the_creation_rate_holds_new_connections_to_the_next_second() {
        let limits = ConnectionLimits::new(LimitSettings {
            creation_rate: 3,
            ..LimitSettings::default()
        });
        let start = Instant::now();
        let kept: Vec<_> = (0..3)
            .map(|_| limits.admit(ip(1), start).unwrap())
            .collect();
        let later = start + Duration::from_millis(400);
        assert_eq!(
            limits.admit(ip(1), later).unwrap_err(),
            Refusal::Later(Duration::from_millis(600))
        );
        assert!(limits.admit(ip(1), start + Duration::from_secs(1)).is_ok());
        drop(kept);
    }
}
