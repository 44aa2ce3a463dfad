//! The CUDA driver API, opened with `dlopen` so that every build (the CPU one too) can report on
//! the GPUs: driver version, and per device its name, compute capability, total and free memory.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

use libloading::{Library, Symbol};

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;

const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

pub struct Device {
    pub name: String,
    pub cc: (i32, i32),
    pub total: u64,
    pub free: Option<u64>,
}

pub struct Probe {
    pub library: String,
    /// `cuDriverGetVersion`: 1000 × major + 10 × minor.
    pub version: i32,
    pub devices: Vec<Device>,
}

/// Loads libcuda and asks it about every device.
pub fn probe() -> Result<Probe, String> {
    let mut last = String::new();
    for name in ["libcuda.so.1", "libcuda.so"] {
        // SAFETY: loading the NVIDIA driver library runs only its own initialisers.
        match unsafe { Library::new(name) } {
            Ok(lib) => return query(&lib, name),
            Err(e) => {
                last = match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                }
            }
        }
    }
    Err(format!("libcuda.so.1 cannot be loaded ({last})"))
}

fn query(lib: &Library, name: &str) -> Result<Probe, String> {
    // SAFETY: each symbol is looked up with the C signature the CUDA driver API documents,
    // and every out-pointer handed to it points at a live local of the matching type.
    unsafe {
        macro_rules! sym {
            ($name:literal, $ty:ty) => {{
                let s: Symbol<$ty> = lib
                    .get(concat!($name, "\0").as_bytes())
                    .map_err(|e| format!("{name} has no {}: {e}", $name))?;
                s
            }};
        }
        let get_error_name = sym!(
            "cuGetErrorName",
            unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult
        );
        let err = |call: &str, code: CuResult| {
            let mut s: *const c_char = std::ptr::null();
            let text = if get_error_name(code, &mut s) == 0 && !s.is_null() {
                CStr::from_ptr(s).to_string_lossy().into_owned()
            } else {
                format!("error {code}")
            };
            format!("{call} failed: {text}")
        };
        let init = sym!("cuInit", unsafe extern "C" fn(c_uint) -> CuResult);
        let driver_version = sym!("cuDriverGetVersion", unsafe extern "C" fn(*mut c_int) -> CuResult);
        let count = sym!("cuDeviceGetCount", unsafe extern "C" fn(*mut c_int) -> CuResult);
        let device_get = sym!("cuDeviceGet", unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult);
        let device_name = sym!(
            "cuDeviceGetName",
            unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult
        );
        let attribute = sym!(
            "cuDeviceGetAttribute",
            unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult
        );
        let total_mem = sym!(
            "cuDeviceTotalMem_v2",
            unsafe extern "C" fn(*mut usize, CuDevice) -> CuResult
        );
        let retain = sym!(
            "cuDevicePrimaryCtxRetain",
            unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult
        );
        let release = sym!(
            "cuDevicePrimaryCtxRelease_v2",
            unsafe extern "C" fn(CuDevice) -> CuResult
        );
        let push = sym!("cuCtxPushCurrent_v2", unsafe extern "C" fn(CuContext) -> CuResult);
        let pop = sym!("cuCtxPopCurrent_v2", unsafe extern "C" fn(*mut CuContext) -> CuResult);
        let mem_info = sym!(
            "cuMemGetInfo_v2",
            unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult
        );

        let mut version: c_int = 0;
        let r = driver_version(&mut version);
        if r != 0 {
            return Err(err("cuDriverGetVersion", r));
        }
        let r = init(0);
        if r != 0 {
            return Err(format!(
                "{name} loaded (CUDA {}.{}), but {}",
                version / 1000,
                (version % 1000) / 10,
                err("cuInit", r)
            ));
        }
        let mut n: c_int = 0;
        let r = count(&mut n);
        if r != 0 {
            return Err(err("cuDeviceGetCount", r));
        }
        let mut devices = Vec::new();
        for ordinal in 0..n {
            let mut dev: CuDevice = 0;
            let r = device_get(&mut dev, ordinal);
            if r != 0 {
                return Err(err("cuDeviceGet", r));
            }
            let mut buf = [0 as c_char; 256];
            let name = if device_name(buf.as_mut_ptr(), buf.len() as c_int, dev) == 0 {
                CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
            } else {
                "unknown".to_string()
            };
            let (mut major, mut minor): (c_int, c_int) = (0, 0);
            attribute(&mut major, ATTR_CC_MAJOR, dev);
            attribute(&mut minor, ATTR_CC_MINOR, dev);
            let mut total: usize = 0;
            total_mem(&mut total, dev);
            let mut free = None;
            let mut ctx: CuContext = std::ptr::null_mut();
            if retain(&mut ctx, dev) == 0 {
                if push(ctx) == 0 {
                    let (mut f, mut t): (usize, usize) = (0, 0);
                    if mem_info(&mut f, &mut t) == 0 {
                        free = Some(f as u64);
                    }
                    let mut popped: CuContext = std::ptr::null_mut();
                    pop(&mut popped);
                }
                release(dev);
            }
            devices.push(Device {
                name,
                cc: (major, minor),
                total: total as u64,
                free,
            });
        }
        Ok(Probe {
            library: name.to_string(),
            version,
            devices,
        })
    }
}
