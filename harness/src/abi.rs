//! The `env` host functions of proxy-wasm ABI 0.2.1, with Envoy's status codes and semantics.
//!
//! Every pointer the plugin passes is bounds-checked: a bad one gets `InvalidMemoryAccess`,
//! never a host panic. Effects on the stream (local reply, resume, reset) are recorded and
//! applied by the driver after the callback returns, as Envoy defers them.

use wasmtime::{Caller, Linker};

use crate::http::{HttpCall, LocalReplyRequest, Stream};
use crate::map::{self, Headers};
use crate::state::{Event, HostState, Queue, Status};
use crate::{LogLevel, MetricType};

pub(crate) type C<'a> = Caller<'a, HostState>;

/// Why a host call ends early: a status for the plugin, or a trap (from the plugin's allocator).
pub(crate) enum Fail {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(status: Status) -> Self {
        Fail::Status(status)
    }
}

impl From<wasmtime::Error> for Fail {
    fn from(error: wasmtime::Error) -> Self {
        Fail::Trap(error)
    }
}

pub(crate) type R<T = ()> = Result<T, Fail>;

/// The value a host function returns to the plugin.
pub(crate) fn finish(result: R) -> wasmtime::Result<u32> {
    match result {
        Ok(()) => Ok(Status::Ok as u32),
        Err(Fail::Status(status)) => Ok(status as u32),
        Err(Fail::Trap(error)) => Err(error),
    }
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub(crate) fn read(c: &C, ptr: u32, len: u32) -> R<Vec<u8>> {
    let memory = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(Status::InvalidMemoryAccess)?;
    Ok(memory.data(c).get(start..end).ok_or(Status::InvalidMemoryAccess)?.to_vec())
}

pub(crate) fn write(c: &mut C, ptr: u32, bytes: &[u8]) -> R {
    let memory = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let start = ptr as usize;
    let end = start.checked_add(bytes.len()).ok_or(Status::InvalidMemoryAccess)?;
    memory.data_mut(c).get_mut(start..end).ok_or(Status::InvalidMemoryAccess)?.copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(c: &mut C, ptr: u32, value: u32) -> R {
    write(c, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(c: &mut C, ptr: u32, value: u64) -> R {
    write(c, ptr, &value.to_le_bytes())
}

/// Returns bytes to the plugin the way Envoy does: memory from the plugin's own allocator
/// (`proxy_on_memory_allocate`), pointer and size written to the out-parameters; nothing to
/// return is a null pointer and size 0.
pub(crate) fn copy_out(c: &mut C, bytes: &[u8], ptr_ptr: u32, size_ptr: u32) -> R {
    if bytes.is_empty() {
        write_u32(c, ptr_ptr, 0)?;
        return write_u32(c, size_ptr, 0);
    }
    let alloc = c.data().alloc.clone().ok_or(Status::InvalidMemoryAccess)?;
    let len = u32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    c.data_mut().count_call("proxy_on_memory_allocate");
    let ptr = alloc.call(&mut *c, len)?;
    if ptr == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    write(c, ptr, bytes)?;
    write_u32(c, ptr_ptr, ptr)?;
    write_u32(c, size_ptr, len)
}

fn parse_map(c: &mut C, bytes: &[u8], what: &str) -> Headers {
    // Envoy reads a malformed map as an empty one; say so, since it is always a plugin bug.
    map::deserialize_headers(bytes).unwrap_or_else(|e| {
        c.data_mut().note(format!("{what}: {e}; treated as an empty map, as Envoy does"));
        Headers::new()
    })
}

// ---- header maps -------------------------------------------------------------------------

const MAP_REQUEST_HEADERS: u32 = 0;
const MAP_REQUEST_TRAILERS: u32 = 1;
const MAP_RESPONSE_HEADERS: u32 = 2;
const MAP_RESPONSE_TRAILERS: u32 = 3;
const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const MAP_HTTP_CALL_RESPONSE_TRAILERS: u32 = 7;

/// The map as the plugin may read it now (`None`: Envoy has no map there).
fn readable_map(state: &mut HostState, map_type: u32) -> R<Option<Headers>> {
    if map_type > MAP_HTTP_CALL_RESPONSE_TRAILERS {
        return Err(Status::BadArgument.into());
    }
    if map_type == MAP_HTTP_CALL_RESPONSE_HEADERS {
        return Ok(state.call_response.as_ref().map(|r| r.headers.clone()));
    }
    if map_type == MAP_HTTP_CALL_RESPONSE_TRAILERS {
        return Ok(state.call_response.as_ref().map(|r| r.trailers.clone()));
    }
    let Some(stream) = state.effective_stream() else { return Ok(None) };
    if stream.access_log_phase {
        // proxy_on_log sees the final request and response headers.
        return Ok(match map_type {
            MAP_REQUEST_HEADERS => Some(stream.current_request_headers().clone()),
            MAP_RESPONSE_HEADERS => stream.response.out.headers.clone(),
            MAP_RESPONSE_TRAILERS => stream.response.out.trailers.clone(),
            _ => None,
        });
    }
    Ok(match map_type {
        MAP_REQUEST_HEADERS => stream.request.headers_open.then(|| stream.request.headers.clone()),
        MAP_REQUEST_TRAILERS => if stream.request.trailers_open { stream.request.trailers.clone() } else { None },
        MAP_RESPONSE_HEADERS => stream.response.headers_open.then(|| stream.response.headers.clone()),
        MAP_RESPONSE_TRAILERS => if stream.response.trailers_open { stream.response.trailers.clone() } else { None },
        _ => None,
    })
}

/// Runs `edit` on a map the plugin may change now; `BadArgument` where Envoy has none.
fn edit_map(state: &mut HostState, map_type: u32, edit: impl FnOnce(&mut Headers)) -> R {
    let stream = state.effective_stream().ok_or(Status::BadArgument)?;
    if stream.access_log_phase {
        return Err(Status::BadArgument.into());
    }
    let flow = match map_type {
        MAP_REQUEST_HEADERS | MAP_REQUEST_TRAILERS => &mut stream.request,
        MAP_RESPONSE_HEADERS | MAP_RESPONSE_TRAILERS => &mut stream.response,
        _ => return Err(Status::BadArgument.into()),
    };
    if map_type == MAP_REQUEST_HEADERS || map_type == MAP_RESPONSE_HEADERS {
        if !flow.headers_open {
            return Err(Status::BadArgument.into());
        }
        edit(&mut flow.headers);
        return Ok(());
    }
    // Trailers may also be added from the last body callback of a stream that has none.
    if !flow.trailers_open && flow.body_eos_callback && flow.trailers.is_none() {
        flow.trailers = Some(Headers::new());
        flow.trailers_open = true;
    }
    match (&mut flow.trailers, flow.trailers_open) {
        (Some(trailers), true) => {
            edit(trailers);
            Ok(())
        }
        _ => Err(Status::BadArgument.into()),
    }
}

fn get_header_map_pairs(c: &mut C, map_type: u32, ptr_ptr: u32, size_ptr: u32) -> R {
    let headers = readable_map(c.data_mut(), map_type)?.unwrap_or_default();
    let bytes = if headers.is_empty() { Vec::new() } else { headers.serialize() };
    copy_out(c, &bytes, ptr_ptr, size_ptr)
}

fn set_header_map_pairs(c: &mut C, map_type: u32, ptr: u32, size: u32) -> R {
    let bytes = read(c, ptr, size)?;
    let pairs = parse_map(c, &bytes, "proxy_set_header_map_pairs");
    edit_map(c.data_mut(), map_type, |headers| *headers = pairs)
}

fn get_header_map_value(c: &mut C, map_type: u32, key_ptr: u32, key_len: u32, ptr_ptr: u32, size_ptr: u32) -> R {
    let key = read(c, key_ptr, key_len)?;
    let access_log = c.data_mut().effective_stream().is_some_and(|s| s.access_log_phase);
    let Some(headers) = readable_map(c.data_mut(), map_type)? else {
        return Err(if access_log { Status::NotFound } else { Status::BadArgument }.into());
    };
    let value = headers.get(&String::from_utf8_lossy(&key)).ok_or(Status::NotFound)?.to_vec();
    copy_out(c, &value, ptr_ptr, size_ptr)
}

fn add_header_map_value(c: &mut C, map_type: u32, key_ptr: u32, key_len: u32, value_ptr: u32, value_len: u32) -> R {
    let key = read(c, key_ptr, key_len)?;
    let value = read(c, value_ptr, value_len)?;
    edit_map(c.data_mut(), map_type, |h| h.add(&String::from_utf8_lossy(&key), &value))
}

fn replace_header_map_value(c: &mut C, map_type: u32, key_ptr: u32, key_len: u32, value_ptr: u32, value_len: u32) -> R {
    let key = read(c, key_ptr, key_len)?;
    let value = read(c, value_ptr, value_len)?;
    edit_map(c.data_mut(), map_type, |h| h.replace(&String::from_utf8_lossy(&key), &value))
}

fn remove_header_map_value(c: &mut C, map_type: u32, key_ptr: u32, key_len: u32) -> R {
    let key = read(c, key_ptr, key_len)?;
    edit_map(c.data_mut(), map_type, |h| h.remove(&String::from_utf8_lossy(&key)))
}

fn get_header_map_size(c: &mut C, map_type: u32, size_ptr: u32) -> R {
    // Envoy answers from the mutable map only (`byteSize`: keys plus values).
    let mut size = None;
    edit_map(c.data_mut(), map_type, |h| size = Some(h.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()))?;
    let size = u32::try_from(size.unwrap_or(0)).unwrap_or(u32::MAX);
    write_u32(c, size_ptr, size)
}

// ---- buffers -----------------------------------------------------------------------------

const BUFFER_REQUEST_BODY: u32 = 0;
const BUFFER_RESPONSE_BODY: u32 = 1;
const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
const BUFFER_VM_CONFIGURATION: u32 = 6;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const BUFFER_MAX: u32 = 8;

fn body_flow(state: &mut HostState, buffer_type: u32) -> Option<&mut crate::http::Flow> {
    let stream = state.effective_stream()?;
    let flow = if buffer_type == BUFFER_REQUEST_BODY { &mut stream.request } else { &mut stream.response };
    flow.buffer_open.then_some(flow)
}

fn buffer_contents(state: &mut HostState, buffer_type: u32) -> R<Vec<u8>> {
    match buffer_type {
        BUFFER_REQUEST_BODY | BUFFER_RESPONSE_BODY => {
            Ok(body_flow(state, buffer_type).ok_or(Status::NotFound)?.buffer.clone())
        }
        BUFFER_HTTP_CALL_RESPONSE_BODY => Ok(state.call_response.as_ref().ok_or(Status::NotFound)?.body.clone()),
        BUFFER_VM_CONFIGURATION => Ok(state.vm_config.clone()),
        BUFFER_PLUGIN_CONFIGURATION => Ok(state.plugin_config.clone().ok_or(Status::NotFound)?),
        t if t <= BUFFER_MAX => Err(Status::NotFound.into()),
        _ => Err(Status::BadArgument.into()),
    }
}

fn get_buffer_bytes(c: &mut C, buffer_type: u32, start: u32, max_size: u32, ptr_ptr: u32, size_ptr: u32) -> R {
    let data = buffer_contents(c.data_mut(), buffer_type)?;
    let start = start as usize;
    if start > data.len() {
        return Err(Status::BadArgument.into());
    }
    let end = start.saturating_add(max_size as usize).min(data.len());
    let slice = data.get(start..end).unwrap_or_default();
    copy_out(c, slice, ptr_ptr, size_ptr)
}

fn get_buffer_status(c: &mut C, buffer_type: u32, size_ptr: u32, flags_ptr: u32) -> R {
    let len = buffer_contents(c.data_mut(), buffer_type)?.len();
    write_u32(c, size_ptr, u32::try_from(len).unwrap_or(u32::MAX))?;
    write_u32(c, flags_ptr, 0)
}

/// Envoy's `Buffer::copyFrom`: prepend (start 0, size 0), replace all (start 0, size >= length),
/// append (start >= length); anything else is `BadArgument`.
fn set_buffer_bytes(c: &mut C, buffer_type: u32, start: u32, size: u32, ptr: u32, len: u32) -> R {
    let data = read(c, ptr, len)?;
    match buffer_type {
        BUFFER_REQUEST_BODY | BUFFER_RESPONSE_BODY => {
            let flow = body_flow(c.data_mut(), buffer_type).ok_or(Status::NotFound)?;
            let (start, size, current) = (start as usize, size as usize, flow.buffer.len());
            if start == 0 && size == 0 {
                flow.buffer.splice(0..0, data);
            } else if start == 0 && size >= current {
                flow.buffer = data;
            } else if start >= current {
                flow.buffer.extend_from_slice(&data);
            } else {
                return Err(Status::BadArgument.into());
            }
            Ok(())
        }
        BUFFER_HTTP_CALL_RESPONSE_BODY | BUFFER_VM_CONFIGURATION | BUFFER_PLUGIN_CONFIGURATION => {
            Err(Status::BadArgument.into())
        }
        t if t <= BUFFER_MAX => Err(Status::NotFound.into()),
        _ => Err(Status::BadArgument.into()),
    }
}

// ---- properties --------------------------------------------------------------------------

/// Request properties Envoy derives from the request headers.
fn derived_property(stream: &Stream, path: &[&[u8]]) -> Option<Vec<u8>> {
    let headers = stream.current_request_headers();
    let path_header = headers.get(":path").unwrap_or_default();
    let (url_path, query) = match path_header.iter().position(|b| *b == b'?') {
        Some(q) => (path_header.get(..q)?, path_header.get(q + 1..)?),
        None => (path_header, &b""[..]),
    };
    match path {
        [b"request", b"path"] => Some(path_header.to_vec()),
        [b"request", b"url_path"] => Some(url_path.to_vec()),
        [b"request", b"query"] => Some(query.to_vec()),
        [b"request", b"host"] => headers.get(":authority").map(<[u8]>::to_vec),
        [b"request", b"scheme"] => headers.get(":scheme").map(<[u8]>::to_vec),
        [b"request", b"method"] => headers.get(":method").map(<[u8]>::to_vec),
        [b"request", b"id"] => headers.get("x-request-id").map(<[u8]>::to_vec),
        [b"request", b"headers", name] => headers.get(&String::from_utf8_lossy(name)).map(<[u8]>::to_vec),
        _ => None,
    }
}

fn get_property(c: &mut C, path_ptr: u32, path_len: u32, ptr_ptr: u32, size_ptr: u32) -> R {
    let path = read(c, path_ptr, path_len)?;
    let value = {
        let state = c.data_mut();
        let effective = state.effective;
        let stream = state.streams.get(&effective);
        let segments: Vec<&[u8]> = path.split(|b| *b == 0).collect();
        stream
            .and_then(|s| s.properties.get(&path).cloned())
            .or_else(|| state.properties.get(&path).cloned())
            .or_else(|| stream.and_then(|s| derived_property(s, &segments)))
            .ok_or(Status::NotFound)?
    };
    copy_out(c, &value, ptr_ptr, size_ptr)
}

fn set_property(c: &mut C, path_ptr: u32, path_len: u32, value_ptr: u32, value_len: u32) -> R {
    let path = read(c, path_ptr, path_len)?;
    let value = read(c, value_ptr, value_len)?;
    // Envoy keeps these in the stream's filter state; a root context has none.
    let stream = c.data_mut().effective_stream().ok_or(Status::NotFound)?;
    let dotted = path.split(|b| *b == 0).map(String::from_utf8_lossy).collect::<Vec<_>>().join(".");
    stream.filter_state.insert(dotted, value.clone());
    stream.properties.insert(path, value);
    Ok(())
}

// ---- stream control ----------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    c: &mut C,
    status: u32,
    details_ptr: u32,
    details_len: u32,
    body_ptr: u32,
    body_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    grpc_status: i32,
) -> R {
    let details = read(c, details_ptr, details_len)?;
    let body = read(c, body_ptr, body_len)?;
    let raw_headers = read(c, headers_ptr, headers_len)?;
    let headers = parse_map(c, &raw_headers, "proxy_send_local_response headers");
    // Envoy replaces whitespace in details with '_' (they end up in access logs).
    let details: String =
        String::from_utf8_lossy(&details).chars().map(|ch| if ch.is_whitespace() { '_' } else { ch }).collect();
    let grpc_status = (0..=16).contains(&grpc_status).then_some(grpc_status);
    if let Some(stream) = c.data_mut().effective_stream() {
        // Envoy queues the reply until the callback returns; a second one finds the stream done.
        if stream.pending_local_reply.is_none() && stream.local_reply.is_none() {
            stream.pending_local_reply = Some(LocalReplyRequest { status, details, body, headers, grpc_status });
        }
    }
    Ok(())
}

fn continue_stream(c: &mut C, stream_type: u32) -> R {
    let stream = c.data_mut().effective_stream();
    match stream_type {
        0 => {
            if let Some(s) = stream {
                s.continue_request = true;
                s.request.close_maps();
            }
            Ok(())
        }
        1 => {
            if let Some(s) = stream {
                s.continue_response = true;
                s.response.close_maps();
            }
            Ok(())
        }
        2 => Ok(()),
        3 => Err(Status::Unimplemented.into()),
        _ => Err(Status::BadArgument.into()),
    }
}

fn close_stream(c: &mut C, stream_type: u32) -> R {
    match stream_type {
        0 | 1 => {
            if let Some(s) = c.data_mut().effective_stream() {
                s.reset.get_or_insert_with(|| "wasm_close_stream".to_string());
            }
            Ok(())
        }
        2 | 3 => Ok(()),
        _ => Err(Status::BadArgument.into()),
    }
}

fn set_effective_context(c: &mut C, context_id: u32) -> R {
    let state = c.data_mut();
    if context_id == state.root_id || state.streams.contains_key(&context_id) {
        state.effective = context_id;
        Ok(())
    } else {
        Err(Status::BadArgument.into())
    }
}

// ---- HTTP calls --------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn http_call(
    c: &mut C,
    upstream_ptr: u32,
    upstream_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    body_ptr: u32,
    body_len: u32,
    trailers_ptr: u32,
    trailers_len: u32,
    timeout_ms: u32,
    token_ptr: u32,
) -> R {
    let upstream = read(c, upstream_ptr, upstream_len)?;
    let raw_headers = read(c, headers_ptr, headers_len)?;
    let body = read(c, body_ptr, body_len)?;
    let raw_trailers = read(c, trailers_ptr, trailers_len)?;
    let cluster = String::from_utf8_lossy(&upstream).into_owned();
    // Envoy takes the timeout as a signed int.
    if i32::try_from(timeout_ms).is_err() {
        return Err(Status::BadArgument.into());
    }
    if !c.data().any_cluster && !c.data().clusters.contains(&cluster) {
        c.data_mut().note(format!("proxy_http_call to unknown cluster `{cluster}`: BadArgument, as in Envoy"));
        return Err(Status::BadArgument.into());
    }
    let mut headers = parse_map(c, &raw_headers, "proxy_http_call headers");
    let trailers = parse_map(c, &raw_trailers, "proxy_http_call trailers");
    if [":path", ":method", ":authority"].iter().any(|h| !headers.contains(h)) {
        c.data_mut().note(format!("proxy_http_call to `{cluster}` without :method, :path or :authority: BadArgument"));
        return Err(Status::BadArgument.into());
    }
    if !body.is_empty() {
        headers.replace("content-length", body.len().to_string().as_bytes());
    }
    let state = c.data_mut();
    let token = state.next_token;
    state.next_token = state.next_token.checked_add(1).unwrap_or(1);
    write_u32(c, token_ptr, token)?;
    let state = c.data_mut();
    let call = HttpCall {
        token,
        context_id: state.effective,
        cluster,
        headers,
        body,
        trailers,
        timeout_ms,
        dispatched_at_ns: state.clock.realtime_ns,
    };
    state.new_calls.push(call);
    Ok(())
}

fn get_status(c: &mut C, code_ptr: u32, message_ptr_ptr: u32, message_size_ptr: u32) -> R {
    let (code, message) = c.data().call_status.clone();
    write_u32(c, code_ptr, code)?;
    copy_out(c, &message, message_ptr_ptr, message_size_ptr)
}

// ---- shared data and queues ----------------------------------------------------------------

fn get_shared_data(c: &mut C, key_ptr: u32, key_len: u32, ptr_ptr: u32, size_ptr: u32, cas_ptr: u32) -> R {
    let key = read(c, key_ptr, key_len)?;
    let (value, cas) = c.data().shared.get(&key).cloned().ok_or(Status::NotFound)?;
    copy_out(c, &value, ptr_ptr, size_ptr)?;
    write_u32(c, cas_ptr, cas)
}

/// Envoy's CAS: a non-zero `cas` must match an existing entry's; a missing key is created
/// whatever the `cas`.
fn set_shared_data(c: &mut C, key_ptr: u32, key_len: u32, value_ptr: u32, value_len: u32, cas: u32) -> R {
    let key = read(c, key_ptr, key_len)?;
    let value = read(c, value_ptr, value_len)?;
    let state = c.data_mut();
    if let Some((_, current)) = state.shared.get(&key) {
        if cas != 0 && cas != *current {
            return Err(Status::CasMismatch.into());
        }
    }
    let next = state.next_cas();
    state.shared.insert(key, (value, next));
    Ok(())
}

fn register_shared_queue(c: &mut C, name_ptr: u32, name_len: u32, id_ptr: u32) -> R {
    let name = String::from_utf8_lossy(&read(c, name_ptr, name_len)?).into_owned();
    let state = c.data_mut();
    let index = match state.queues.iter().position(|q| q.name == name) {
        Some(index) => index,
        None => {
            let owner_context = state.root_id;
            state.queues.push(Queue { name, owner_context, items: Default::default() });
            state.queues.len() - 1
        }
    };
    write_u32(c, id_ptr, queue_id(index))
}

fn queue_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

fn queue_mut(state: &mut HostState, id: u32) -> Option<&mut Queue> {
    state.queues.get_mut((id as usize).checked_sub(1)?)
}

fn resolve_shared_queue(c: &mut C, vm_ptr: u32, vm_len: u32, name_ptr: u32, name_len: u32, id_ptr: u32) -> R {
    let vm_id = read(c, vm_ptr, vm_len)?;
    let name = read(c, name_ptr, name_len)?;
    let state = c.data();
    if vm_id != state.vm_id.as_bytes() {
        return Err(Status::NotFound.into());
    }
    let index = state.queues.iter().position(|q| q.name.as_bytes() == name.as_slice()).ok_or(Status::NotFound)?;
    write_u32(c, id_ptr, queue_id(index))
}

fn enqueue_shared_queue(c: &mut C, id: u32, value_ptr: u32, value_len: u32) -> R {
    let value = read(c, value_ptr, value_len)?;
    let state = c.data_mut();
    let queue = queue_mut(state, id).ok_or(Status::NotFound)?;
    queue.items.push_back(value);
    let context_id = queue.owner_context;
    state.events.push_back(Event::QueueReady { context_id, queue_id: id });
    Ok(())
}

fn dequeue_shared_queue(c: &mut C, id: u32, ptr_ptr: u32, size_ptr: u32) -> R {
    let queue = queue_mut(c.data_mut(), id).ok_or(Status::NotFound)?;
    let item = queue.items.pop_front().ok_or(Status::Empty)?;
    copy_out(c, &item, ptr_ptr, size_ptr)
}

// ---- metrics -----------------------------------------------------------------------------

fn metric_kind(id: u32) -> Option<MetricType> {
    match id & 3 {
        0 => Some(MetricType::Counter),
        1 => Some(MetricType::Gauge),
        2 => Some(MetricType::Histogram),
        _ => None,
    }
}

fn define_metric(c: &mut C, kind: u32, name_ptr: u32, name_len: u32, id_ptr: u32) -> R {
    let kind = match kind {
        0 => MetricType::Counter,
        1 => MetricType::Gauge,
        2 => MetricType::Histogram,
        _ => return Err(Status::BadArgument.into()),
    };
    let name = String::from_utf8_lossy(&read(c, name_ptr, name_len)?).into_owned();
    let id = c.data_mut().metrics.define(kind, &name);
    write_u32(c, id_ptr, id)
}

fn increment_metric(c: &mut C, id: u32, offset: i64) -> R {
    let kind = metric_kind(id).ok_or(Status::BadArgument)?;
    if kind == MetricType::Histogram {
        return Err(Status::BadArgument.into());
    }
    let metric = c.data_mut().metrics.get_mut(id).ok_or(Status::NotFound)?;
    match kind {
        MetricType::Counter if offset > 0 => metric.value = metric.value.saturating_add(offset.unsigned_abs()),
        MetricType::Counter => return Err(Status::BadArgument.into()),
        _ if offset >= 0 => metric.value = metric.value.saturating_add(offset.unsigned_abs()),
        _ => metric.value = metric.value.saturating_sub(offset.unsigned_abs()),
    }
    Ok(())
}

fn record_metric(c: &mut C, id: u32, value: u64) -> R {
    let kind = metric_kind(id).ok_or(Status::NotFound)?;
    let metric = c.data_mut().metrics.get_mut(id).ok_or(Status::NotFound)?;
    match kind {
        MetricType::Counter => metric.value = metric.value.saturating_add(value),
        MetricType::Gauge => metric.value = value,
        MetricType::Histogram => {
            metric.samples.push(value);
            metric.value = metric.samples.len() as u64;
        }
    }
    Ok(())
}

fn get_metric(c: &mut C, id: u32, value_ptr: u32) -> R {
    let kind = metric_kind(id).ok_or(Status::BadArgument)?;
    if kind == MetricType::Histogram {
        return Err(Status::BadArgument.into());
    }
    let value = c.data_mut().metrics.get_mut(id).ok_or(Status::NotFound)?.value;
    write_u64(c, value_ptr, value)
}

// ---- registration ------------------------------------------------------------------------

/// Adds every `env` function of ABI 0.2.1 to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    const ENV: &str = "env";
    linker.func_wrap(ENV, "proxy_log", |mut c: C, level: u32, ptr: u32, len: u32| {
        c.data_mut().count_call("proxy_log");
        finish((|| {
            let level = LogLevel::from_u32(level).ok_or(Status::BadArgument)?;
            let message = String::from_utf8_lossy(&read(&c, ptr, len)?).into_owned();
            c.data_mut().log(level, message);
            Ok(())
        })())
    })?;
    linker.func_wrap(ENV, "proxy_get_log_level", |mut c: C, ptr: u32| {
        c.data_mut().count_call("proxy_get_log_level");
        let level = c.data().log_level as u32;
        finish(write_u32(&mut c, ptr, level))
    })?;
    linker.func_wrap(ENV, "proxy_get_current_time_nanoseconds", |mut c: C, ptr: u32| {
        c.data_mut().count_call("proxy_get_current_time_nanoseconds");
        let now = c.data().clock.realtime_ns;
        finish(write_u64(&mut c, ptr, now))
    })?;
    linker.func_wrap(ENV, "proxy_set_tick_period_milliseconds", |mut c: C, period: u32| {
        c.data_mut().count_call("proxy_set_tick_period_milliseconds");
        let state = c.data_mut();
        state.tick_period_ms = period;
        state.next_tick_ns = state.clock.monotonic_ns.saturating_add(u64::from(period) * 1_000_000);
        finish(Ok(()))
    })?;
    linker.func_wrap(ENV, "proxy_get_buffer_bytes", |mut c: C, t: u32, start: u32, max: u32, pp: u32, sp: u32| {
        c.data_mut().count_call("proxy_get_buffer_bytes");
        finish(get_buffer_bytes(&mut c, t, start, max, pp, sp))
    })?;
    linker.func_wrap(ENV, "proxy_get_buffer_status", |mut c: C, t: u32, sp: u32, fp: u32| {
        c.data_mut().count_call("proxy_get_buffer_status");
        finish(get_buffer_status(&mut c, t, sp, fp))
    })?;
    linker.func_wrap(ENV, "proxy_set_buffer_bytes", |mut c: C, t: u32, start: u32, size: u32, p: u32, l: u32| {
        c.data_mut().count_call("proxy_set_buffer_bytes");
        finish(set_buffer_bytes(&mut c, t, start, size, p, l))
    })?;
    linker.func_wrap(ENV, "proxy_get_header_map_pairs", |mut c: C, t: u32, pp: u32, sp: u32| {
        c.data_mut().count_call("proxy_get_header_map_pairs");
        finish(get_header_map_pairs(&mut c, t, pp, sp))
    })?;
    linker.func_wrap(ENV, "proxy_set_header_map_pairs", |mut c: C, t: u32, p: u32, s: u32| {
        c.data_mut().count_call("proxy_set_header_map_pairs");
        finish(set_header_map_pairs(&mut c, t, p, s))
    })?;
    linker.func_wrap(ENV, "proxy_get_header_map_value", |mut c: C, t: u32, kp: u32, kl: u32, pp: u32, sp: u32| {
        c.data_mut().count_call("proxy_get_header_map_value");
        finish(get_header_map_value(&mut c, t, kp, kl, pp, sp))
    })?;
    linker.func_wrap(ENV, "proxy_add_header_map_value", |mut c: C, t: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
        c.data_mut().count_call("proxy_add_header_map_value");
        finish(add_header_map_value(&mut c, t, kp, kl, vp, vl))
    })?;
    linker.func_wrap(ENV, "proxy_replace_header_map_value", |mut c: C, t: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
        c.data_mut().count_call("proxy_replace_header_map_value");
        finish(replace_header_map_value(&mut c, t, kp, kl, vp, vl))
    })?;
    linker.func_wrap(ENV, "proxy_remove_header_map_value", |mut c: C, t: u32, kp: u32, kl: u32| {
        c.data_mut().count_call("proxy_remove_header_map_value");
        finish(remove_header_map_value(&mut c, t, kp, kl))
    })?;
    linker.func_wrap(ENV, "proxy_get_header_map_size", |mut c: C, t: u32, sp: u32| {
        c.data_mut().count_call("proxy_get_header_map_size");
        finish(get_header_map_size(&mut c, t, sp))
    })?;
    linker.func_wrap(ENV, "proxy_get_property", |mut c: C, p: u32, l: u32, pp: u32, sp: u32| {
        c.data_mut().count_call("proxy_get_property");
        finish(get_property(&mut c, p, l, pp, sp))
    })?;
    linker.func_wrap(ENV, "proxy_set_property", |mut c: C, p: u32, l: u32, vp: u32, vl: u32| {
        c.data_mut().count_call("proxy_set_property");
        finish(set_property(&mut c, p, l, vp, vl))
    })?;
    linker.func_wrap(
        ENV,
        "proxy_send_local_response",
        |mut c: C, status: u32, dp: u32, dl: u32, bp: u32, bl: u32, hp: u32, hl: u32, grpc: i32| {
            c.data_mut().count_call("proxy_send_local_response");
            finish(send_local_response(&mut c, status, dp, dl, bp, bl, hp, hl, grpc))
        },
    )?;
    linker.func_wrap(ENV, "proxy_continue_stream", |mut c: C, t: u32| {
        c.data_mut().count_call("proxy_continue_stream");
        finish(continue_stream(&mut c, t))
    })?;
    linker.func_wrap(ENV, "proxy_close_stream", |mut c: C, t: u32| {
        c.data_mut().count_call("proxy_close_stream");
        finish(close_stream(&mut c, t))
    })?;
    linker.func_wrap(ENV, "proxy_set_effective_context", |mut c: C, id: u32| {
        c.data_mut().count_call("proxy_set_effective_context");
        finish(set_effective_context(&mut c, id))
    })?;
    linker.func_wrap(ENV, "proxy_done", |mut c: C| {
        c.data_mut().count_call("proxy_done");
        finish(Err(Status::NotFound.into()))
    })?;
    linker.func_wrap(
        ENV,
        "proxy_http_call",
        |mut c: C, up: u32, ul: u32, hp: u32, hl: u32, bp: u32, bl: u32, tp: u32, tl: u32, timeout: u32, token: u32| {
            c.data_mut().count_call("proxy_http_call");
            finish(http_call(&mut c, up, ul, hp, hl, bp, bl, tp, tl, timeout, token))
        },
    )?;
    linker.func_wrap(ENV, "proxy_get_status", |mut c: C, cp: u32, mp: u32, ms: u32| {
        c.data_mut().count_call("proxy_get_status");
        finish(get_status(&mut c, cp, mp, ms))
    })?;
    linker.func_wrap(ENV, "proxy_get_shared_data", |mut c: C, kp: u32, kl: u32, pp: u32, sp: u32, cp: u32| {
        c.data_mut().count_call("proxy_get_shared_data");
        finish(get_shared_data(&mut c, kp, kl, pp, sp, cp))
    })?;
    linker.func_wrap(ENV, "proxy_set_shared_data", |mut c: C, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| {
        c.data_mut().count_call("proxy_set_shared_data");
        finish(set_shared_data(&mut c, kp, kl, vp, vl, cas))
    })?;
    linker.func_wrap(ENV, "proxy_register_shared_queue", |mut c: C, np: u32, nl: u32, ip: u32| {
        c.data_mut().count_call("proxy_register_shared_queue");
        finish(register_shared_queue(&mut c, np, nl, ip))
    })?;
    linker.func_wrap(ENV, "proxy_resolve_shared_queue", |mut c: C, vp: u32, vl: u32, np: u32, nl: u32, ip: u32| {
        c.data_mut().count_call("proxy_resolve_shared_queue");
        finish(resolve_shared_queue(&mut c, vp, vl, np, nl, ip))
    })?;
    linker.func_wrap(ENV, "proxy_enqueue_shared_queue", |mut c: C, id: u32, vp: u32, vl: u32| {
        c.data_mut().count_call("proxy_enqueue_shared_queue");
        finish(enqueue_shared_queue(&mut c, id, vp, vl))
    })?;
    linker.func_wrap(ENV, "proxy_dequeue_shared_queue", |mut c: C, id: u32, pp: u32, sp: u32| {
        c.data_mut().count_call("proxy_dequeue_shared_queue");
        finish(dequeue_shared_queue(&mut c, id, pp, sp))
    })?;
    linker.func_wrap(ENV, "proxy_define_metric", |mut c: C, t: u32, np: u32, nl: u32, ip: u32| {
        c.data_mut().count_call("proxy_define_metric");
        finish(define_metric(&mut c, t, np, nl, ip))
    })?;
    linker.func_wrap(ENV, "proxy_increment_metric", |mut c: C, id: u32, offset: i64| {
        c.data_mut().count_call("proxy_increment_metric");
        finish(increment_metric(&mut c, id, offset))
    })?;
    linker.func_wrap(ENV, "proxy_record_metric", |mut c: C, id: u32, value: u64| {
        c.data_mut().count_call("proxy_record_metric");
        finish(record_metric(&mut c, id, value))
    })?;
    linker.func_wrap(ENV, "proxy_get_metric", |mut c: C, id: u32, vp: u32| {
        c.data_mut().count_call("proxy_get_metric");
        finish(get_metric(&mut c, id, vp))
    })?;
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        |mut c: C, np: u32, nl: u32, _ap: u32, _al: u32, _rp: u32, _rs: u32| {
            c.data_mut().count_call("proxy_call_foreign_function");
            finish((|| {
                let name = String::from_utf8_lossy(&read(&c, np, nl)?).into_owned();
                c.data_mut().note(format!("proxy_call_foreign_function(`{name}`): NotFound, no foreign functions here"));
                Err(Status::NotFound.into())
            })())
        },
    )?;
    // No gRPC services: calls fail the way Envoy fails them for an unknown upstream.
    linker.func_wrap(
        ENV,
        "proxy_grpc_call",
        |mut c: C, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| {
            c.data_mut().count_call("proxy_grpc_call");
            finish(Err(Status::ParseFailure.into()))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_stream",
        |mut c: C, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| {
            c.data_mut().count_call("proxy_grpc_stream");
            finish(Err(Status::ParseFailure.into()))
        },
    )?;
    linker.func_wrap(ENV, "proxy_grpc_send", |mut c: C, _: u32, _: u32, _: u32, _: u32| {
        c.data_mut().count_call("proxy_grpc_send");
        finish(Err(Status::NotFound.into()))
    })?;
    linker.func_wrap(ENV, "proxy_grpc_cancel", |mut c: C, _: u32| {
        c.data_mut().count_call("proxy_grpc_cancel");
        finish(Err(Status::NotFound.into()))
    })?;
    linker.func_wrap(ENV, "proxy_grpc_close", |mut c: C, _: u32| {
        c.data_mut().count_call("proxy_grpc_close");
        finish(Err(Status::NotFound.into()))
    })?;
    Ok(())
}
