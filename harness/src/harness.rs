//! Loading a module, the VM-call plumbing, and the public face of [`Harness`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use wasmtime::{Config, Engine, Instance, Linker, Module, Store, TypedFunc, WasmBacktrace, WasmParams, WasmResults};

use crate::error::HarnessError;
use crate::http::{HttpCall, HttpCallReply, Outcome};
use crate::request::RequestBuilder;
use crate::state::{Event, HostState};
use crate::wasi::ProcExit;
use crate::{abi, wasi, LogEntry, LogLevel, MetricInfo, Options, ROOT_CONTEXT_ID};

type Responder = Box<dyn FnMut(&HttpCall) -> HttpCallReply + Send>;

/// A trap, as the driver passes it around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trap {
    pub function: String,
    pub message: String,
}

impl From<Trap> for HarnessError {
    fn from(trap: Trap) -> Self {
        HarnessError::Trap { function: trap.function, message: trap.message }
    }
}

type HttpCallResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The `proxy_on_*` callbacks the module exports (all optional).
#[derive(Clone, Default)]
pub(crate) struct Exports {
    pub context_create: Option<TypedFunc<(u32, u32), ()>>,
    pub vm_start: Option<TypedFunc<(u32, u32), u32>>,
    pub configure: Option<TypedFunc<(u32, u32), u32>>,
    pub tick: Option<TypedFunc<u32, ()>>,
    pub done: Option<TypedFunc<u32, u32>>,
    pub log: Option<TypedFunc<u32, ()>>,
    pub delete: Option<TypedFunc<u32, ()>>,
    pub request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub http_call_response: Option<HttpCallResponseFn>,
    pub queue_ready: Option<TypedFunc<(u32, u32), ()>>,
}

/// A proxy-wasm VM with one plugin (root context), driven like Envoy drives it.
///
/// All state lives in the wasmtime `Store`; harnesses share nothing but compiled modules.
pub struct Harness {
    pub(crate) store: Store<HostState>,
    pub(crate) exports: Exports,
    pub(crate) responder: Option<Responder>,
    /// Calls dispatched and not yet answered, by token.
    pub(crate) in_flight: BTreeMap<u32, HttpCall>,
    /// The subset of `in_flight` waiting for the test (or their timeout).
    pub(crate) held: BTreeSet<u32>,
    /// When each held call times out, in monotonic nanoseconds (calls with a timeout only).
    pub(crate) deadlines: BTreeMap<u32, u64>,
    pub(crate) history: Vec<HttpCall>,
    pub(crate) outcomes: HashMap<u32, Outcome>,
    pub(crate) failure: Option<Trap>,
    pub(crate) configured: bool,
    pub(crate) next_context_id: u32,
    /// The fuel the store started with, when counting.
    initial_fuel: Option<u64>,
}

// Tests may build a harness on one thread and use it on another.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Harness>();
};

// ---- engines and compiled modules ----------------------------------------------------------

fn engine(fuel: bool, perf_map: bool) -> Result<Engine, HarnessError> {
    // One engine per configuration, by (fuel, perf_map).
    static ENGINES: [OnceLock<Result<Engine, String>>; 4] = [const { OnceLock::new() }; 4];
    let slot = usize::from(fuel) + 2 * usize::from(perf_map);
    let Some(cell) = ENGINES.get(slot) else {
        return Err(HarnessError::InvalidModule { path: None, message: "no such engine configuration".to_string() });
    };
    cell.get_or_init(|| {
        let mut config = Config::new();
        config.consume_fuel(fuel);
        if perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config).map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|message| HarnessError::InvalidModule { path: None, message: format!("cannot create the wasmtime engine: {message}") })
}

type ModuleKey = (PathBuf, u64, Option<SystemTime>, bool, bool);
type ModuleSlot = Arc<OnceLock<Result<Module, HarnessError>>>;

/// Compiled modules, once per file version per process: compiling is the slow part, and a
/// `Module` is immutable, so every harness (and test thread) can share it.
fn cached_module(path: &Path, options: &Options) -> Result<Module, HarnessError> {
    static MODULES: OnceLock<Mutex<HashMap<ModuleKey, ModuleSlot>>> = OnceLock::new();
    let meta = std::fs::metadata(path).map_err(|_| HarnessError::WasmNotFound { path: path.to_path_buf() })?;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let key = (canonical, meta.len(), meta.modified().ok(), options.fuel, options.perf_map);
    let slot = {
        let mut modules = MODULES.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        modules.entry(key).or_default().clone()
    };
    // Threads wanting the same module wait here while one compiles it.
    slot.get_or_init(|| {
        let bytes = std::fs::read(path)
            .map_err(|e| HarnessError::InvalidModule { path: Some(path.to_path_buf()), message: e.to_string() })?;
        compile(&bytes, Some(path), options)
    })
    .clone()
}

fn compile(bytes: &[u8], path: Option<&Path>, options: &Options) -> Result<Module, HarnessError> {
    let engine = engine(options.fuel, options.perf_map)?;
    // A module from the disk cache would carry no perf map entries: compile it here.
    let cache_file = if options.disk_cache && !options.perf_map { path.map(|p| disk_cache_file(&engine, p, bytes)) } else { None };
    if let Some(file) = &cache_file {
        if file.exists() {
            // SAFETY: the file was written by `Module::serialize` of this same engine
            // configuration (its name hashes the module bytes and the engine's compatibility
            // hash), atomically by rename, in a build directory; wasmtime still checks its
            // header and version before use.
            if let Ok(module) = unsafe { Module::deserialize_file(&engine, file) } {
                return Ok(module);
            }
        }
    }
    let module = Module::from_binary(&engine, bytes)
        .map_err(|e| HarnessError::InvalidModule { path: path.map(Path::to_path_buf), message: format!("{e:#}") })?;
    if let Some(file) = &cache_file {
        // Best effort: a failed write only means the next process compiles again.
        if let (Some(dir), Ok(serialized)) = (file.parent(), module.serialize()) {
            let tmp = file.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, serialized).is_ok() {
                let _ = std::fs::rename(&tmp, file);
                prune_disk_cache(dir);
            }
        }
    }
    Ok(module)
}

/// Keeps the cache to the most recently written modules (each is a few MB).
fn prune_disk_cache(dir: &Path) {
    const KEEP: usize = 12;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() > KEEP {
        files.sort();
        for (_, path) in files.iter().take(files.len() - KEEP) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `<target>/mcp-guard-harness-cache/<hash>.cwasm` when the module sits under a `target/`
/// directory, else the same under the system temp dir.
fn disk_cache_file(engine: &Engine, path: &Path, bytes: &[u8]) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    bytes.len().hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let base = path
        .canonicalize()
        .ok()
        .and_then(|p| p.ancestors().find(|a| a.file_name().is_some_and(|n| n == "target")).map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mcp-guard-harness-cache").join(format!("{:016x}.cwasm", hasher.finish()))
}

fn typed<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, HarnessError> {
    let Some(func) = instance.get_func(&mut *store, name) else { return Ok(None) };
    func.typed::<P, R>(&*store)
        .map(Some)
        .map_err(|e| HarnessError::BadExport { name: name.to_string(), message: format!("{e:#}") })
}

/// A readable account of a trap: what the plugin logged at error level or above during the
/// call (the SDK's panic hook logs the panic message at critical; std writes it to stderr),
/// then the trap, then, when there was no such message, the innermost wasm frames.
fn describe_trap(error: &wasmtime::Error, plugin_errors: &[String]) -> String {
    let mut message = plugin_errors.join("; ");
    if !message.is_empty() {
        message.push_str("; ");
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => message.push_str(&trap.to_string()),
        None => message.push_str(&format!("{error:#}")),
    }
    if plugin_errors.is_empty() {
        if let Some(trace) = error.downcast_ref::<WasmBacktrace>() {
            let frames: Vec<String> = trace
                .frames()
                .iter()
                .take(8)
                .map(|f| f.func_name().map_or("<unnamed>".to_string(), |n| format!("{:#}", rustc_demangle::demangle(n))))
                .collect();
            if !frames.is_empty() {
                message.push_str(&format!(" (in {})", frames.join(" <- ")));
            }
        }
    }
    message
}

impl Harness {
    /// Loads a module from a file with default [`Options`]. The compiled module is cached for
    /// the process (and on disk), so loading the same file again is cheap.
    pub fn load(path: impl AsRef<Path>) -> Result<Harness, HarnessError> {
        Self::load_with(path, Options::default())
    }

    pub fn load_with(path: impl AsRef<Path>, options: Options) -> Result<Harness, HarnessError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(HarnessError::WasmNotFound { path: path.to_path_buf() });
        }
        let module = cached_module(path, &options)?;
        Self::instantiate(&module, options)
    }

    /// Loads a module from bytes (binary wasm), compiling it every time.
    pub fn from_bytes(bytes: &[u8], options: Options) -> Result<Harness, HarnessError> {
        let module = compile(bytes, None, &options)?;
        Self::instantiate(&module, options)
    }

    fn instantiate(module: &Module, options: Options) -> Result<Harness, HarnessError> {
        let instantiate_error = |e: wasmtime::Error| HarnessError::Instantiate { message: format!("{e:#}") };
        let mut linker = Linker::new(module.engine());
        abi::add_to_linker(&mut linker).map_err(instantiate_error)?;
        wasi::add_to_linker(&mut linker).map_err(instantiate_error)?;
        let mut store = Store::new(module.engine(), HostState::new(&options));
        let initial_fuel = if options.fuel {
            store.set_fuel(u64::MAX).map_err(instantiate_error)?;
            Some(store.get_fuel().map_err(instantiate_error)?)
        } else {
            None
        };

        let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
        if !exports.iter().any(|e| e == "proxy_abi_version_0_2_1" || e == "proxy_abi_version_0_2_0") {
            return Err(HarnessError::UnsupportedAbi { exports });
        }
        // Name the first missing import now, rather than failing on it later.
        for import in module.imports() {
            if linker.get_by_import(&mut store, &import).is_none() {
                return Err(HarnessError::UnknownImport { module: import.module().to_string(), name: import.name().to_string() });
            }
        }
        let instance = linker.instantiate(&mut store, module).map_err(instantiate_error)?;

        let memory = instance.get_memory(&mut store, "memory");
        let alloc = match typed::<u32, u32>(&instance, &mut store, "proxy_on_memory_allocate")? {
            Some(f) => Some(f),
            None => typed::<u32, u32>(&instance, &mut store, "malloc")?,
        };
        {
            let state = store.data_mut();
            state.memory = memory;
            state.alloc = alloc;
        }
        let exports = Exports {
            context_create: typed(&instance, &mut store, "proxy_on_context_create")?,
            vm_start: typed(&instance, &mut store, "proxy_on_vm_start")?,
            configure: typed(&instance, &mut store, "proxy_on_configure")?,
            tick: typed(&instance, &mut store, "proxy_on_tick")?,
            done: typed(&instance, &mut store, "proxy_on_done")?,
            log: typed(&instance, &mut store, "proxy_on_log")?,
            delete: typed(&instance, &mut store, "proxy_on_delete")?,
            request_headers: typed(&instance, &mut store, "proxy_on_request_headers")?,
            request_body: typed(&instance, &mut store, "proxy_on_request_body")?,
            request_trailers: typed(&instance, &mut store, "proxy_on_request_trailers")?,
            response_headers: typed(&instance, &mut store, "proxy_on_response_headers")?,
            response_body: typed(&instance, &mut store, "proxy_on_response_body")?,
            response_trailers: typed(&instance, &mut store, "proxy_on_response_trailers")?,
            http_call_response: typed(&instance, &mut store, "proxy_on_http_call_response")?,
            queue_ready: typed(&instance, &mut store, "proxy_on_queue_ready")?,
        };
        let initialize = typed::<(), ()>(&instance, &mut store, "_initialize")?;
        let main = if initialize.is_some() { typed::<(u32, u32), u32>(&instance, &mut store, "main")? } else { None };
        let start = typed::<(), ()>(&instance, &mut store, "_start")?;

        let mut harness = Harness {
            store,
            exports,
            responder: None,
            in_flight: BTreeMap::new(),
            held: BTreeSet::new(),
            deadlines: BTreeMap::new(),
            history: Vec::new(),
            outcomes: HashMap::new(),
            failure: None,
            configured: false,
            next_context_id: ROOT_CONTEXT_ID + 1,
            initial_fuel,
        };

        // The ABI's start-up: `_initialize` then `main`, or `_start` for command-style modules.
        if initialize.is_some() {
            harness.call("_initialize", initialize, 0, ())?;
            harness.call("main", main, 0, (0, 0))?;
        } else if start.is_some() {
            match harness.call("_start", start, 0, ()) {
                Err(_) if harness.store.data().proc_exit == Some(0) => harness.failure = None,
                other => {
                    other?;
                }
            }
        }

        let root = ROOT_CONTEXT_ID;
        let first_log = harness.store.data().logs.len();
        let create = harness.exports.context_create.clone();
        harness.call("proxy_on_context_create", create, root, (root, 0))?;
        let vm_config_len = u32::try_from(harness.store.data().vm_config.len()).unwrap_or(u32::MAX);
        let vm_start = harness.exports.vm_start.clone();
        if harness.call("proxy_on_vm_start", vm_start, root, (root, vm_config_len))? == Some(0) {
            let logs = harness.store.data().logs.get(first_log..).unwrap_or_default().to_vec();
            return Err(HarnessError::VmStartRejected { logs });
        }
        harness.pump()?;
        Ok(harness)
    }

    /// Calls into the plugin on `context_id`. A missing export is `Ok(None)` (every callback is
    /// optional); a trap fails the VM for good, as in Envoy.
    pub(crate) fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        func: Option<TypedFunc<P, R>>,
        context_id: u32,
        args: P,
    ) -> Result<Option<R>, Trap> {
        if let Some(trap) = &self.failure {
            return Err(trap.clone());
        }
        let Some(func) = func else { return Ok(None) };
        {
            let state = self.store.data_mut();
            state.count_call(name);
            state.current = context_id;
            state.effective = context_id;
            state.call_first_log = state.logs.len();
        }
        let result = func.call(&mut self.store, args);
        let state = self.store.data_mut();
        state.flush_std_streams();
        state.current = 0;
        state.effective = 0;
        match result {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                let message = if error.downcast_ref::<ProcExit>().is_some() {
                    format!("{error}")
                } else {
                    let errors: Vec<String> = state
                        .logs
                        .get(state.call_first_log..)
                        .unwrap_or_default()
                        .iter()
                        .filter(|l| l.level >= LogLevel::Error)
                        .map(|l| l.message.clone())
                        .collect();
                    describe_trap(&error, &errors)
                };
                let trap = Trap { function: name.to_string(), message };
                self.fail(&trap);
                Err(trap)
            }
        }
    }

    /// Configures the plugin (`proxy_on_configure` with this plugin configuration).
    /// A refusal returns [`HarnessError::ConfigureRejected`] with the lines the plugin logged.
    pub fn configure(&mut self, json: &str) -> Result<(), HarnessError> {
        self.configure_bytes(json.as_bytes())
    }

    pub fn configure_bytes(&mut self, configuration: &[u8]) -> Result<(), HarnessError> {
        let first_log = self.store.data().logs.len();
        let len = u32::try_from(configuration.len()).unwrap_or(u32::MAX);
        self.store.data_mut().plugin_config = Some(configuration.to_vec());
        let configure = self.exports.configure.clone();
        let result = self.call("proxy_on_configure", configure, ROOT_CONTEXT_ID, (ROOT_CONTEXT_ID, len));
        self.store.data_mut().plugin_config = None;
        if result? == Some(0) {
            let logs = self.store.data().logs.get(first_log..).unwrap_or_default().to_vec();
            return Err(HarnessError::ConfigureRejected { logs });
        }
        self.configured = true;
        self.pump()?;
        Ok(())
    }

    /// Declares an upstream cluster the plugin may `proxy_http_call`; calls to any other
    /// cluster get `BadArgument`, as in Envoy.
    pub fn add_cluster(&mut self, name: &str) -> &mut Self {
        self.store.data_mut().clusters.insert(name.to_string());
        self
    }

    /// Treats every cluster name as known (for tools that cannot know the policy's clusters).
    pub fn allow_any_cluster(&mut self) -> &mut Self {
        self.store.data_mut().any_cluster = true;
        self
    }

    /// Sets the plugin's real-time clock (proxy time and WASI realtime) to `unix_seconds`.
    /// Monotonic time moves forward by the same amount, never back.
    pub fn set_time(&mut self, unix_seconds: u64) -> &mut Self {
        self.set_time_nanos(unix_seconds.saturating_mul(1_000_000_000))
    }

    pub fn set_time_nanos(&mut self, unix_nanos: u64) -> &mut Self {
        self.store.data_mut().clock.set_realtime(unix_nanos);
        self
    }

    /// Moves both clocks forward. Nothing else happens: see [`Harness::elapse`] for ticks and
    /// HTTP-call timeouts.
    pub fn advance(&mut self, seconds: u64) -> &mut Self {
        self.advance_nanos(seconds.saturating_mul(1_000_000_000))
    }

    pub fn advance_millis(&mut self, millis: u64) -> &mut Self {
        self.advance_nanos(millis.saturating_mul(1_000_000))
    }

    fn advance_nanos(&mut self, nanos: u64) -> &mut Self {
        self.store.data_mut().clock.advance(nanos);
        self
    }

    /// The plugin's current time, in Unix nanoseconds.
    pub fn now_nanos(&self) -> u64 {
        self.store.data().clock.realtime_ns
    }

    /// The host log level (default trace: everything is captured).
    pub fn set_log_level(&mut self, level: LogLevel) -> &mut Self {
        self.store.data_mut().log_level = level;
        self
    }

    /// Sets a property every stream sees (`proxy_get_property`), e.g. node metadata.
    /// Per-request properties are set with [`RequestBuilder::property`].
    pub fn set_property(&mut self, path: &[&str], value: impl Into<Vec<u8>>) -> &mut Self {
        self.store.data_mut().properties.insert(path.join("\0").into_bytes(), value.into());
        self
    }

    /// Starts describing a request; [`RequestBuilder::send`] runs it.
    pub fn request(&mut self) -> RequestBuilder<'_> {
        RequestBuilder::new(self)
    }

    /// What became of the stream `context_id` so far: its final outcome, `Pending` while the
    /// plugin holds it, `None` for an id never used.
    pub fn outcome(&self, context_id: u32) -> Option<Outcome> {
        if let Some(outcome) = self.outcomes.get(&context_id) {
            return Some(outcome.clone());
        }
        self.store.data().streams.contains_key(&context_id).then_some(Outcome::Pending { context_id })
    }

    /// Answers every HTTP call the plugin dispatches from now on, after the dispatching
    /// callback returns (as Envoy's event loop would). Return [`HttpCallReply::Hold`] to
    /// answer a call later with [`Harness::respond_http_call`].
    pub fn on_http_call(&mut self, responder: impl FnMut(&HttpCall) -> HttpCallReply + Send + 'static) -> &mut Self {
        self.responder = Some(Box::new(responder));
        self
    }

    /// Without a responder every call is held for the test.
    pub fn clear_http_call_responder(&mut self) -> &mut Self {
        self.responder = None;
        self
    }

    /// Calls dispatched and held for an answer, oldest first.
    pub fn pending_http_calls(&self) -> Vec<HttpCall> {
        self.held.iter().filter_map(|token| self.in_flight.get(token).cloned()).collect()
    }

    /// Every call the plugin dispatched, in order.
    pub fn http_calls(&self) -> &[HttpCall] {
        &self.history
    }

    /// Answers a held call; the plugin's callback runs now, and so does whatever it unblocks.
    pub fn respond_http_call(&mut self, token: u32, reply: HttpCallReply) -> Result<(), HarnessError> {
        if !self.held.contains(&token) {
            return Err(HarnessError::UnknownHttpCall { token });
        }
        if reply == HttpCallReply::Hold {
            return Ok(());
        }
        self.held.remove(&token);
        self.deadlines.remove(&token);
        self.store.data_mut().events.push_back(Event::HttpCallDone { token, reply });
        self.pump()?;
        Ok(())
    }

    /// The tick period the plugin set, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        let ms = self.store.data().tick_period_ms;
        (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// Calls `proxy_on_tick` on the root context now, if the plugin set a tick period and
    /// exports the callback; returns whether it ran. The clock is not moved.
    pub fn tick(&mut self) -> Result<bool, HarnessError> {
        if let Some(trap) = &self.failure {
            return Err(trap.clone().into());
        }
        let state = self.store.data();
        if state.tick_period_ms == 0 || self.exports.tick.is_none() {
            return Ok(false);
        }
        self.fire_tick()?;
        Ok(true)
    }

    /// Lets `duration` pass like Envoy's event loop: ticks fire at their period, held HTTP
    /// calls whose timeout expires get [`HttpCallReply::Timeout`], in time order. Returns the
    /// number of ticks fired.
    pub fn elapse(&mut self, duration: Duration) -> Result<u32, HarnessError> {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let target = self.store.data().clock.monotonic_ns.saturating_add(nanos);
        let mut ticks = 0;
        loop {
            let state = self.store.data();
            let tick_at = (state.tick_period_ms > 0 && self.exports.tick.is_some()).then_some(state.next_tick_ns);
            let timeout_at = self.deadlines.iter().min_by_key(|(_, at)| **at).map(|(token, at)| (*token, *at));
            let next = match (tick_at, timeout_at) {
                (Some(t), Some((_, d))) => t.min(d),
                (Some(t), None) => t,
                (None, Some((_, d))) => d,
                (None, None) => break,
            };
            if next > target {
                break;
            }
            let now = self.store.data().clock.monotonic_ns;
            self.advance_nanos(next.saturating_sub(now));
            match timeout_at {
                Some((token, at)) if at == next => {
                    self.held.remove(&token);
                    self.deadlines.remove(&token);
                    self.store.data_mut().events.push_back(Event::HttpCallDone { token, reply: HttpCallReply::Timeout });
                    self.pump()?;
                }
                _ => {
                    self.fire_tick()?;
                    ticks += 1;
                }
            }
        }
        let now = self.store.data().clock.monotonic_ns;
        self.advance_nanos(target.saturating_sub(now));
        Ok(ticks)
    }

    fn fire_tick(&mut self) -> Result<(), HarnessError> {
        let tick = self.exports.tick.clone();
        self.call("proxy_on_tick", tick, ROOT_CONTEXT_ID, ROOT_CONTEXT_ID)?;
        let state = self.store.data_mut();
        state.next_tick_ns = state.clock.monotonic_ns.saturating_add(u64::from(state.tick_period_ms) * 1_000_000);
        self.pump()?;
        Ok(())
    }

    /// Resets a pending stream from the downstream side (the client went away): the plugin
    /// gets `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn cancel(&mut self, context_id: u32) -> Result<Outcome, HarnessError> {
        if !self.store.data().streams.contains_key(&context_id) {
            return Err(HarnessError::UnknownContext { context_id });
        }
        if let Some(stream) = self.store.data_mut().stream_mut(context_id) {
            stream.reset = Some("downstream_remote_disconnect".to_string());
        }
        self.pump()?;
        self.outcome(context_id).ok_or(HarnessError::UnknownContext { context_id })
    }

    /// Everything the plugin logged so far.
    pub fn logs(&self) -> &[LogEntry] {
        &self.store.data().logs
    }

    /// The log so far, emptied.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// The log messages so far, one per line.
    pub fn log_text(&self) -> String {
        self.logs().iter().map(|l| format!("[{}] {}\n", l.level, l.message)).collect()
    }

    /// Things the host noticed about the plugin's calls (a malformed map, an unknown cluster),
    /// which Envoy would only show at debug level.
    pub fn host_notes(&self) -> &[String] {
        &self.store.data().notes
    }

    /// A counter's or gauge's value by the name the plugin defined (histograms: sample count).
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.store.data().metrics.list.iter().find(|m| m.name == name).map(|m| m.value)
    }

    pub fn metrics(&self) -> Vec<MetricInfo> {
        self.store
            .data()
            .metrics
            .list
            .iter()
            .map(|m| MetricInfo { name: m.name.clone(), kind: m.kind, value: m.value, samples: m.samples.clone() })
            .collect()
    }

    /// A shared-data entry: value and CAS.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.store.data().shared.get(key.as_bytes()).cloned()
    }

    /// Sets a shared-data entry as another VM of the same `vm_id` would (new CAS).
    pub fn set_shared_data(&mut self, key: &str, value: impl Into<Vec<u8>>) -> &mut Self {
        let state = self.store.data_mut();
        let cas = state.next_cas();
        state.shared.insert(key.as_bytes().to_vec(), (value.into(), cas));
        self
    }

    /// The plugin's linear memory, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().memory.map_or(0, |m| m.data_size(&self.store))
    }

    /// The plugin's linear memory, in 64 KiB pages.
    pub fn memory_pages(&self) -> u64 {
        self.store.data().memory.map_or(0, |m| m.size(&self.store))
    }

    /// Wasm instructions' fuel spent so far, when loaded with [`Options::fuel`].
    pub fn fuel_consumed(&self) -> Option<u64> {
        let initial = self.initial_fuel?;
        self.store.get_fuel().ok().map(|left| initial.saturating_sub(left))
    }

    /// How often each ABI function has been called across the VM boundary so far: the host
    /// functions the plugin imported, by name, and the plugin's exports the host called
    /// (`proxy_on_*`, including `proxy_on_memory_allocate` for every buffer handed back). In
    /// Envoy each such call costs time in the host that the fuel figure does not see.
    pub fn abi_calls(&self) -> &std::collections::BTreeMap<&'static str, u64> {
        &self.store.data().calls
    }

    /// The trap that failed this VM, if one did.
    pub fn trap(&self) -> Option<(&str, &str)> {
        self.failure.as_ref().map(|t| (t.function.as_str(), t.message.as_str()))
    }

    pub fn root_context_id(&self) -> u32 {
        ROOT_CONTEXT_ID
    }
}
