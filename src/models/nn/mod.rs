//! Building blocks shared by all networks.

pub mod attention;
pub mod norm;

pub use attention::{attention, AttnMask};
