//! The nftables layer (issue #6): one table `inet isolate-<name>` per instance.
