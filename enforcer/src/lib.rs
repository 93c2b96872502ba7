//! isolate's enforcer: confines a Linux service instance so that it reaches only the network
//! destinations and files its policy allows. Each layer (`bpf`, and later `nft`, `landlock`)
//! builds from a validated policy, applies, inspects and removes; the supervisor and the daemon
//! only compose layers.

pub mod audit;
pub mod bpf;
pub mod cgroup;
pub mod daemon;
pub mod exec;
pub mod kernel;
pub mod landlock;
pub mod metrics;
pub mod mounts;
pub mod network;
pub mod nft;
