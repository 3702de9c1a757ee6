//! Everything the host keeps for one VM. It lives in the wasmtime `Store`, so harnesses share
//! nothing and tests run in parallel.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use wasmtime::{Memory, TypedFunc};

use crate::http::{HttpCall, HttpCallReply, Stream};
use crate::map::Headers;
use crate::{LogEntry, LogLevel, MetricType};

/// Proxy-wasm status codes (`proxy_status_t`; `BrokenConnection` is Envoy's `WasmResult` 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
#[allow(dead_code)] // the full list, though not every code has a use here
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

/// The time the plugin sees. Real time can be set backwards; monotonic time never goes back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub realtime_ns: u64,
    pub monotonic_ns: u64,
}

impl Clock {
    pub fn set_realtime(&mut self, ns: u64) {
        self.monotonic_ns = self.monotonic_ns.saturating_add(ns.saturating_sub(self.realtime_ns));
        self.realtime_ns = ns;
    }

    pub fn advance(&mut self, ns: u64) {
        self.realtime_ns = self.realtime_ns.saturating_add(ns);
        self.monotonic_ns = self.monotonic_ns.saturating_add(ns);
    }
}

/// The HTTP-call response being delivered to `proxy_on_http_call_response`.
#[derive(Debug, Clone)]
pub(crate) struct CallResponse {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

#[derive(Debug, Clone)]
pub(crate) struct Metric {
    pub name: String,
    pub kind: MetricType,
    pub value: u64,
    pub samples: Vec<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub list: Vec<Metric>,
    pub by_id: HashMap<u32, usize>,
    pub next_id: [u32; 3],
}

impl Metrics {
    /// Envoy's ids: the metric type in the low two bits, steps of 4, first counter 4,
    /// first gauge 5, first histogram 6. A name defined twice is one stat with two ids.
    pub fn define(&mut self, kind: MetricType, name: &str) -> u32 {
        let slot = kind as usize;
        let Some(next) = self.next_id.get_mut(slot) else { return 0 };
        if *next == 0 {
            *next = kind as u32;
        }
        *next = next.wrapping_add(4);
        let id = *next;
        let index = match self.list.iter().position(|m| m.name == name && m.kind == kind) {
            Some(index) => index,
            None => {
                self.list.push(Metric { name: name.to_string(), kind, value: 0, samples: Vec::new() });
                self.list.len() - 1
            }
        };
        self.by_id.insert(id, index);
        id
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Metric> {
        let index = *self.by_id.get(&id)?;
        self.list.get_mut(index)
    }
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub name: String,
    pub owner_context: u32,
    pub items: VecDeque<Vec<u8>>,
}

/// Something that happens "on the next turn of the event loop": never inside the callback that
/// caused it, as in Envoy.
#[derive(Debug)]
pub(crate) enum Event {
    HttpCallDone { token: u32, reply: HttpCallReply },
    QueueReady { context_id: u32, queue_id: u32 },
}

/// Host-side state of one VM.
pub(crate) struct HostState {
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<u32, u32>>,
    pub clock: Clock,
    pub rng: u64,
    pub env: Vec<(String, String)>,
    pub log_level: LogLevel,
    pub logs: Vec<LogEntry>,
    pub stdout_line: Vec<u8>,
    pub stderr_line: Vec<u8>,
    /// Where the log stood when the current VM call began (a trap report quotes what follows).
    pub call_first_log: usize,
    pub notes: Vec<String>,
    pub vm_config: Vec<u8>,
    /// Only during `proxy_on_configure`, as in Envoy (`temp_plugin_`).
    pub plugin_config: Option<Vec<u8>>,
    pub tick_period_ms: u32,
    /// When the next tick is due, in monotonic time.
    pub next_tick_ns: u64,
    pub root_id: u32,
    pub vm_id: String,
    /// The context the current callback was made on, and the one host calls act on.
    pub current: u32,
    pub effective: u32,
    pub streams: BTreeMap<u32, Stream>,
    pub call_response: Option<CallResponse>,
    pub call_status: (u32, Vec<u8>),
    pub shared: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queues: Vec<Queue>,
    pub metrics: Metrics,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub clusters: HashSet<String>,
    /// Accept every cluster name (the CLI cannot know the policy's cluster names).
    pub any_cluster: bool,
    pub next_token: u32,
    /// Calls dispatched during the current VM call; the driver hands them to the responder.
    pub new_calls: Vec<HttpCall>,
    pub events: VecDeque<Event>,
    pub proc_exit: Option<i32>,
    pub allow_on_headers_stop_iteration: bool,
    /// How often each ABI function was called across the VM boundary: host functions by
    /// their import name, the plugin's exports (and its allocator, which the host calls to
    /// return bytes) by theirs. What Envoy pays per call is outside the fuel figure.
    pub calls: BTreeMap<&'static str, u64>,
}

impl HostState {
    pub fn count_call(&mut self, name: &'static str) {
        *self.calls.entry(name).or_insert(0) += 1;
    }

    pub fn new(options: &crate::Options) -> Self {
        let mut properties = HashMap::new();
        properties.insert(b"plugin_name".to_vec(), options.plugin_name.as_bytes().to_vec());
        properties.insert(b"plugin_root_id".to_vec(), options.root_id.as_bytes().to_vec());
        properties.insert(b"plugin_vm_id".to_vec(), options.vm_id.as_bytes().to_vec());
        HostState {
            memory: None,
            alloc: None,
            clock: Clock { realtime_ns: crate::DEFAULT_TIME_SECS.saturating_mul(1_000_000_000), monotonic_ns: 1_000_000_000 },
            rng: options.random_seed,
            env: options.env.clone(),
            log_level: options.log_level,
            logs: Vec::new(),
            stdout_line: Vec::new(),
            stderr_line: Vec::new(),
            call_first_log: 0,
            notes: Vec::new(),
            vm_config: options.vm_config.clone(),
            plugin_config: None,
            tick_period_ms: 0,
            next_tick_ns: 0,
            root_id: crate::ROOT_CONTEXT_ID,
            vm_id: options.vm_id.clone(),
            current: 0,
            effective: 0,
            streams: BTreeMap::new(),
            call_response: None,
            call_status: (0, Vec::new()),
            shared: HashMap::new(),
            next_cas: 1,
            queues: Vec::new(),
            metrics: Metrics::default(),
            properties,
            clusters: HashSet::new(),
            any_cluster: false,
            next_token: 1,
            new_calls: Vec::new(),
            events: VecDeque::new(),
            proc_exit: None,
            allow_on_headers_stop_iteration: options.allow_on_headers_stop_iteration,
            calls: BTreeMap::new(),
        }
    }

    pub fn log(&mut self, level: LogLevel, message: String) {
        if level >= self.log_level {
            let context_id = self.effective;
            self.logs.push(LogEntry { level, message, context_id });
        }
    }

    pub fn note(&mut self, message: String) {
        self.notes.push(message);
    }

    /// Envoy's shared-data CAS numbers: start at 1, never 0.
    pub fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// Deterministic randomness (splitmix64), so a test run can be replayed.
    pub fn random_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let bytes = z.to_le_bytes();
            for (dst, src) in chunk.iter_mut().zip(bytes.iter()) {
                *dst = *src;
            }
        }
    }

    /// Flushes partial stdout/stderr lines at the end of a VM call.
    pub fn flush_std_streams(&mut self) {
        for fd in [1, 2] {
            let line = if fd == 1 { std::mem::take(&mut self.stdout_line) } else { std::mem::take(&mut self.stderr_line) };
            if !line.is_empty() {
                self.std_line(fd, &line);
            }
        }
    }

    /// One line written to stdout (INFO) or stderr (ERROR), per the ABI's `fd_write`.
    pub fn std_line(&mut self, fd: u32, line: &[u8]) {
        let text = String::from_utf8_lossy(line).trim_end_matches('\r').to_string();
        self.log(if fd == 2 { LogLevel::Error } else { LogLevel::Info }, text);
    }

    pub fn stream_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.get_mut(&id)
    }

    /// The stream host calls act on right now, if the effective context is one.
    pub fn effective_stream(&mut self) -> Option<&mut Stream> {
        let id = self.effective;
        self.streams.get_mut(&id)
    }
}
