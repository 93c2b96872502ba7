//! The audit trail (issue #6): block events to journald, or to stderr without it.
