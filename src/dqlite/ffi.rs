//! The libdqlite 1.11 node API, loaded at run time with `dlopen` (so the binary builds and
//! runs without the library; only starting an embedded member needs it).
//!
//! This is the only module with `unsafe` code for dqlite. It exposes a safe [`Node`]:
//! configure it, [`Node::start`] it, [`Node::stop`] it; dropping it stops and destroys the
//! C object. Signatures are written by hand from the 1.11.1 `dqlite.h` (dqlite.md §5.2).
//!
//! Invariants:
//! - The C node never outlives the [`Library`] it came from (each [`Node`] holds an `Arc`).
//! - The connect callback's context is freed only after `dqlite_node_destroy`.
//! - No Rust panic crosses the C boundary (`catch_unwind` in the trampoline).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

/// The soname we load.
pub const SONAME: &str = "libdqlite.so.0";
/// The Debian package that ships it.
pub const DEBIAN_PACKAGE: &str = "libdqlite0";
/// go-dqlite's `BootstrapID`: `dqlite_node_start` bootstraps a single-voter configuration
/// iff the node has this id (or 1) and no raft state (dqlite.md §3.3).
pub const BOOTSTRAP_ID: u64 = 0x2dc1_7185_8c31_55be;
/// raft's RAFT_NOCONNECTION, what go-dqlite's connect function returns on failure.
const RAFT_NOCONNECTION: c_int = 16;

#[derive(Debug, thiserror::Error)]
pub enum FfiError {
    #[error("cannot load {SONAME} (install the Debian package {DEBIAN_PACKAGE}): {reason}")]
    Load { reason: String },
    #[error("{SONAME} lacks the symbol {symbol}: {reason} (need libdqlite 1.11 or newer)")]
    Symbol {
        symbol: &'static str,
        reason: String,
    },
    #[error("{argument} contains a NUL byte")]
    Nul { argument: &'static str },
    #[error("{call} failed with code {code}: {message}")]
    Call {
        call: &'static str,
        code: i32,
        message: String,
    },
}

/// Opaque `dqlite_node`.
#[repr(C)]
struct RawNode {
    _private: [u8; 0],
}

type ConnectFn =
    unsafe extern "C" fn(arg: *mut c_void, address: *const c_char, fd: *mut c_int) -> c_int;

/// Function pointers copied out of the library; valid while `_lib` is loaded.
struct Api {
    version_number: unsafe extern "C" fn() -> c_int,
    generate_node_id: unsafe extern "C" fn(address: *const c_char) -> u64,
    node_create: unsafe extern "C" fn(
        id: u64,
        address: *const c_char,
        data_dir: *const c_char,
        node: *mut *mut RawNode,
    ) -> c_int,
    node_destroy: unsafe extern "C" fn(node: *mut RawNode),
    node_set_bind_address:
        unsafe extern "C" fn(node: *mut RawNode, address: *const c_char) -> c_int,
    node_get_bind_address: unsafe extern "C" fn(node: *mut RawNode) -> *const c_char,
    node_set_connect_func:
        unsafe extern "C" fn(node: *mut RawNode, f: Option<ConnectFn>, arg: *mut c_void) -> c_int,
    node_set_failure_domain: unsafe extern "C" fn(node: *mut RawNode, code: u64) -> c_int,
    node_set_network_latency_ms:
        unsafe extern "C" fn(node: *mut RawNode, ms: std::ffi::c_uint) -> c_int,
    node_start: unsafe extern "C" fn(node: *mut RawNode) -> c_int,
    node_stop: unsafe extern "C" fn(node: *mut RawNode) -> c_int,
    node_errmsg: unsafe extern "C" fn(node: *mut RawNode) -> *const c_char,
    node_recover_ext:
        unsafe extern "C" fn(node: *mut RawNode, infos: *mut NodeInfoExt, n: c_int) -> c_int,
}

/// `struct dqlite_node_info_ext` (1.11 header): four u64s, the address as a pointer.
#[repr(C)]
struct NodeInfoExt {
    size: u64,
    id: u64,
    address: u64,
    dqlite_role: u64,
}

/// The loaded library. Load it once per member; `dlopen` is reference counted.
pub struct Library {
    api: Api,
    // Declared after `api` so the pointers are dropped before the library is unloaded.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("version", &self.version_number())
            .finish()
    }
}

impl Library {
    /// `dlopen("libdqlite.so.0")` and resolve the 1.11 node API.
    pub fn load() -> Result<Arc<Library>, FfiError> {
        // SAFETY: loading runs the library's ELF initialisers. libdqlite and its dependencies
        // (libraft, libuv, libsqlite3) are C libraries whose initialisers only set up their
        // own globals; nothing in this process depends on their absence.
        let lib = unsafe { libloading::Library::new(SONAME) }.map_err(|e| FfiError::Load {
            reason: e.to_string(),
        })?;

        /// Copies a required function pointer out of the library.
        macro_rules! sym {
            ($name:literal) => {{
                // SAFETY: the type we ask for is the C prototype of this symbol in the 1.11
                // header (transcribed in `Api`); the pointer stays valid while `lib` is
                // loaded, which `Library` guarantees by owning both.
                let s = unsafe { lib.get(concat!($name, "\0").as_bytes()) };
                *s.map_err(|e| FfiError::Symbol {
                    symbol: $name,
                    reason: e.to_string(),
                })?
            }};
        }
        let api = Api {
            version_number: sym!("dqlite_version_number"),
            generate_node_id: sym!("dqlite_generate_node_id"),
            node_create: sym!("dqlite_node_create"),
            node_destroy: sym!("dqlite_node_destroy"),
            node_set_bind_address: sym!("dqlite_node_set_bind_address"),
            node_get_bind_address: sym!("dqlite_node_get_bind_address"),
            node_set_connect_func: sym!("dqlite_node_set_connect_func"),
            node_set_failure_domain: sym!("dqlite_node_set_failure_domain"),
            node_set_network_latency_ms: sym!("dqlite_node_set_network_latency_ms"),
            node_start: sym!("dqlite_node_start"),
            node_stop: sym!("dqlite_node_stop"),
            node_errmsg: sym!("dqlite_node_errmsg"),
            node_recover_ext: sym!("dqlite_node_recover_ext"),
        };
        Ok(Arc::new(Library { api, _lib: lib }))
    }

    /// `dqlite_version_number()`: Debian's 1.11.1 reports 11000 (dqlite.md §5.1).
    pub fn version_number(&self) -> i32 {
        // SAFETY: takes no arguments and reads a compile-time constant.
        unsafe { (self.api.version_number)() }
    }

    /// A fresh random-looking node id (raft_digest of the address and the current time).
    pub fn generate_node_id(&self, address: &str) -> Result<u64, FfiError> {
        let address = cstring(address, "node address")?;
        // SAFETY: `address` is a valid NUL-terminated string that outlives the call; the
        // function only reads it.
        Ok(unsafe { (self.api.generate_node_id)(address.as_ptr()) })
    }

    /// `dqlite_node_create`. `data_dir` must exist.
    pub fn create_node(
        self: &Arc<Self>,
        id: u64,
        address: &str,
        data_dir: &Path,
    ) -> Result<Node, FfiError> {
        let c_address = cstring(address, "node address")?;
        let c_dir = cstring(&data_dir.to_string_lossy(), "data directory")?;
        let mut raw: *mut RawNode = std::ptr::null_mut();
        // SAFETY: both strings are valid for the call (libdqlite copies them); `raw` is a
        // valid out-pointer.
        let rv =
            unsafe { (self.api.node_create)(id, c_address.as_ptr(), c_dir.as_ptr(), &mut raw) };
        let Some(raw) = NonNull::new(raw) else {
            return Err(FfiError::Call {
                call: "dqlite_node_create",
                code: rv,
                message: format!("cannot create the node in {}", data_dir.display()),
            });
        };
        let node = Node {
            lib: Arc::clone(self),
            raw,
            connect: None,
            started: false,
        };
        if rv != 0 {
            // Dropping `node` destroys the half-initialised object, as newer headers require.
            return Err(node.error("dqlite_node_create", rv));
        }
        Ok(node)
    }
}

fn cstring(s: &str, argument: &'static str) -> Result<CString, FfiError> {
    CString::new(s).map_err(|_| FfiError::Nul { argument })
}

/// What the connect callback calls: dial `address` and return a connected stream fd that
/// libdqlite will own, or `None` (RAFT_NOCONNECTION). Runs on libuv threadpool threads,
/// may block, may run concurrently, must not write to the fd.
pub type Dialer = Box<dyn Fn(&str) -> Option<OwnedFd> + Send + Sync>;

struct ConnectContext {
    dial: Dialer,
}

/// The `extern "C"` connect function handed to libdqlite.
unsafe extern "C" fn connect_trampoline(
    arg: *mut c_void,
    address: *const c_char,
    fd: *mut c_int,
) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if arg.is_null() || address.is_null() || fd.is_null() {
            return RAFT_NOCONNECTION;
        }
        // SAFETY: `arg` is the `ConnectContext` registered in `set_connect`, boxed (stable
        // address) and freed only after `dqlite_node_destroy`, so it is alive whenever
        // libdqlite can call us; we only take a shared reference (the context is `Sync`).
        let ctx = unsafe { &*arg.cast::<ConnectContext>() };
        // SAFETY: libdqlite passes a NUL-terminated address string valid for the call.
        let address = unsafe { CStr::from_ptr(address) }.to_string_lossy();
        match (ctx.dial)(&address) {
            Some(stream) => {
                // SAFETY: `fd` is libdqlite's valid out-pointer; ownership of the descriptor
                // passes to libdqlite.
                unsafe { *fd = stream.into_raw_fd() };
                0
            }
            None => RAFT_NOCONNECTION,
        }
    }));
    outcome.unwrap_or(RAFT_NOCONNECTION)
}

/// One `dqlite_node`. Configure, then start; after start only [`Node::stop`] (and drop).
pub struct Node {
    lib: Arc<Library>,
    raw: NonNull<RawNode>,
    connect: Option<Box<ConnectContext>>,
    started: bool,
}

// SAFETY: a dqlite_node is not bound to the thread that created it: the library runs the
// node on its own thread and synchronises with it internally in start/stop. Every call we
// make on it goes through `&mut self` (or `Drop`), so calls never overlap. The connect
// context is `Send + Sync`.
unsafe impl Send for Node {}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Node {
    fn api(&self) -> &Api {
        &self.lib.api
    }

    /// The node's last error text.
    fn errmsg(&self) -> String {
        // SAFETY: `raw` is a live node; the returned pointer, if not null, is a
        // NUL-terminated string owned by the node, copied before any other call.
        let msg = unsafe { (self.api().node_errmsg)(self.raw.as_ptr()) };
        if msg.is_null() {
            return String::new();
        }
        // SAFETY: see above.
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }

    fn error(&self, call: &'static str, code: c_int) -> FfiError {
        let message = self.errmsg();
        FfiError::Call {
            call,
            code,
            message: if message.is_empty() {
                "no details".into()
            } else {
                message
            },
        }
    }

    fn check(&self, call: &'static str, rv: c_int) -> Result<(), FfiError> {
        if rv == 0 {
            Ok(())
        } else {
            Err(self.error(call, rv))
        }
    }

    /// Where the node listens: `@name` for an abstract Unix socket. 1.11 binds at once, so
    /// a clash shows up here.
    pub fn set_bind_address(&mut self, address: &str) -> Result<(), FfiError> {
        let c = cstring(address, "bind address")?;
        // SAFETY: live, not yet started node; the string is valid for the call (copied).
        let rv = unsafe { (self.api().node_set_bind_address)(self.raw.as_ptr(), c.as_ptr()) };
        self.check("dqlite_node_set_bind_address", rv)
    }

    /// The bound address as the library reports it.
    pub fn bind_address(&self) -> Option<String> {
        // SAFETY: live node; the returned string is owned by the node and copied at once.
        let p = unsafe { (self.api().node_get_bind_address)(self.raw.as_ptr()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-null NUL-terminated string, see above.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// Registers the function that opens raft connections to peers.
    pub fn set_connect(&mut self, dial: Dialer) -> Result<(), FfiError> {
        let ctx = Box::new(ConnectContext { dial });
        let arg = std::ptr::from_ref::<ConnectContext>(&ctx)
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: live, not yet started node; `connect_trampoline` matches the C prototype;
        // `arg` points into a Box kept in `self.connect` until after destroy (see Drop).
        let rv = unsafe {
            (self.api().node_set_connect_func)(self.raw.as_ptr(), Some(connect_trampoline), arg)
        };
        // On failure the library keeps its previous context (if any), so ours goes; on
        // success the previous one is no longer referenced and may go.
        self.check("dqlite_node_set_connect_func", rv)?;
        self.connect = Some(ctx);
        Ok(())
    }

    /// The failure domain DESCRIBE reports.
    pub fn set_failure_domain(&mut self, code: u64) -> Result<(), FfiError> {
        // SAFETY: live, not yet started node.
        let rv = unsafe { (self.api().node_set_failure_domain)(self.raw.as_ptr(), code) };
        self.check("dqlite_node_set_failure_domain", rv)
    }

    /// Raft timing from the expected network latency: heartbeat 1.5 ×, election timeout
    /// 15 × (libdqlite's default without it: 3 s election timeout).
    pub fn set_network_latency_ms(&mut self, ms: u32) -> Result<(), FfiError> {
        // SAFETY: live, not yet started node; the value is range-checked by libdqlite.
        let rv = unsafe { (self.api().node_set_network_latency_ms)(self.raw.as_ptr(), ms) };
        self.check("dqlite_node_set_network_latency_ms", rv)
    }

    /// Starts the node's loop thread; returns once it serves. Bootstraps a fresh data
    /// directory when the id is [`BOOTSTRAP_ID`].
    pub fn start(&mut self) -> Result<(), FfiError> {
        if self.started {
            return Ok(());
        }
        // SAFETY: live, configured node, started at most once (`started` guards restarts).
        let rv = unsafe { (self.api().node_start)(self.raw.as_ptr()) };
        self.check("dqlite_node_start", rv)?;
        self.started = true;
        Ok(())
    }

    /// Stops the loop, closes raft and joins the thread. Idempotent.
    pub fn stop(&mut self) -> Result<(), FfiError> {
        if !self.started {
            return Ok(());
        }
        self.started = false;
        // SAFETY: live, started node; stop is called once per start.
        let rv = unsafe { (self.api().node_stop)(self.raw.as_ptr()) };
        self.check("dqlite_node_stop", rv)
    }
}

impl Node {
    /// `dqlite_node_recover_ext`: appends a configuration of exactly `members` (id, address,
    /// dqlite role code: 0 voter, 1 stand-by, 2 spare) to the log in this node's data
    /// directory. The node must never have been started, and no process may run a member on
    /// that directory (1.11 does not lock it).
    pub fn recover(&mut self, members: &[(u64, String, u64)]) -> Result<(), FfiError> {
        if self.started {
            return Err(FfiError::Call {
                call: "dqlite_node_recover_ext",
                code: -1,
                message: "the node is running".into(),
            });
        }
        let addresses = members
            .iter()
            .map(|(_, address, _)| cstring(address, "member address"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut infos: Vec<NodeInfoExt> = members
            .iter()
            .zip(&addresses)
            .map(|((id, _, role), address)| NodeInfoExt {
                size: std::mem::size_of::<NodeInfoExt>() as u64,
                id: *id,
                address: address.as_ptr() as u64,
                dqlite_role: *role,
            })
            .collect();
        let count = c_int::try_from(infos.len()).map_err(|_| FfiError::Call {
            call: "dqlite_node_recover_ext",
            code: -1,
            message: "too many members".into(),
        })?;
        // SAFETY: live node that was never started; `infos` is a valid array of `count`
        // structs laid out as the header's `dqlite_node_info_ext`, whose address pointers
        // point into `addresses`, alive until after the call; libdqlite only reads them.
        let rv =
            unsafe { (self.api().node_recover_ext)(self.raw.as_ptr(), infos.as_mut_ptr(), count) };
        drop(addresses);
        self.check("dqlite_node_recover_ext", rv)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "dqlite node did not stop cleanly");
        }
        // SAFETY: the node is live and stopped (or never started); destroy is its last use.
        unsafe { (self.api().node_destroy)(self.raw.as_ptr()) };
        // Only now may the connect context go.
        self.connect = None;
    }
}

/// Sets SIGPIPE to "ignore" for the process, as go-dqlite does: libdqlite and libuv write to
/// sockets whose peer may be gone. (Rust binaries already start with SIGPIPE ignored; this
/// makes the library independent of that.)
pub fn ignore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs SIG_IGN, not a Rust handler, so no async-signal-safety concern; any
    // previous disposition is deliberately replaced.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) } {
        tracing::warn!(error = %e, "cannot ignore SIGPIPE");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_error_names_the_package() {
        let e = FfiError::Load {
            reason: "not found".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("libdqlite.so.0") && text.contains("libdqlite0"),
            "{text}"
        );
    }

    /// Runs where Debian's libdqlite0 is installed (CI installs it).
    #[test]
    fn loads_and_creates_a_node_when_installed() {
        let Ok(lib) = Library::load() else {
            eprintln!("SKIP: {SONAME} not installed");
            return;
        };
        assert!(lib.version_number() >= 11000);
        let a = lib.generate_node_id("127.0.0.1:19001").unwrap();
        let b = lib.generate_node_id("127.0.0.1:19001").unwrap();
        assert!(a != 0 && a != b, "ids must be fresh: {a} {b}");
        assert!(lib.generate_node_id("a\0b").is_err());

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(lib.create_node(a, "127.0.0.1:19001", &missing).is_err());
        let mut node = lib.create_node(a, "127.0.0.1:19001", dir.path()).unwrap();
        node.set_bind_address("@").unwrap();
        let bound = node.bind_address().unwrap();
        assert!(bound.starts_with('@') && bound.len() > 1, "{bound}");
        // Dropped without start: destroyed without stop.
    }
}
