//! Property tests of network normalisation: it allows exactly what the input
//! allowed, its output cannot be merged further, and it is idempotent.

use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use isolate_policy::{NetRule, PortRange, Protocol, normalise_v4, normalise_v6};
use proptest::prelude::*;

/// What the checks need of a network type, as `u128` address intervals.
trait Net: Copy + Ord + Debug {
    const BITS: u32;
    fn first(&self) -> u128;
    fn last(&self) -> u128;
    fn siblings(&self, other: &Self) -> bool;
    fn normalise(rules: &[NetRule<Self>]) -> Vec<NetRule<Self>>;
}

impl Net for Ipv4Net {
    const BITS: u32 = 32;
    fn first(&self) -> u128 {
        u32::from(self.network()).into()
    }
    fn last(&self) -> u128 {
        u32::from(self.broadcast()).into()
    }
    fn siblings(&self, other: &Self) -> bool {
        self.is_sibling(other)
    }
    fn normalise(rules: &[NetRule<Self>]) -> Vec<NetRule<Self>> {
        normalise_v4(rules)
    }
}

impl Net for Ipv6Net {
    const BITS: u32 = 128;
    fn first(&self) -> u128 {
        self.network().into()
    }
    fn last(&self) -> u128 {
        self.broadcast().into()
    }
    fn siblings(&self, other: &Self) -> bool {
        self.is_sibling(other)
    }
    fn normalise(rules: &[NetRule<Self>]) -> Vec<NetRule<Self>> {
        normalise_v6(rules)
    }
}

type Key = (Protocol, Option<PortRange>);

fn key_of<N>(rule: &NetRule<N>) -> Key {
    (rule.protocol, rule.ports)
}

/// A few (protocol, ports) groups, so rules share groups often.
fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        3 => Just((Protocol::Any, None)),
        1 => Just((Protocol::Tcp, Some(PortRange::single(443)))),
        1 => Just((Protocol::Udp, Some(PortRange { first: 53, last: 54 }))),
        1 => Just((Protocol::Any, Some(PortRange::single(443)))),
    ]
}

/// IPv4 addresses mostly in 10.0.0.0/16, so that networks overlap and touch.
fn v4_addr() -> impl Strategy<Value = u32> {
    prop_oneof![3 => (0u32..0x1_0000).prop_map(|x| 0x0a00_0000 | x), 1 => any::<u32>()]
}

fn v4_net() -> impl Strategy<Value = Ipv4Net> {
    let prefix = prop_oneof![4 => 16u8..=32, 1 => 0u8..=32];
    (v4_addr(), prefix)
        .prop_map(|(addr, prefix)| Ipv4Net::new(Ipv4Addr::from(addr), prefix).unwrap().trunc())
}

/// IPv6 addresses mostly in `2001:db8::/112`.
fn v6_addr() -> impl Strategy<Value = u128> {
    let base = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0));
    prop_oneof![3 => (0u128..0x1_0000).prop_map(move |x| base | x), 1 => any::<u128>()]
}

fn v6_net() -> impl Strategy<Value = Ipv6Net> {
    let prefix = prop_oneof![4 => 112u8..=128, 1 => 0u8..=128];
    (v6_addr(), prefix)
        .prop_map(|(addr, prefix)| Ipv6Net::new(Ipv6Addr::from(addr), prefix).unwrap().trunc())
}

fn rules<N: Debug>(net: impl Strategy<Value = N>) -> impl Strategy<Value = Vec<NetRule<N>>> {
    prop::collection::vec(
        (net, key()).prop_map(|(net, (protocol, ports))| NetRule {
            net,
            ports,
            protocol,
        }),
        0..40,
    )
}

fn allowed<N: Net>(rules: &[NetRule<N>], key: Key, addr: u128) -> bool {
    rules
        .iter()
        .any(|r| key_of(r) == key && r.net.first() <= addr && addr <= r.net.last())
}

/// Addresses worth probing: the given random ones, and the edges of every
/// network and their neighbours.
fn probes<N: Net>(input: &[NetRule<N>], output: &[NetRule<N>], random: &[u128]) -> Vec<u128> {
    let max = if N::BITS == 128 {
        u128::MAX
    } else {
        (1u128 << N::BITS) - 1
    };
    let mut out: Vec<u128> = random.iter().map(|a| a & max).collect();
    for rule in input.iter().chain(output) {
        let (first, last) = (rule.net.first(), rule.net.last());
        out.extend(
            [
                Some(first),
                Some(last),
                first.checked_sub(1),
                last.checked_add(1).filter(|&a| a <= max),
            ]
            .into_iter()
            .flatten(),
        );
    }
    out
}

fn check<N: Net>(input: &[NetRule<N>], random: &[u128]) -> Result<(), TestCaseError> {
    let output = N::normalise(input);
    // (a) Exactly the same addresses are allowed, group by group.
    let keys: Vec<Key> = input.iter().map(key_of).collect();
    for addr in probes(input, &output, random) {
        for &key in &keys {
            prop_assert_eq!(
                allowed(input, key, addr),
                allowed(&output, key, addr),
                "address {:#x} in group {:?}; output {:?}",
                addr,
                key,
                output
            );
        }
    }
    // Nothing appears in a group that had no input.
    for rule in &output {
        prop_assert!(keys.contains(&key_of(rule)));
    }
    // (b) Within a group, no two networks overlap or could merge into one.
    for (i, a) in output.iter().enumerate() {
        for b in &output[i + 1..] {
            if key_of(a) != key_of(b) {
                continue;
            }
            let overlap = a.net.first() <= b.net.last() && b.net.first() <= a.net.last();
            prop_assert!(!overlap, "{:?} overlaps {:?}", a, b);
            prop_assert!(!a.net.siblings(&b.net), "{:?} and {:?} could merge", a, b);
        }
    }
    // The output is in a fixed order: sorted by group, then network.
    let order: Vec<_> = output.iter().map(|r| (key_of(r), r.net)).collect();
    let mut sorted = order.clone();
    sorted.sort();
    prop_assert_eq!(order, sorted);
    // (c) Idempotent, and independent of input order.
    prop_assert_eq!(&N::normalise(&output), &output);
    let mut reversed = input.to_vec();
    reversed.reverse();
    prop_assert_eq!(&N::normalise(&reversed), &output);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v4_normalisation(input in rules(v4_net()), random in prop::collection::vec(v4_addr(), 0..32)) {
        let random: Vec<u128> = random.into_iter().map(u128::from).collect();
        check(&input, &random)?;
    }

    #[test]
    fn v6_normalisation(input in rules(v6_net()), random in prop::collection::vec(v6_addr(), 0..32)) {
        check(&input, &random)?;
    }
}
