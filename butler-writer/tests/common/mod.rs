//! Helpers shared by the integration tests.

pub mod messages;
pub mod python;
pub mod service;
