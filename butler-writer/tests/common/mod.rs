//! Helpers shared by the integration tests: the parity tools. Fixtures, messages and the writer
//! under test are `test_support`'s.

pub mod python;
