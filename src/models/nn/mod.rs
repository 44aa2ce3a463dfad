//! Building blocks shared by all networks.

pub mod attention;
#[cfg(feature = "cuda")]
pub mod flash;
pub mod fused;
pub mod linear;
pub mod norm;

pub use attention::{attention, AttnMask};
