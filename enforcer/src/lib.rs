//! isolate's enforcer: confines a Linux service instance so that it reaches only the network
//! destinations and files its policy allows. The network layers (`bpf`, `nft`) sit behind one
//! shape in `layer`; Landlock (`landlock`) restricts the child process itself; the supervisor
//! (`exec`) and the daemon (`daemon`) only compose them. `docs/ARCHITECTURE.md` is the map.

pub mod audit;
pub mod bpf;
pub mod cgroup;
pub mod control;
pub mod daemon;
pub mod digest;
pub mod dns;
pub mod exec;
pub mod kernel;
pub mod landlock;
pub mod layer;
pub mod learn;
pub mod metrics;
pub mod mounts;
pub mod network;
pub mod nft;
pub mod paths;
pub mod procs;
pub mod trusted_path;
pub mod user;
