//! The C ABI of `kernels/cudnn_shim.cpp`: descriptors (mirrored field for field, all 8 bytes wide so
//! there is no padding: the shim hashes their bytes as plan-cache keys), return codes, entry points.

use std::ffi::{c_char, c_int, c_void};

pub const QE_OK: c_int = 0;
/// cuDNN has no engine for the graph (or rejects it).
pub const QE_UNSUPPORTED: c_int = 1;
/// Anything else: bad arguments, a failed launch, ...
pub const QE_ERROR: c_int = 2;
/// libcudnn could not be loaded.
pub const QE_NOT_LOADED: c_int = 3;

/// Bytes of the shim's message buffers.
pub const ERR_LEN: usize = 2048;

/// `QeSdpaDesc`: q/o `[b, h, sq, d]`, k/v `[b, h, skv, d]`, strides in elements.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SdpaDesc {
    pub b: i64,
    pub h: i64,
    pub sq: i64,
    pub skv: i64,
    pub d: i64,
    pub q_stride: [i64; 4],
    pub k_stride: [i64; 4],
    pub v_stride: [i64; 4],
    pub o_stride: [i64; 4],
    /// 0 bf16, 1 f16.
    pub dtype: i64,
    /// 0 none, 1 causal (top-left), 2 additive key bias `[b, skv]` of the io dtype.
    pub mask: i64,
    /// Compute capability, major × 10 + minor.
    pub sm: i64,
    /// cuDNN heuristics mode: 0 A, 1 B.
    pub heur: i64,
    /// Plans needing more workspace (bytes) are skipped.
    pub max_workspace: i64,
    pub scale: f64,
}

/// `QeConvDesc`: NCHW `x [n, c, h, w]`, `w [k, c, r, s]`, `y [n, k, out_h, out_w]`, all contiguous.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ConvDesc {
    pub n: i64,
    pub c: i64,
    pub h: i64,
    pub w: i64,
    pub k: i64,
    pub r: i64,
    pub s: i64,
    pub pad_h: i64,
    pub pad_w: i64,
    pub stride_h: i64,
    pub stride_w: i64,
    pub out_h: i64,
    pub out_w: i64,
    /// 0 bf16, 1 f16, 2 f32.
    pub dtype: i64,
    pub has_bias: i64,
    pub sm: i64,
    pub heur: i64,
    pub max_workspace: i64,
}

extern "C" {
    pub fn qe_cudnn_load(path: *const c_char, version: *mut i64, err: *mut c_char, n: usize) -> c_int;
    pub fn qe_sdpa_prepare(
        device: c_int,
        desc: *const SdpaDesc,
        workspace: *mut i64,
        built: *mut i32,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
    pub fn qe_sdpa_execute(
        device: c_int,
        stream: *mut c_void,
        desc: *const SdpaDesc,
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        bias: *const c_void,
        o: *mut c_void,
        workspace: *mut c_void,
        workspace_size: i64,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
    pub fn qe_conv_prepare(
        device: c_int,
        desc: *const ConvDesc,
        workspace: *mut i64,
        fused_bias: *mut i32,
        built: *mut i32,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
    pub fn qe_conv_execute(
        device: c_int,
        stream: *mut c_void,
        desc: *const ConvDesc,
        x: *const c_void,
        w: *const c_void,
        bias: *const c_void,
        y: *mut c_void,
        workspace: *mut c_void,
        workspace_size: i64,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
}

/// A zeroed message buffer for the shim.
pub fn err_buf() -> [c_char; ERR_LEN] {
    [0; ERR_LEN]
}

/// The message the shim wrote into `buf`.
pub fn err_string(buf: &[c_char; ERR_LEN]) -> String {
    // Up to the first NUL (the shim writes with snprintf, which always terminates).
    let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
