//! Building blocks shared by all networks.

pub mod attention;
pub mod conv;
#[cfg(feature = "cudnn")]
pub mod cudnn;
#[cfg(feature = "cuda")]
pub mod flash;
pub mod fused;
pub mod linear;
pub mod norm;

pub use attention::{attention, AttnMask};
