//! The writer's own test fixture (services, a fresh registry and topics, a writer in-process),
//! shared rather than copied.

#![allow(dead_code)]

#[path = "../../../butler-writer/tests/common/messages.rs"]
pub mod messages;
#[path = "../../../butler-writer/tests/common/service.rs"]
pub mod service;
