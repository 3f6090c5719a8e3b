//! Skiff's node agent.

pub mod image;
