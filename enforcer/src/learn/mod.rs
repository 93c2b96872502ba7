//! Learn mode (`isolate exec --learn FILE`): the instance runs observed instead of confined,
//! and what it did beyond its policy becomes a proposed policy.

pub mod files;
pub mod proposal;

pub use proposal::Proposal;
