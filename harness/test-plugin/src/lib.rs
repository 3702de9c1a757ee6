//! A proxy-wasm plugin for the harness's own tests. What it does to a request is chosen by the
//! request header `x-test-action`; everything it observes it reports in headers it adds, so
//! the tests can check the host from the outside.

use std::cell::RefCell;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

thread_local! {
    /// Streams waiting for one shared HTTP call, dispatched by the first of them.
    static WAITERS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_id| -> Box<dyn RootContext> { Box::new(Root { requests_metric: 0, tick_call: false }) });
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

struct Root {
    requests_metric: u32,
    tick_call: bool,
}

impl Context for Root {
    fn on_http_call_response(&mut self, _token: u32, headers: usize, body_size: usize, _trailers: usize) {
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        log(LogLevel::Info, &format!("root call answered: headers={headers} status={status:?} body={}", String::from_utf8_lossy(&body)));
        let _ = hostcalls::set_shared_data("root-call", Some(status.unwrap_or_default().as_bytes()), None);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let config = self.get_vm_configuration().unwrap_or_default();
        log(LogLevel::Info, &format!("vm start: {}", String::from_utf8_lossy(&config)));
        config != b"refuse"
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = String::from_utf8(self.get_plugin_configuration().unwrap_or_default()).unwrap_or_default();
        if config.contains("reject") {
            log(LogLevel::Error, "bad configuration: rejected on purpose");
            return false;
        }
        self.tick_call = config.contains("tick-call");
        if config.contains("tick") {
            self.set_tick_period(Duration::from_millis(500));
        }
        if config.contains("stdout") {
            println!("hello from stdout");
            eprintln!("hello from stderr");
        }
        self.requests_metric = hostcalls::define_metric(MetricType::Counter, "test.requests").unwrap_or(0);
        log(LogLevel::Info, &format!("configured with {config}"));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let item = hostcalls::dequeue_shared_queue(queue_id).ok().flatten().unwrap_or_default();
        log(LogLevel::Info, &format!("queue {queue_id} ready: {}", String::from_utf8_lossy(&item)));
    }

    fn on_tick(&mut self) {
        if self.tick_call {
            self.tick_call = false;
            let headers = vec![(":method", "GET"), (":path", "/from-root"), (":authority", "authz.local")];
            let _ = self.dispatch_http_call("authz", headers, None, vec![], Duration::from_secs(1));
        }
        let id = match hostcalls::define_metric(MetricType::Counter, "test.ticks") {
            Ok(id) => id,
            Err(_) => return,
        };
        let _ = hostcalls::increment_metric(id, 1);
        let now = self.get_current_time().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        log(LogLevel::Debug, &format!("tick at {now}"));
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { id: context_id, action: String::new(), requests_metric: self.requests_metric }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    action: String,
    requests_metric: u32,
}

impl Stream {
    fn add(&self, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, _token: u32, headers: usize, body_size: usize, _trailers: usize) {
        if self.action == "shared-call" {
            // Decide every waiting stream from here, as the filter does with its JWKS fetch.
            let status = self.get_http_call_response_header(":status");
            let waiters: Vec<u32> = WAITERS.with(|w| w.borrow_mut().drain(..).collect());
            for waiter in waiters {
                if hostcalls::set_effective_context(waiter).is_err() {
                    log(LogLevel::Warn, &format!("stream {waiter} is gone"));
                    continue;
                }
                if status.as_deref() == Some("200") {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-shared-call", Some("ok"));
                    let _ = hostcalls::resume_http_request();
                } else {
                    let _ = hostcalls::send_http_response(502, vec![("x-shared-call", "failed")], Some(b"shared call failed"));
                }
            }
            let _ = hostcalls::set_effective_context(self.id);
            return;
        }
        if headers == 0 {
            let (code, message) = hostcalls::get_grpc_status().unwrap_or((0, None));
            let _ = hostcalls::send_http_response(503, vec![], Some(format!("call failed: {code} {}", message.unwrap_or_default()).as_bytes()));
            return;
        }
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        if status != "200" {
            let _ = hostcalls::send_http_response(503, vec![], Some(format!("call answered {status}: {}", String::from_utf8_lossy(&body)).as_bytes()));
            return;
        }
        self.add("x-call-body", &String::from_utf8_lossy(&body));
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, headers: usize, end_of_stream: bool) -> Action {
        let _ = hostcalls::increment_metric(self.requests_metric, 1);
        self.action = self.get_http_request_header("x-test-action").unwrap_or_default();
        log(LogLevel::Info, &format!("request headers: {headers} end_of_stream={end_of_stream} action={}", self.action));
        self.set_http_request_header("x-plugin", Some("seen"));
        if let Some(binary) = self.get_http_request_header_bytes("x-binary") {
            self.add("x-binary-len", &binary.len().to_string());
        }
        match self.action.as_str() {
            "reply" => {
                self.send_http_response(403, vec![("x-reason", "nope"), ("content-type", "application/json")], Some(br#"{"error":"denied"}"#));
                Action::Pause
            }
            "reset" => {
                self.reset_http_request();
                Action::Pause
            }
            "pause" | "buffer" => Action::Pause,
            "call" => {
                let timeout = Duration::from_secs(5);
                match self.dispatch_http_call("authz", vec![(":method", "GET"), (":path", "/keys"), (":authority", "authz.local")], None, vec![], timeout) {
                    Ok(token) => {
                        log(LogLevel::Info, &format!("dispatched call {token}"));
                        Action::Pause
                    }
                    Err(status) => {
                        self.add("x-call-status", &format!("{status:?}"));
                        Action::Continue
                    }
                }
            }
            "bad-call" => {
                let missing_path = hostcalls::dispatch_http_call("authz", vec![(":method", "GET"), (":authority", "a")], None, vec![], Duration::from_secs(1));
                let unknown_cluster = hostcalls::dispatch_http_call("nowhere", vec![(":method", "GET"), (":path", "/"), (":authority", "a")], None, vec![], Duration::from_secs(1));
                self.add("x-missing-path", &format!("{:?}", missing_path.err()));
                self.add("x-unknown-cluster", &format!("{:?}", unknown_cluster.err()));
                Action::Continue
            }
            "shared-call" => {
                let first = WAITERS.with(|w| w.borrow().is_empty());
                WAITERS.with(|w| w.borrow_mut().push(self.id));
                if first {
                    let headers = vec![(":method", "GET"), (":path", "/jwks"), (":authority", "authz.local")];
                    if let Err(status) = self.dispatch_http_call("authz", headers, None, vec![], Duration::from_secs(5)) {
                        self.add("x-call-status", &format!("{status:?}"));
                        return Action::Continue;
                    }
                }
                Action::Pause
            }
            "queue" => {
                let id = self.register_shared_queue("q");
                let resolved = self.resolve_shared_queue("", "q");
                let unknown = self.resolve_shared_queue("", "nope");
                let _ = self.enqueue_shared_queue(id, Some(b"hello"));
                let first = self.dequeue_shared_queue(id).map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()));
                let empty = self.dequeue_shared_queue(id);
                let _ = self.enqueue_shared_queue(id, Some(b"for the root"));
                self.add("x-queue", &format!("{} {resolved:?} {unknown:?} {first:?} {empty:?}", id));
                Action::Continue
            }
            "metric-kinds" => {
                let gauge = hostcalls::define_metric(MetricType::Gauge, "test.gauge").unwrap_or(0);
                let histogram = hostcalls::define_metric(MetricType::Histogram, "test.histogram").unwrap_or(0);
                let _ = hostcalls::increment_metric(gauge, 5);
                let _ = hostcalls::increment_metric(gauge, -2);
                let _ = hostcalls::record_metric(histogram, 7);
                let decrement_counter = hostcalls::increment_metric(self.requests_metric, -1);
                let read_histogram = hostcalls::get_metric(histogram);
                let gauge_value = hostcalls::get_metric(gauge);
                let foreign = hostcalls::call_foreign_function("no_such_function", None);
                self.add(
                    "x-metrics",
                    &format!("{gauge} {histogram} {decrement_counter:?} {read_histogram:?} {gauge_value:?} {:?}", foreign.err()),
                );
                Action::Continue
            }
            "panic" => panic!("boom: the test plugin panics on purpose"),
            "shared" => {
                let (value, cas) = self.get_shared_data("counter");
                let n: u32 = value.map(|v| String::from_utf8_lossy(&v).parse().unwrap_or(0)).unwrap_or(0);
                let first = self.set_shared_data("counter", Some((n + 1).to_string().as_bytes()), cas);
                let stale = self.set_shared_data("counter", Some(b"stale"), cas);
                self.add("x-shared", &format!("{n} {first:?} {stale:?}"));
                Action::Continue
            }
            "property" => {
                let cert = self.get_property(vec!["connection", "sha256_peer_certificate_digest"]);
                let path = self.get_property(vec!["request", "url_path"]);
                let name = self.get_property(vec!["plugin_name"]);
                let show = |v: Option<Vec<u8>>| v.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|| "none".into());
                self.add("x-cert", &show(cert));
                self.add("x-url-path", &show(path));
                self.add("x-plugin-name", &show(name));
                self.set_property(vec!["mine"], Some(b"set"));
                self.add("x-mine", &show(self.get_property(vec!["mine"])));
                Action::Continue
            }
            "time" => {
                let now = self.get_current_time().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let mono = std::time::Instant::now();
                let _ = mono;
                let wasi_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                self.add("x-time", &format!("{now} {wasi_now}"));
                Action::Continue
            }
            "random" => {
                let mut buf = [0u8; 8];
                let hex: String = {
                    // std's HashMap seeding and getrandom both end in WASI random_get.
                    let state = std::collections::hash_map::RandomState::new();
                    use std::hash::BuildHasher;
                    let h = state.hash_one(42u8);
                    buf.copy_from_slice(&h.to_le_bytes());
                    buf.iter().map(|b| format!("{b:02x}")).collect()
                };
                self.add("x-random", &hex);
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        log(LogLevel::Info, &format!("request body: {body_size} end_of_stream={end_of_stream}"));
        if self.action == "stream-body" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        if text.contains("deny") {
            self.send_http_response(403, vec![], Some(b"body denied"));
            return Action::Pause;
        }
        if text.contains("rewrite") {
            self.set_http_request_body(0, body_size, b"rewritten");
        }
        if self.action == "buffer" {
            // Headers are still held (Pause from headers): they can still be changed.
            self.set_http_request_header("x-body-len", Some(&body_size.to_string()));
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, trailers: usize) -> Action {
        log(LogLevel::Info, &format!("request trailers: {trailers}"));
        self.set_http_request_trailer("x-trailer-seen", Some("yes"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-plugin-response", Some("yes"));
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if self.action == "response-rewrite" {
            self.set_http_response_body(0, body_size, b"changed by plugin");
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status").ok().flatten().unwrap_or_default();
        log(LogLevel::Info, &format!("on_log {} status={status}", self.id));
    }
}
