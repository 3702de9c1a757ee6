//! The event loop: what Envoy's dispatcher and HTTP filter manager do around the plugin.
//!
//! After every callback, the effects the plugin asked for (local reply, resume, reset) are
//! applied first, as Envoy's after-VM-call actions; then pending events (HTTP-call answers,
//! queue notifications) are delivered, one per turn; then the next piece of a stream is handed
//! to the plugin. It stops when nothing can happen without the test.

use std::collections::HashMap;

use crate::harness::{Harness, Trap};
use crate::http::{flow_inputs, Flow, Forwarded, HttpCallReply, Input, LocalReply, LocalReplyRequest, Outcome, Phase, Response, Stop, Stream};
use crate::map::Headers;
use crate::request::RequestSpec;
use crate::state::{CallResponse, Event, Status};
use crate::{HarnessError, ROOT_CONTEXT_ID};

/// Which direction of a stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

/// How a stream ended.
enum End {
    Completed,
    Reset(String),
}

impl Harness {
    /// Creates a stream for `spec` and runs it as far as it goes.
    pub(crate) fn start_stream(&mut self, spec: RequestSpec) -> Result<Outcome, HarnessError> {
        if let Some(trap) = &self.failure {
            return Err(trap.clone().into());
        }
        if !self.configured {
            return Err(HarnessError::NotConfigured);
        }
        let id = self.next_context_id;
        self.next_context_id = self.next_context_id.wrapping_add(1).max(ROOT_CONTEXT_ID + 1);

        let headers = spec.header_map();
        let chunks: Vec<&Vec<u8>> = spec.body_chunks.iter().collect();
        let inputs = flow_inputs(headers, &chunks, &spec.trailers);
        let properties: HashMap<Vec<u8>, Vec<u8>> =
            spec.properties.iter().map(|(path, value)| (path.join("\0").into_bytes(), value.clone())).collect();
        let stream = Stream {
            id,
            phase: Phase::Request,
            request: Flow::new(inputs),
            response: Flow::default(),
            upstream_response: spec.upstream_response.clone(),
            local_reply: None,
            pending_local_reply: None,
            continue_request: false,
            continue_response: false,
            reset: None,
            properties,
            filter_state: Default::default(),
            access_log_phase: false,
        };
        self.store.data_mut().streams.insert(id, stream);

        let create = self.exports.context_create.clone();
        let run = self.call("proxy_on_context_create", create, id, (id, ROOT_CONTEXT_ID)).and_then(|_| self.pump());
        match run {
            Ok(()) => Ok(self.outcome(id).unwrap_or(Outcome::Pending { context_id: id })),
            Err(trap) => Ok(self.outcome(id).unwrap_or(Outcome::Trapped {
                context_id: id,
                function: trap.function,
                message: trap.message,
            })),
        }
    }

    /// Runs until nothing more can happen without the test.
    pub(crate) fn pump(&mut self) -> Result<(), Trap> {
        loop {
            self.collect_new_calls();
            if self.apply_actions()? {
                continue;
            }
            if let Some(event) = self.store.data_mut().events.pop_front() {
                self.deliver_event(event)?;
                continue;
            }
            if self.advance_streams()? {
                continue;
            }
            return Ok(());
        }
    }

    /// Hands the calls dispatched during the last callback to the responder.
    fn collect_new_calls(&mut self) {
        let calls = std::mem::take(&mut self.store.data_mut().new_calls);
        for call in calls {
            self.history.push(call.clone());
            let reply = match &mut self.responder {
                Some(responder) => responder(&call),
                None => HttpCallReply::Hold,
            };
            let token = call.token;
            if reply == HttpCallReply::Hold {
                if call.timeout_ms > 0 {
                    let now = self.store.data().clock.monotonic_ns;
                    self.deadlines.insert(token, now.saturating_add(u64::from(call.timeout_ms) * 1_000_000));
                }
                self.held.insert(token);
            } else {
                self.store.data_mut().events.push_back(Event::HttpCallDone { token, reply });
            }
            self.in_flight.insert(token, call);
        }
    }

    /// Applies what a callback asked of a stream: reset, local reply, resume.
    fn apply_actions(&mut self) -> Result<bool, Trap> {
        let ids: Vec<u32> = self.store.data().streams.keys().copied().collect();
        for id in ids {
            let Some(stream) = self.store.data_mut().stream_mut(id) else { continue };
            if let Some(details) = stream.reset.take() {
                self.finish(id, End::Reset(details))?;
                return Ok(true);
            }
            if let Some(reply) = stream.pending_local_reply.take() {
                match stream.phase {
                    Phase::Request => {
                        // Envoy sends a decoder filter's local reply through the encoder
                        // filters, this one included; the request goes no further.
                        stream.request.inputs.clear();
                        stream.request.close_maps();
                        stream.request.buffer_open = false;
                        stream.phase = Phase::Response;
                        stream.response = Flow::new(local_reply_inputs(&reply));
                        stream.local_reply = Some(reply);
                    }
                    Phase::Response if stream.response.headers_released => {
                        // Too late for a reply: Envoy resets the stream.
                        stream.reset = Some("local reply after response headers were sent".to_string());
                    }
                    Phase::Response => {
                        // From the response path Envoy sends it directly, past the filters.
                        let (headers, body) = local_reply_message(&reply);
                        stream.response.inputs.clear();
                        stream.response.close_maps();
                        stream.response.out = crate::http::Sent { headers: Some(headers), body, trailers: None, complete: true };
                        stream.local_reply = Some(reply);
                    }
                }
                return Ok(true);
            }
            if stream.continue_request {
                stream.continue_request = false;
                if stream.phase == Phase::Request && stream.request.stopped.is_some() {
                    stream.request.release();
                }
                return Ok(true);
            }
            if stream.continue_response {
                stream.continue_response = false;
                if stream.phase == Phase::Response && stream.response.stopped.is_some() {
                    stream.response.release();
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Moves the first stream that can move by one step.
    fn advance_streams(&mut self) -> Result<bool, Trap> {
        let ids: Vec<u32> = self.store.data().streams.keys().copied().collect();
        for id in ids {
            let Some(stream) = self.store.data_mut().stream_mut(id) else { continue };
            match stream.phase {
                Phase::Request if stream.request.can_deliver() => {
                    self.deliver_input(id, Dir::Request)?;
                    return Ok(true);
                }
                Phase::Request if stream.request.out.complete => {
                    // The whole request reached the upstream; its answer comes back.
                    stream.phase = Phase::Response;
                    stream.response = Flow::new(stream.upstream_response.inputs());
                    return Ok(true);
                }
                Phase::Response if stream.response.can_deliver() => {
                    self.deliver_input(id, Dir::Response)?;
                    return Ok(true);
                }
                Phase::Response if stream.response.out.complete => {
                    self.finish(id, End::Completed)?;
                    return Ok(true);
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// Hands the next piece of one direction to the plugin and acts on its answer.
    fn deliver_input(&mut self, id: u32, dir: Dir) -> Result<(), Trap> {
        let allow_stop_iteration = self.store.data().allow_on_headers_stop_iteration;
        let Some(stream) = self.store.data_mut().stream_mut(id) else { return Ok(()) };
        let flow = if dir == Dir::Request { &mut stream.request } else { &mut stream.response };
        let Some(input) = flow.inputs.pop_front() else { return Ok(()) };
        let (name, action) = match input {
            Input::Headers(headers, end_of_stream) => {
                let count = u32::try_from(headers.len()).unwrap_or(u32::MAX);
                flow.headers = headers;
                flow.headers_delivered = true;
                flow.headers_open = true;
                flow.end_seen = end_of_stream;
                let (name, func) = match dir {
                    Dir::Request => ("proxy_on_request_headers", self.exports.request_headers.clone()),
                    Dir::Response => ("proxy_on_response_headers", self.exports.response_headers.clone()),
                };
                (name, self.call(name, func, id, (id, count, u32::from(end_of_stream)))?)
            }
            Input::Data(chunk, end_of_stream) => {
                // While buffering, Envoy adds the new chunk to the buffered body before the call.
                if flow.buffering {
                    flow.buffer.extend_from_slice(&chunk);
                } else {
                    flow.buffer = chunk;
                }
                flow.buffer_open = true;
                flow.body_eos_callback = end_of_stream;
                flow.end_seen = end_of_stream;
                let size = u32::try_from(flow.buffer.len()).unwrap_or(u32::MAX);
                let (name, func) = match dir {
                    Dir::Request => ("proxy_on_request_body", self.exports.request_body.clone()),
                    Dir::Response => ("proxy_on_response_body", self.exports.response_body.clone()),
                };
                (name, self.call(name, func, id, (id, size, u32::from(end_of_stream)))?)
            }
            Input::Trailers(trailers) => {
                let count = u32::try_from(trailers.len()).unwrap_or(u32::MAX);
                flow.trailers = Some(trailers);
                flow.trailers_open = true;
                flow.end_seen = true;
                let (name, func) = match dir {
                    Dir::Request => ("proxy_on_request_trailers", self.exports.request_trailers.clone()),
                    Dir::Response => ("proxy_on_response_trailers", self.exports.response_trailers.clone()),
                };
                (name, self.call(name, func, id, (id, count))?)
            }
        };
        // A missing callback is Continue.
        let action = action.unwrap_or(0);
        let Some(stream) = self.store.data_mut().stream_mut(id) else { return Ok(()) };
        let flow = if dir == Dir::Request { &mut stream.request } else { &mut stream.response };
        flow.body_eos_callback = false;
        match name {
            "proxy_on_request_headers" | "proxy_on_response_headers" => match action {
                // Continue, ContinueAndEndStream
                0 | 2 => flow.release(),
                1 if allow_stop_iteration => flow.stopped = Some(Stop::Iteration),
                _ => flow.stopped = Some(Stop::All),
            },
            "proxy_on_request_body" | "proxy_on_response_body" => match action {
                0 => flow.release(),
                // StopIterationNoBuffer: the chunk is not kept.
                3 => {
                    flow.buffer.clear();
                    flow.buffer_open = false;
                    flow.buffering = false;
                    flow.stopped.get_or_insert(Stop::Iteration);
                }
                // StopIterationAndBuffer (Pause), StopIterationAndWatermark.
                _ => {
                    flow.buffering = true;
                    flow.stopped.get_or_insert(Stop::Iteration);
                }
            },
            _ => match action {
                0 => flow.release(),
                _ => {
                    flow.stopped.get_or_insert(Stop::Iteration);
                }
            },
        }
        Ok(())
    }

    fn deliver_event(&mut self, event: Event) -> Result<(), Trap> {
        match event {
            Event::HttpCallDone { token, reply } => self.deliver_http_call(token, reply),
            Event::QueueReady { context_id, queue_id } => {
                let func = self.exports.queue_ready.clone();
                self.call("proxy_on_queue_ready", func, context_id, (context_id, queue_id)).map(|_| ())
            }
        }
    }

    fn deliver_http_call(&mut self, token: u32, reply: HttpCallReply) -> Result<(), Trap> {
        // A call whose context is gone was cancelled with it, as Envoy does.
        let Some(call) = self.in_flight.remove(&token) else { return Ok(()) };
        let context_id = call.context_id;
        if context_id != ROOT_CONTEXT_ID && !self.store.data().streams.contains_key(&context_id) {
            return Ok(());
        }
        let (response, status) = match reply {
            HttpCallReply::Response { status, headers, body } => {
                let mut map = Headers::new();
                map.add(":status", status.to_string().as_bytes());
                for (k, v) in &headers {
                    map.add(k, v);
                }
                (Some(CallResponse { headers: map, body, trailers: Headers::new() }), (0, Vec::new()))
            }
            HttpCallReply::Timeout => {
                let body = b"upstream request timeout".to_vec();
                let headers = Headers::from_pairs([
                    (":status", "504"),
                    ("content-length", &body.len().to_string()),
                    ("content-type", "text/plain"),
                ]);
                (Some(CallResponse { headers, body, trailers: Headers::new() }), (0, Vec::new()))
            }
            HttpCallReply::Reset => (None, (Status::BrokenConnection as u32, b"reset".to_vec())),
            HttpCallReply::Hold => {
                self.in_flight.insert(token, call);
                self.held.insert(token);
                return Ok(());
            }
        };
        let (headers, body, trailers) = response.as_ref().map_or((0, 0, 0), |r| {
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            (count(r.headers.len()), count(r.body.len()), count(r.trailers.len()))
        });
        {
            let state = self.store.data_mut();
            state.call_response = response;
            state.call_status = status;
        }
        let func = self.exports.http_call_response.clone();
        let result = self.call("proxy_on_http_call_response", func, context_id, (context_id, token, headers, body, trailers));
        let state = self.store.data_mut();
        state.call_response = None;
        state.call_status = (0, Vec::new());
        result.map(|_| ())
    }

    /// Ends a stream: records its outcome, then `proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`; its unanswered HTTP calls are cancelled.
    fn finish(&mut self, id: u32, end: End) -> Result<(), Trap> {
        let Some(stream) = self.store.data_mut().stream_mut(id) else { return Ok(()) };
        let outcome = match end {
            End::Reset(details) => Outcome::Reset { context_id: id, details },
            End::Completed => completed_outcome(stream),
        };
        stream.request.close_maps();
        stream.response.close_maps();
        stream.request.buffer_open = false;
        stream.response.buffer_open = false;
        self.outcomes.insert(id, outcome);

        let done = self.exports.done.clone();
        self.call("proxy_on_done", done, id, id)?;
        if let Some(stream) = self.store.data_mut().stream_mut(id) {
            stream.access_log_phase = true;
        }
        let log = self.exports.log.clone();
        self.call("proxy_on_log", log, id, id)?;
        if let Some(stream) = self.store.data_mut().stream_mut(id) {
            stream.access_log_phase = false;
        }
        let delete = self.exports.delete.clone();
        self.call("proxy_on_delete", delete, id, id)?;
        self.store.data_mut().streams.remove(&id);
        let cancelled: Vec<u32> = self.in_flight.iter().filter(|(_, c)| c.context_id == id).map(|(t, _)| *t).collect();
        for token in cancelled {
            self.in_flight.remove(&token);
            self.held.remove(&token);
            self.deadlines.remove(&token);
        }
        Ok(())
    }

    /// A trap fails the VM: every live stream ends as trapped (Envoy answers them 503).
    pub(crate) fn fail(&mut self, trap: &Trap) {
        self.failure = Some(trap.clone());
        let streams = std::mem::take(&mut self.store.data_mut().streams);
        for id in streams.into_keys() {
            self.outcomes.insert(
                id,
                Outcome::Trapped { context_id: id, function: trap.function.clone(), message: trap.message.clone() },
            );
        }
        self.in_flight.clear();
        self.held.clear();
        self.deadlines.clear();
        self.store.data_mut().events.clear();
    }
}

/// The response headers and body Envoy builds for `sendLocalReply`: `:status`, the plugin's
/// headers, then `content-length` and (unless set) `content-type: text/plain` for a body.
fn local_reply_message(reply: &LocalReplyRequest) -> (Headers, Vec<u8>) {
    let mut headers = Headers::new();
    headers.add(":status", reply.status.to_string().as_bytes());
    for (k, v) in reply.headers.iter() {
        headers.add(k, v);
    }
    if !reply.body.is_empty() {
        headers.replace("content-length", reply.body.len().to_string().as_bytes());
        if !headers.contains("content-type") {
            headers.add("content-type", b"text/plain");
        }
    }
    (headers, reply.body.clone())
}

fn local_reply_inputs(reply: &LocalReplyRequest) -> Vec<Input> {
    let (headers, body) = local_reply_message(reply);
    if body.is_empty() {
        vec![Input::Headers(headers, true)]
    } else {
        vec![Input::Headers(headers, false), Input::Data(body, true)]
    }
}

fn completed_outcome(stream: &Stream) -> Outcome {
    let out = &stream.response.out;
    let headers = out.headers.clone().unwrap_or_default();
    let status = headers.get_str(":status").and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    match &stream.local_reply {
        Some(reply) => Outcome::LocalReply(LocalReply {
            context_id: stream.id,
            status,
            headers,
            body: out.body.clone(),
            details: reply.details.clone(),
            grpc_status: reply.grpc_status,
            upstream_request_headers: stream.request.out.headers.clone(),
            filter_state: stream.filter_state.clone(),
        }),
        None => Outcome::Forwarded(Forwarded {
            context_id: stream.id,
            request_headers: stream.request.out.headers.clone().unwrap_or_default(),
            request_body: stream.request.out.body.clone(),
            request_trailers: stream.request.out.trailers.clone(),
            response: Response { status, headers, body: out.body.clone(), trailers: out.trailers.clone() },
            filter_state: stream.filter_state.clone(),
        }),
    }
}
