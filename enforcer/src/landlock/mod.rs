//! The Landlock file-system (and TCP port) ruleset of an instance (issue #7).
