//! A PKCS#11 module for fault-injection tests, and nothing else: it loads
//! the real module (SoftHSM2), forwards every call to it, and on the calls a
//! *fault plan* names waits first, or returns an error instead of calling
//! the real module. `kmsd` loads it as `token.module`; the end-to-end tests
//! in `softhsm-tests/tests/token_faults.rs` drive it.
//!
//! # Environment (read when `C_GetFunctionList` is first called; kmsd sets
//! it from `[token.module_env]` before loading the module)
//!
//! - `KMS_FAULT_REAL_MODULE`: the module to forward to; default
//!   `/usr/lib/softhsm/libsofthsm2.so`.
//! - `KMS_FAULT_PLAN`: the plan file. Unset, or no such file: every call
//!   passes through.
//! - `KMS_FAULT_LOG`: a file that gets one line per fault injected,
//!   `<pid> <function> <effect>` (e.g. `4242 C_Sign CKR_DEVICE_ERROR`,
//!   `4242 C_Sign delay_ms=4000`), and `<pid> plan-error line N: …` for
//!   each plan line that does not parse (also printed on stderr). Tests
//!   count these lines to prove the faults really happened.
//!
//! # The plan
//!
//! A text file, one rule per line; `#` starts a comment; blank lines and an
//! empty file mean no faults:
//!
//! ```text
//! C_Sign CKR_DEVICE_ERROR                    # every C_Sign fails
//! C_Sign CKR_SESSION_HANDLE_INVALID count=1  # the next C_Sign fails, then pass
//! C_Sign delay_ms=4000                       # every C_Sign waits 4 s, then runs
//! C_Sign delay_ms=500 CKR_DEVICE_ERROR       # waits, then fails
//! C_GenerateRandom CKR_DEVICE_ERROR after=2  # two calls pass, then all fail
//! * CKR_DEVICE_REMOVED                       # every wrapped function fails
//! ```
//!
//! A rule is a function name (or `*`) and any of: a return value (a
//! `CKR_…` name of PKCS#11 2.40's device, session, token and operation
//! codes, or `0x…`), `delay_ms=N`, `count=N` (the rule applies to N calls,
//! then is spent), `after=N` (the first N matching calls pass untouched).
//! A call is decided by the first rule, in file order, that names it (or is
//! `*`) and is not spent.
//!
//! The file is checked on every wrapped call (one `stat`) and read again
//! when its inode, size or modification time changed, which resets every
//! `count=` and `after=`. Write a new plan by renaming a finished file
//! over the old one, so no call ever reads half of it. Counters live in
//! each process that loaded the shim: `kmsd` and every `kmsctl` run with
//! the same configuration keep their own.
//!
//! # What is wrapped
//!
//! The functions the appliance's token layer calls in the course of
//! serving: `C_GetSlotList`, `C_GetSlotInfo`, `C_GetTokenInfo`,
//! `C_OpenSession`, `C_GetSessionInfo`, `C_Login`, `C_Logout`,
//! `C_CreateObject`, `C_CopyObject`, `C_DestroyObject`,
//! `C_GetAttributeValue`, `C_FindObjectsInit`, `C_FindObjects`,
//! `C_EncryptInit`, `C_Encrypt`, `C_DecryptInit`, `C_Decrypt`,
//! `C_SignInit`, `C_Sign`, `C_GenerateKey`, `C_GenerateKeyPair`,
//! `C_WrapKey`, `C_UnwrapKey`, `C_GenerateRandom`. Library set-up and
//! clean-up (`C_Initialize`, `C_Finalize`, `C_CloseSession`,
//! `C_CloseAllSessions`, `C_FindObjectsFinal`, …) always pass through, so a
//! test's faults never leak sessions or operations in the real module.
//!
//! A failure injected into `C_Sign`, `C_Encrypt` or `C_Decrypt` first lets
//! the real module finish the operation (its result thrown away): PKCS#11
//! says such a failure ends the operation, and the caller may go on to a
//! new `C_SignInit` on the same session.

mod plan;

use std::ffi::{c_void, OsString};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cryptoki_sys::*;

pub use plan::{Fault, Plan};

/// The real module's default path (Debian's SoftHSM2).
const DEFAULT_REAL_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The loaded module: the real function list and ours.
struct Module {
    real: CK_FUNCTION_LIST,
    ours: CK_FUNCTION_LIST,
}

static MODULE: OnceLock<Result<Module, String>> = OnceLock::new();

/// Where the plan and the log are; read once, at load.
struct Files {
    plan: Option<PathBuf>,
    log: Option<PathBuf>,
}

static FILES: OnceLock<Files> = OnceLock::new();

/// The plan as last read, and what identified the file then.
#[derive(Default)]
struct Loaded {
    /// (device, inode, size, mtime ns) of the file read; `None`: no file.
    seen: Option<(u64, u64, u64, i128)>,
    plan: Plan,
}

static PLAN: Mutex<Option<Loaded>> = Mutex::new(None);

fn files() -> &'static Files {
    FILES.get_or_init(|| Files {
        plan: std::env::var_os("KMS_FAULT_PLAN").map(PathBuf::from),
        log: std::env::var_os("KMS_FAULT_LOG").map(PathBuf::from),
    })
}

/// Append one line to the fault log (one `write`, so lines of concurrent
/// calls and processes do not interleave).
fn log_line(text: &str) {
    let Some(path) = &files().log else { return };
    let line = format!("{} {text}\n", std::process::id());
    let written = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("fault-shim: cannot write {}: {e}", path.display());
    }
}

/// The fault, if any, for this call of `function`: the plan re-read if the
/// file changed, the call counted against its rule, the fault logged.
pub fn decide(function: &str) -> Option<Fault> {
    let path = files().plan.as_ref()?;
    let seen = fs::metadata(path).ok().map(|m| {
        let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        (m.dev(), m.ino(), m.size(), mtime)
    });
    let mut guard = PLAN.lock().unwrap_or_else(|p| p.into_inner());
    let loaded = guard.get_or_insert_with(Loaded::default);
    if loaded.seen != seen {
        let text = seen
            .and_then(|_| fs::read_to_string(path).ok())
            .unwrap_or_default();
        let (plan, errors) = Plan::parse(&text);
        for e in errors {
            eprintln!("fault-shim: {}: {e}", path.display());
            log_line(&format!("plan-error {e}"));
        }
        *loaded = Loaded { seen, plan };
    }
    let fault = loaded.plan.decide(function)?;
    drop(guard);
    log_line(&format!("{function} {}", fault.what));
    Some(fault)
}

/// Apply the plan to a call of `function`: wait if it says so, and return
/// the error to report instead of calling the real module, if any.
fn before(function: &str) -> Option<CK_RV> {
    let fault = decide(function)?;
    if !fault.delay.is_zero() {
        std::thread::sleep(fault.delay);
    }
    fault.rv
}

fn real() -> Option<&'static CK_FUNCTION_LIST> {
    MODULE.get().and_then(|m| m.as_ref().ok()).map(|m| &m.real)
}

/// Wrappers that consult the plan and forward; `install` puts them into a
/// copy of the real function list (only where the real module has the
/// function).
macro_rules! wrappers {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
        $(
            #[allow(non_snake_case)]
            unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                if let Some(rv) = before(stringify!($name)) {
                    return rv;
                }
                match real().and_then(|l| l.$name) {
                    // SAFETY: the real module's own function, called with
                    // the caller's arguments unchanged: the caller's
                    // obligations to us are its obligations to it.
                    Some(f) => unsafe { f($($arg),*) },
                    None => CKR_FUNCTION_NOT_SUPPORTED,
                }
            }
        )*

        fn install(list: &mut CK_FUNCTION_LIST) {
            $(
                if list.$name.is_some() {
                    list.$name = Some($name);
                }
            )*
        }
    };
}

wrappers! {
    C_GetSlotList(token_present: CK_BBOOL, slots: *mut CK_SLOT_ID, count: *mut CK_ULONG);
    C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO);
    C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO);
    C_OpenSession(slot: CK_SLOT_ID, flags: CK_FLAGS, app: *mut c_void, notify: CK_NOTIFY, session: *mut CK_SESSION_HANDLE);
    C_GetSessionInfo(session: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO);
    C_Login(session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG);
    C_Logout(session: CK_SESSION_HANDLE);
    C_CreateObject(session: CK_SESSION_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG, object: *mut CK_OBJECT_HANDLE);
    C_CopyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG, copy: *mut CK_OBJECT_HANDLE);
    C_DestroyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE);
    C_GetAttributeValue(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG);
    C_FindObjectsInit(session: CK_SESSION_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG);
    C_FindObjects(session: CK_SESSION_HANDLE, objects: *mut CK_OBJECT_HANDLE, max: CK_ULONG, found: *mut CK_ULONG);
    C_EncryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_DecryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_SignInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_GenerateKey(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, template: *mut CK_ATTRIBUTE, count: CK_ULONG, key: *mut CK_OBJECT_HANDLE);
    C_GenerateKeyPair(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, public_template: *mut CK_ATTRIBUTE, public_count: CK_ULONG, private_template: *mut CK_ATTRIBUTE, private_count: CK_ULONG, public: *mut CK_OBJECT_HANDLE, private: *mut CK_OBJECT_HANDLE);
    C_WrapKey(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, wrapping: CK_OBJECT_HANDLE, key: CK_OBJECT_HANDLE, wrapped: *mut CK_BYTE, wrapped_len: *mut CK_ULONG);
    C_UnwrapKey(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, unwrapping: CK_OBJECT_HANDLE, wrapped: *mut CK_BYTE, wrapped_len: CK_ULONG, template: *mut CK_ATTRIBUTE, count: CK_ULONG, key: *mut CK_OBJECT_HANDLE);
    C_GenerateRandom(session: CK_SESSION_HANDLE, out: *mut CK_BYTE, len: CK_ULONG);
}

/// The shape of the one-shot operations `C_Sign`, `C_Encrypt`, `C_Decrypt`.
type OneShot = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    *mut CK_BYTE,
    CK_ULONG,
    *mut CK_BYTE,
    *mut CK_ULONG,
) -> CK_RV;

/// Wrappers of the one-shot operations: an injected failure first lets
/// the real module finish the operation (PKCS#11: a failed call ends it).
macro_rules! one_shot {
    ($($name:ident),*) => {
        $(
            #[allow(non_snake_case)]
            unsafe extern "C" fn $name(
                session: CK_SESSION_HANDLE,
                input: *mut CK_BYTE,
                input_len: CK_ULONG,
                output: *mut CK_BYTE,
                output_len: *mut CK_ULONG,
            ) -> CK_RV {
                let Some(f) = real().and_then(|l| l.$name) else {
                    return CKR_FUNCTION_NOT_SUPPORTED;
                };
                if let Some(rv) = before(stringify!($name)) {
                    // SAFETY: `input` is the caller's buffer of `input_len`
                    // bytes, passed on unchanged.
                    unsafe { finish(f, session, input, input_len) };
                    return rv;
                }
                // SAFETY: as in `wrappers!`: the caller's arguments,
                // unchanged, to the real module's function.
                unsafe { f(session, input, input_len, output, output_len) }
            }
        )*

        fn install_one_shots(list: &mut CK_FUNCTION_LIST) {
            $(
                if list.$name.is_some() {
                    list.$name = Some($name);
                }
            )*
        }
    };
}

one_shot!(C_Sign, C_Encrypt, C_Decrypt);

/// Run a one-shot operation to its end into a scratch buffer, and forget
/// the result (zeroed, as far as the optimiser lets a test shim: it may be
/// a decrypted test secret).
///
/// # Safety
/// `input` must point to `input_len` readable bytes (or be null with 0).
unsafe fn finish(f: OneShot, session: CK_SESSION_HANDLE, input: *mut CK_BYTE, input_len: CK_ULONG) {
    let mut len: CK_ULONG = 0;
    // SAFETY: a length query: null output, `len` a valid out-parameter.
    if unsafe { f(session, input, input_len, std::ptr::null_mut(), &mut len) } != CKR_OK {
        return; // that failure ended the operation already
    }
    let mut scratch = vec![0u8; usize::try_from(len).unwrap_or(0).max(1)];
    len = scratch.len() as CK_ULONG;
    // SAFETY: `scratch` holds `len` writable bytes.
    let _ = unsafe { f(session, input, input_len, scratch.as_mut_ptr(), &mut len) };
    scratch.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&scratch);
}

/// Load the real module and build our function list from its own.
fn load() -> Result<Module, String> {
    let path = std::env::var_os("KMS_FAULT_REAL_MODULE")
        .unwrap_or_else(|| OsString::from(DEFAULT_REAL_MODULE));
    // SAFETY: loading a library runs its initialisers; this is the PKCS#11
    // module the test names, which the appliance would load directly.
    let lib = unsafe { libloading::Library::new(&path) }
        .map_err(|e| format!("cannot load {}: {e}", path.to_string_lossy()))?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    {
        // SAFETY: `C_GetFunctionList` has this signature in every PKCS#11
        // module.
        let get = unsafe {
            lib.get::<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV>(
                b"C_GetFunctionList\0",
            )
        }
        .map_err(|e| format!("{}: {e}", path.to_string_lossy()))?;
        // SAFETY: `list` is a valid out-parameter.
        let rv = unsafe { get(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(format!("C_GetFunctionList of the real module: 0x{rv:x}"));
        }
    }
    // SAFETY: the module returned a non-null pointer to its function list,
    // which lives as long as the module; we copy it.
    let real = unsafe { *list };
    // The module stays loaded for the life of the process: `real` points
    // into it.
    std::mem::forget(lib);
    let mut ours = real;
    ours.C_GetFunctionList = Some(C_GetFunctionList);
    install(&mut ours);
    install_one_shots(&mut ours);
    Ok(Module { real, ours })
}

/// The module's entry point: load the real module (once), and hand out our
/// function list.
///
/// # Safety
/// `list` must be null or a valid place to write a pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    files();
    match MODULE.get_or_init(load) {
        Ok(m) => {
            // SAFETY: `list` is non-null and the caller's to write. The list
            // is static and never written through this pointer (PKCS#11
            // callers only read it).
            unsafe { *list = &m.ours as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
            CKR_OK
        }
        Err(e) => {
            eprintln!("fault-shim: {e}");
            CKR_GENERAL_ERROR
        }
    }
}
