//! Mode handlers: what honeytrap does with one accepted connection or UDP session.

pub mod builtin;
pub mod normal;
