//! Addresses that DNS answers admitted, and where a UID's DNS queries are redirected: the
//! eBPF side of following the instance's own answers. Written by isolate's resolver, judged
//! by the connect, sendmsg and ingress programs alongside the allow tries.

use std::net::IpAddr;
use std::time::Duration;

use aya::maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues};
use isolate_ebpf_common::{
    CounterKey, DnsRedirect, HostRule, HostV4Key, HostV6Key, HostValue, MAX_HOST_RULES, map_names,
};

use super::{BpfError, PinDir, map_error, open_map};

/// One way an admitted address may be reached: the host rule's ports and protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPorts {
    pub first: u16,
    pub last: u16,
    /// `PROTO_*` bits.
    pub protocols: u8,
}

impl HostPorts {
    /// The ports and protocol of a policy host rule.
    pub fn of(rule: &isolate_policy::HostRule) -> Self {
        let (first, last, protocols) = super::rules::port_bits(rule.ports, rule.protocol);
        Self {
            first,
            last,
            protocols,
        }
    }
}

/// The host-name maps of one attachment, opened from its pins (a resolver thread holds its own).
pub struct HostMaps {
    redirect: HashMap<MapData, u32, DnsRedirect>,
    hosts_v4: HashMap<MapData, HostV4Key, HostValue>,
    hosts_v6: HashMap<MapData, HostV6Key, HostValue>,
    counters: PerCpuHashMap<MapData, CounterKey, u64>,
}

impl HostMaps {
    pub fn open(pins: &PinDir) -> Result<Self, BpfError> {
        Ok(Self {
            redirect: open_map(pins, map_names::DNS_REDIRECT)?,
            hosts_v4: open_map(pins, map_names::HOSTS_V4)?,
            hosts_v6: open_map(pins, map_names::HOSTS_V6)?,
            counters: open_map(pins, map_names::BLOCKED)?,
        })
    }

    /// Sends `uid`'s DNS queries to `redirect` from now on.
    pub fn redirect(&mut self, uid: u32, redirect: DnsRedirect) -> Result<(), BpfError> {
        self.redirect
            .insert(uid, redirect, 0)
            .map_err(map_error(map_names::DNS_REDIRECT))
    }

    /// Lets `uid` reach `addr` as `ports` says until `expires` (`CLOCK_BOOTTIME`). An address
    /// already admitted keeps its other rules; the same rule gets the later expiry; when every
    /// slot is taken, the rule that expires first gives way.
    pub fn admit(
        &mut self,
        uid: u32,
        addr: IpAddr,
        ports: HostPorts,
        expires: Duration,
    ) -> Result<(), BpfError> {
        let expires_ns = u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX);
        match addr {
            IpAddr::V4(a) => {
                let key = HostV4Key {
                    uid,
                    addr: a.octets(),
                };
                let value = merged(self.hosts_v4.get(&key, 0).ok(), ports, expires_ns);
                self.hosts_v4
                    .insert(key, value, 0)
                    .map_err(map_error(map_names::HOSTS_V4))
            }
            IpAddr::V6(a) => {
                let key = HostV6Key {
                    uid,
                    addr: a.octets(),
                };
                let value = merged(self.hosts_v6.get(&key, 0).ok(), ports, expires_ns);
                self.hosts_v6
                    .insert(key, value, 0)
                    .map_err(map_error(map_names::HOSTS_V6))
            }
        }
    }

    /// Removes the addresses whose every rule expired before `now` (`CLOCK_BOOTTIME`); the
    /// programs already ignore them, this frees their room.
    pub fn remove_expired(&mut self, uid: u32, now: Duration) -> Result<(), BpfError> {
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.remove_where(uid, |_, value| {
            value.rules.iter().all(|r| r.expires_ns <= now_ns)
        })
    }

    /// Removes the addresses of `uid` for which `gone` says so.
    fn remove_where(
        &mut self,
        uid: u32,
        gone: impl Fn(IpAddr, &HostValue) -> bool,
    ) -> Result<(), BpfError> {
        let v4: Vec<HostV4Key> = self
            .hosts_v4
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, value)| key.uid == uid && gone(IpAddr::from(key.addr), value))
            .map(|(key, _)| key)
            .collect();
        for key in v4 {
            self.hosts_v4
                .remove(&key)
                .map_err(map_error(map_names::HOSTS_V4))?;
        }
        let v6: Vec<HostV6Key> = self
            .hosts_v6
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, value)| key.uid == uid && gone(IpAddr::from(key.addr), value))
            .map(|(key, _)| key)
            .collect();
        for key in v6 {
            self.hosts_v6
                .remove(&key)
                .map_err(map_error(map_names::HOSTS_V6))?;
        }
        Ok(())
    }

    /// Makes `admissions` all that `uid` has admitted: each address gets a fresh value of
    /// its rules (none kept from before), written over the old one so that no connect in
    /// between finds it missing; addresses not among them are removed.
    pub fn replace(
        &mut self,
        uid: u32,
        admissions: &[(IpAddr, HostPorts, Duration)],
    ) -> Result<(), BpfError> {
        let mut values: std::collections::HashMap<IpAddr, HostValue> =
            std::collections::HashMap::new();
        for &(addr, ports, until) in admissions {
            let expires_ns = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
            let old = values.get(&addr).copied();
            values.insert(addr, merged(old, ports, expires_ns));
        }
        for (&addr, &value) in &values {
            match addr {
                IpAddr::V4(a) => self
                    .hosts_v4
                    .insert(
                        HostV4Key {
                            uid,
                            addr: a.octets(),
                        },
                        value,
                        0,
                    )
                    .map_err(map_error(map_names::HOSTS_V4))?,
                IpAddr::V6(a) => self
                    .hosts_v6
                    .insert(
                        HostV6Key {
                            uid,
                            addr: a.octets(),
                        },
                        value,
                        0,
                    )
                    .map_err(map_error(map_names::HOSTS_V6))?,
            }
        }
        self.remove_where(uid, |addr, _| !values.contains_key(&addr))
    }

    /// Counts one refusal that user space made (a DNS question the policy does not allow) in
    /// the counters the programs use, so status and metrics see it as any other.
    pub fn count(&mut self, key: CounterKey) -> Result<(), BpfError> {
        let name = map_names::BLOCKED;
        let mut values: Vec<u64> = match self.counters.get(&key, 0) {
            Ok(values) => values.iter().copied().collect(),
            Err(e) => return Err(map_error(name)(e)),
        };
        // Only user space writes this key (the programs never see a DNS question), so a
        // read-modify-write from the one resolver thread of the UID loses nothing.
        if let Some(first) = values.first_mut() {
            *first += 1;
        }
        let values = PerCpuValues::try_from(values).map_err(BpfError::Cpus)?;
        self.counters
            .insert(key, values, 0)
            .map_err(map_error(name))
    }

    /// Forgets everything of `uid`: its redirect and its admitted addresses.
    pub fn forget(&mut self, uid: u32) -> Result<(), BpfError> {
        match self.redirect.remove(&uid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            // The kernel's "no such entry": the UID had no redirect.
            Err(aya::maps::MapError::SyscallError(ref e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(map_error(map_names::DNS_REDIRECT)(e)),
        }
        self.remove_where(uid, |_, _| true)
    }
}

/// `old` with `ports` admitted until `expires_ns`.
fn merged(old: Option<HostValue>, ports: HostPorts, expires_ns: u64) -> HostValue {
    let mut value = old.unwrap_or_default();
    let same = |rule: &HostRule| {
        rule.first == ports.first && rule.last == ports.last && rule.protocols == ports.protocols
    };
    let slot = value.rules.iter().position(same).unwrap_or_else(|| {
        // The slot that expires first: an empty one (0) or the oldest.
        (0..MAX_HOST_RULES)
            .min_by_key(|&i| value.rules[i].expires_ns)
            .unwrap_or(0)
    });
    let rule = &mut value.rules[slot];
    let expires_ns = if same(rule) {
        rule.expires_ns.max(expires_ns)
    } else {
        expires_ns
    };
    *rule = HostRule {
        expires_ns,
        first: ports.first,
        last: ports.last,
        protocols: ports.protocols,
        _pad: [0; 3],
    };
    value
}

/// The boot clock the programs compare expiries with (`bpf_ktime_get_boot_ns`).
pub fn boot_clock() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to; CLOCK_BOOTTIME exists since Linux 2.6.39.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP_443: HostPorts = HostPorts {
        first: 443,
        last: 443,
        protocols: 1,
    };

    #[test]
    fn the_same_rule_keeps_the_later_expiry_and_other_rules_stay() {
        let value = merged(None, TCP_443, 100);
        let value = merged(Some(value), TCP_443, 50);
        assert_eq!(value.rules[0].expires_ns, 100);
        let udp = HostPorts {
            first: 53,
            last: 53,
            protocols: 2,
        };
        let value = merged(Some(value), udp, 70);
        assert!(value.permits(443, 1, 99) && value.permits(53, 2, 69));
        assert!(!value.permits(443, 1, 100) && !value.permits(53, 2, 70));
        assert!(!value.permits(80, 1, 0));
    }

    #[test]
    fn a_full_value_gives_way_with_its_soonest_expiry() {
        let mut value = None;
        for port in 1..=u16::try_from(MAX_HOST_RULES).unwrap() {
            let ports = HostPorts {
                first: port,
                last: port,
                protocols: 1,
            };
            value = Some(merged(value, ports, 1000 + u64::from(port)));
        }
        let value = merged(value, TCP_443, 5000);
        assert!(value.permits(443, 1, 4999));
        assert!(!value.permits(1, 1, 0), "port 1 expired first and gave way");
        assert!(value.permits(2, 1, 0));
    }
}
