//! Image inputs and outputs: where the bytes come from, decoding under limits, PIL-exact resizing,
//! and atomic writing of results.

pub mod decode;
pub mod encode;
pub mod resize;
pub mod source;
