//! Building blocks shared by all networks.

pub mod attention;

pub use attention::{attention, AttnMask};
