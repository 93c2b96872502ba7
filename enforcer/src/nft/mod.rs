//! The nftables layer: one table `inet isolate-<name>` per instance, whose output
//! chain sends the instance UID's packets to a `confined` chain that accepts replies and the
//! allow-listed destinations (interval sets), then logs (rate-limited), counts and drops the rest.
//!
//! Shape, as every layer: [`render`] a validated policy into one nftables JSON transaction,
//! [`apply`] it atomically through `nft -j -f -`, inspect ([`is_applied`], [`counters`],
//! [`all_counters`]: read over netlink, see `netlink`) and [`remove`]. Only the table
//! `isolate-<name>` is ever touched; the ruleset is never flushed. `nft` is a runtime
//! dependency (the `nftables` package).

mod command;
mod error;
mod netlink;
mod render;
mod table;

use ipnet::{Ipv4Net, Ipv6Net};
use isolate_policy::{HostRule, LogSettings, NetRule};

pub use error::NftError;
pub use render::{
    CHAIN_CONFINED, CHAIN_OUTPUT, COUNTERS, HostElement, host_set_name, log_prefix, render,
    set_name, table_name,
};
pub use table::{
    admit, all_counters, apply, apply_many, counters, is_applied, remove, remove_many,
};

/// What the nftables layer enforces for one instance. The rules are already normalised and host
/// names already resolved by the caller (`network::effective_rules`).
#[derive(Debug, Clone, Copy)]
pub struct NftPolicy<'a> {
    /// Instance name; the table is `isolate-<instance>`.
    pub instance: &'a str,
    /// The UID whose packets are judged (`meta skuid`).
    pub uid: u32,
    pub v4: &'a [NetRule<Ipv4Net>],
    pub v6: &'a [NetRule<Ipv6Net>],
    /// The policy's host names: each gets a set per family, empty until isolate's resolver
    /// adds the addresses the instance's own lookups were answered (see [`admit`]).
    pub hosts: &'a [HostRule],
    /// isolate's resolver for the instance: the UID's DNS queries (TCP and UDP port 53, any
    /// address) are translated to it (`nat output`; conntrack turns the answers back). The
    /// eBPF layer, when on, has already sent them there at connect time.
    pub dns_redirect: Option<crate::network::ResolverEndpoint>,
    /// Rate limit of the kernel log lines of blocked packets.
    pub log: &'a LogSettings,
    /// Learn mode: what the table would drop is logged and counted, then accepted.
    pub observe: bool,
}
