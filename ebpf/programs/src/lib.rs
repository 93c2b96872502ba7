//! Only here so that `isolate-enforcer` can name this crate as a build dependency (cargo then
//! rebuilds the embedded object when it changes). The programs are in `main.rs`.
#![no_std]
