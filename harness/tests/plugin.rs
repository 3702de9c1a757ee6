//! The host end to end, with the Rust test plugin (harness/test-plugin).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{plugin, plugin_with, test_plugin};
use mcp_guard_harness::{Harness, HarnessError, HttpCallReply, LogLevel, Options, Outcome, UpstreamResponse};

fn forwarded(outcome: &Outcome) -> &mcp_guard_harness::Forwarded {
    outcome.as_forwarded().unwrap_or_else(|| panic!("expected forwarded, got {outcome:?}"))
}

fn local_reply(outcome: &Outcome) -> &mcp_guard_harness::LocalReply {
    outcome.as_local_reply().unwrap_or_else(|| panic!("expected a local reply, got {outcome:?}"))
}

fn logged(h: &Harness, text: &str) -> bool {
    h.logs().iter().any(|l| l.message.contains(text))
}

#[test]
fn a_plain_request_is_forwarded_with_the_plugin_changes_both_ways() {
    let mut h = plugin();
    let outcome = h
        .request()
        .method("GET")
        .path("/status?x=1")
        .authority("mcp.example.com")
        .header("Accept", "application/json")
        .upstream_response(200, &[("content-type", "text/plain")], "hello")
        .send()
        .unwrap();
    let f = forwarded(&outcome);
    assert_eq!(f.header("x-plugin").as_deref(), Some("seen"));
    assert_eq!(f.header("accept").as_deref(), Some("application/json"));
    assert_eq!(f.header(":authority").as_deref(), Some("mcp.example.com"));
    assert_eq!(f.response.status, 200);
    assert_eq!(f.response.header("x-plugin-response").as_deref(), Some("yes"));
    assert_eq!(f.response.body, b"hello");
    assert!(logged(&h, "request headers: 5 end_of_stream=true"), "{}", h.log_text());
    assert!(logged(&h, &format!("on_log {} status=200", f.context_id)), "{}", h.log_text());
}

#[test]
fn configuration_refusal_carries_the_plugin_log() {
    let mut h = Harness::load(test_plugin()).unwrap();
    let err = h.configure("reject").unwrap_err();
    match &err {
        HarnessError::ConfigureRejected { logs } => {
            assert!(logs.iter().any(|l| l.level == LogLevel::Error && l.message.contains("rejected on purpose")), "{logs:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("rejected on purpose"));
    assert!(matches!(h.request().send(), Err(HarnessError::NotConfigured)));
}

#[test]
fn vm_start_refusal_is_an_error() {
    let options = Options { vm_config: b"refuse".to_vec(), ..Options::default() };
    let err = Harness::load_with(test_plugin(), options).err().expect("must fail");
    assert!(matches!(&err, HarnessError::VmStartRejected { logs } if logs.iter().any(|l| l.message == "vm start: refuse")), "{err:?}");
}

#[test]
fn a_local_reply_goes_through_the_response_callbacks() {
    let mut h = plugin();
    let outcome = h.request().header("x-test-action", "reply").body("never read").send().unwrap();
    let reply = local_reply(&outcome);
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("x-reason").as_deref(), Some("nope"));
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(reply.header("content-length").as_deref(), Some("18"));
    assert_eq!(reply.body_json().unwrap()["error"], "denied");
    // Envoy passes a decoder filter's local reply through its encoder side too.
    assert_eq!(reply.header("x-plugin-response").as_deref(), Some("yes"));
    assert!(reply.upstream_request_headers.is_none());
    assert!(!logged(&h, "request body:"), "no body callback after a local reply: {}", h.log_text());
}

#[test]
fn reset_stream_ends_the_request() {
    let mut h = plugin();
    let outcome = h.request().header("x-test-action", "reset").send().unwrap();
    assert!(matches!(outcome, Outcome::Reset { .. }), "{outcome:?}");
}

#[test]
fn paused_headers_and_a_buffered_body_are_released_together() {
    let mut h = plugin();
    let outcome = h.request().method("POST").header("x-test-action", "buffer").chunks(["ab", "cd", "e"]).send().unwrap();
    let f = forwarded(&outcome);
    assert_eq!(f.request_body, b"abcde");
    // Headers were still held in the last body callback, so the plugin could change them.
    assert_eq!(f.header("x-body-len").as_deref(), Some("5"));
    for line in ["request body: 2 end_of_stream=false", "request body: 4 end_of_stream=false", "request body: 5 end_of_stream=true"] {
        assert!(logged(&h, line), "missing `{line}` in\n{}", h.log_text());
    }
    assert!(logged(&h, "request headers: 5 end_of_stream=false action=buffer"));
}

#[test]
fn a_streamed_body_is_delivered_chunk_by_chunk() {
    let mut h = plugin();
    let outcome = h.request().method("POST").header("x-test-action", "stream-body").chunks(["ab", "cd"]).send().unwrap();
    assert_eq!(forwarded(&outcome).request_body, b"abcd");
    assert!(logged(&h, "request body: 2 end_of_stream=false"));
    assert!(logged(&h, "request body: 2 end_of_stream=true"));
}

#[test]
fn the_body_can_be_refused_or_rewritten() {
    let mut h = plugin();
    let refused = h.request().method("POST").body("please deny this").send().unwrap();
    assert_eq!(local_reply(&refused).body_str(), "body denied");
    assert_eq!(refused.status(), Some(403));
    let rewritten = h.request().method("POST").body("rewrite me").send().unwrap();
    assert_eq!(forwarded(&rewritten).request_body, b"rewritten");
}

#[test]
fn trailers_are_delivered_and_can_be_changed() {
    let mut h = plugin();
    let outcome = h.request().method("POST").body("x").trailer("x-checksum", "1").send().unwrap();
    let f = forwarded(&outcome);
    let trailers = f.request_trailers.as_ref().expect("trailers");
    assert_eq!(trailers.get_str("x-checksum").as_deref(), Some("1"));
    assert_eq!(trailers.get_str("x-trailer-seen").as_deref(), Some("yes"));
    assert!(logged(&h, "request body: 1 end_of_stream=false"));
}

#[test]
fn the_response_body_can_be_rewritten() {
    let mut h = plugin();
    let outcome = h.request().header("x-test-action", "response-rewrite").upstream_response(200, &[], "original").send().unwrap();
    assert_eq!(forwarded(&outcome).response.body, b"changed by plugin");
    let chunked = UpstreamResponse { status: 201, body_chunks: vec![b"a".to_vec(), b"b".to_vec()], ..Default::default() };
    let outcome = h.request().upstream(chunked).send().unwrap();
    assert_eq!(forwarded(&outcome).response.body, b"ab");
    assert_eq!(forwarded(&outcome).response.status, 201);
}

#[test]
fn an_http_call_answered_by_the_responder_resumes_the_request() {
    let mut h = plugin();
    h.on_http_call(|call| {
        assert_eq!(call.cluster, "authz");
        assert_eq!(call.path().as_deref(), Some("/keys"));
        assert_eq!(call.timeout_ms, 5000);
        HttpCallReply::json("k1")
    });
    let outcome = h.request().header("x-test-action", "call").send().unwrap();
    assert_eq!(forwarded(&outcome).header("x-call-body").as_deref(), Some("k1"));
    assert_eq!(h.http_calls().len(), 1);
    assert!(h.pending_http_calls().is_empty());
}

#[test]
fn timeouts_and_resets_are_delivered_as_envoy_does() {
    let mut h = plugin();
    h.on_http_call(|_| HttpCallReply::Timeout);
    let outcome = h.request().header("x-test-action", "call").send().unwrap();
    assert_eq!(local_reply(&outcome).body_str(), "call answered 504: upstream request timeout");

    h.on_http_call(|_| HttpCallReply::Reset);
    let outcome = h.request().header("x-test-action", "call").send().unwrap();
    assert_eq!(local_reply(&outcome).body_str(), "call failed: 11 reset");
}

#[test]
fn a_held_call_keeps_the_request_pending_until_answered() {
    let mut h = plugin();
    let outcome = h.request().header("x-test-action", "call").send().unwrap();
    let Outcome::Pending { context_id } = outcome else { panic!("{outcome:?}") };
    let calls = h.pending_http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].context_id, context_id);
    assert_eq!(calls[0].authority().as_deref(), Some("authz.local"));
    assert!(h.outcome(context_id).unwrap().is_pending());
    h.respond_http_call(calls[0].token, HttpCallReply::json("late")).unwrap();
    let outcome = h.outcome(context_id).unwrap();
    assert_eq!(forwarded(&outcome).header("x-call-body").as_deref(), Some("late"));
    assert!(matches!(h.respond_http_call(calls[0].token, HttpCallReply::json("again")), Err(HarnessError::UnknownHttpCall { .. })));
}

#[test]
fn a_held_call_times_out_when_time_passes() {
    let mut h = plugin();
    let context_id = h.request().header("x-test-action", "call").send().unwrap().context_id();
    h.elapse(Duration::from_secs(4)).unwrap();
    assert!(h.outcome(context_id).unwrap().is_pending());
    h.elapse(Duration::from_secs(2)).unwrap();
    assert_eq!(local_reply(&h.outcome(context_id).unwrap()).status, 503);
}

#[test]
fn cancelling_a_pending_stream_cancels_its_calls() {
    let mut h = plugin();
    let context_id = h.request().header("x-test-action", "call").send().unwrap().context_id();
    let outcome = h.cancel(context_id).unwrap();
    assert!(matches!(outcome, Outcome::Reset { .. }));
    assert!(h.pending_http_calls().is_empty());
    assert!(logged(&h, &format!("on_log {context_id}")));
}

#[test]
fn one_call_can_decide_many_waiting_streams_through_set_effective_context() {
    let mut h = plugin();
    let first = h.request().header("x-test-action", "shared-call").send().unwrap().context_id();
    let second = h.request().header("x-test-action", "shared-call").send().unwrap().context_id();
    let calls = h.pending_http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].context_id, first);
    h.respond_http_call(calls[0].token, HttpCallReply::json("{}")).unwrap();
    for id in [first, second] {
        let outcome = h.outcome(id).unwrap();
        assert_eq!(forwarded(&outcome).header("x-shared-call").as_deref(), Some("ok"), "{id}: {outcome:?}");
    }

    let third = h.request().header("x-test-action", "shared-call").send().unwrap().context_id();
    let fourth = h.request().header("x-test-action", "shared-call").send().unwrap().context_id();
    let token = h.pending_http_calls()[0].token;
    h.respond_http_call(token, HttpCallReply::response(500, &[], "")).unwrap();
    for id in [third, fourth] {
        let outcome = h.outcome(id).unwrap();
        assert_eq!(local_reply(&outcome).status, 502);
        assert_eq!(local_reply(&outcome).header("x-shared-call").as_deref(), Some("failed"));
    }
}

#[test]
fn a_call_from_the_root_context_is_answered_to_the_root_context() {
    let mut h = plugin_with("tick-call", Options::default());
    assert!(h.tick().unwrap());
    let calls = h.pending_http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].context_id, h.root_context_id());
    assert_eq!(calls[0].path().as_deref(), Some("/from-root"));
    h.respond_http_call(calls[0].token, HttpCallReply::response(204, &[], "")).unwrap();
    assert!(logged(&h, "root call answered: headers=1 status=Some(\"204\") body="), "{}", h.log_text());
    assert_eq!(h.shared_data("root-call").unwrap().0, b"204");
}

#[test]
fn http_call_argument_checks_match_envoy() {
    let mut h = plugin();
    let outcome = h.request().header("x-test-action", "bad-call").send().unwrap();
    let f = forwarded(&outcome);
    assert_eq!(f.header("x-missing-path").as_deref(), Some("Some(BadArgument)"));
    assert_eq!(f.header("x-unknown-cluster").as_deref(), Some("Some(BadArgument)"));
    assert!(h.http_calls().is_empty());
}

#[test]
fn a_panic_is_reported_with_its_message_and_fails_the_vm() {
    let mut h = plugin();
    let outcome = h.request().header("x-test-action", "panic").send().unwrap();
    match &outcome {
        Outcome::Trapped { function, message, .. } => {
            assert_eq!(function, "proxy_on_request_headers");
            assert!(message.contains("boom: the test plugin panics on purpose"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(logged(&h, "boom"), "the panic message went to stderr: {}", h.log_text());
    assert!(h.trap().is_some());
    assert!(matches!(h.request().send(), Err(HarnessError::Trap { .. })));
}

#[test]
fn shared_data_follows_envoy_cas_rules() {
    let mut h = plugin();
    let first = h.request().header("x-test-action", "shared").send().unwrap();
    // No entry yet: both sets are unconditional (cas 0).
    assert_eq!(forwarded(&first).header("x-shared").as_deref(), Some("0 Ok(()) Ok(())"));
    let (value, cas) = h.shared_data("counter").unwrap();
    assert_eq!(value, b"stale");
    let second = h.request().header("x-test-action", "shared").send().unwrap();
    // The first set uses the CAS just read; the second reuses it and must fail.
    assert_eq!(forwarded(&second).header("x-shared").as_deref(), Some("0 Ok(()) Err(CasMismatch)"));
    let (value, new_cas) = h.shared_data("counter").unwrap();
    assert_eq!(value, b"1");
    assert_ne!(new_cas, cas);
    h.set_shared_data("counter", "41");
    let third = h.request().header("x-test-action", "shared").send().unwrap();
    assert_eq!(forwarded(&third).header("x-shared").as_deref(), Some("41 Ok(()) Err(CasMismatch)"));
}

#[test]
fn properties_come_from_the_request_and_the_test() {
    let mut h = plugin();
    let with_cert = h
        .request()
        .path("/mcp?session=1")
        .header("x-test-action", "property")
        .property(&["connection", "sha256_peer_certificate_digest"], "ab12cd")
        .send()
        .unwrap();
    let f = forwarded(&with_cert);
    assert_eq!(f.header("x-cert").as_deref(), Some("ab12cd"));
    assert_eq!(f.header("x-url-path").as_deref(), Some("/mcp"));
    assert_eq!(f.header("x-plugin-name").as_deref(), Some("mcp-guard"));
    assert_eq!(f.header("x-mine").as_deref(), Some("set"));
    let without = h.request().header("x-test-action", "property").send().unwrap();
    assert_eq!(forwarded(&without).header("x-cert").as_deref(), Some("none"));
}

#[test]
fn the_clock_is_the_test_clock() {
    let mut h = plugin();
    h.set_time(1_750_000_000);
    let outcome = h.request().header("x-test-action", "time").send().unwrap();
    assert_eq!(forwarded(&outcome).header("x-time").as_deref(), Some("1750000000 1750000000"));
    h.advance(60);
    let outcome = h.request().header("x-test-action", "time").send().unwrap();
    assert_eq!(forwarded(&outcome).header("x-time").as_deref(), Some("1750000060 1750000060"));
    assert_eq!(h.now_nanos(), 1_750_000_060_000_000_000);
}

#[test]
fn randomness_is_seeded() {
    let random = |seed: u64| {
        let mut h = plugin_with("{}", Options { random_seed: seed, ..Options::default() });
        let outcome = h.request().header("x-test-action", "random").send().unwrap();
        forwarded(&outcome).header("x-random").unwrap()
    };
    assert_eq!(random(1), random(1));
    assert_ne!(random(1), random(2));
}

#[test]
fn metrics_are_readable_by_name() {
    let mut h = plugin();
    for _ in 0..3 {
        h.request().send().unwrap();
    }
    assert_eq!(h.metric("test.requests"), Some(3));
    assert_eq!(h.metric("no.such.metric"), None);
}

#[test]
fn ticks_run_only_when_a_period_is_set() {
    let mut quiet = plugin();
    assert!(!quiet.tick().unwrap());
    assert_eq!(quiet.tick_period(), None);

    let mut h = plugin_with("tick", Options::default());
    assert_eq!(h.tick_period(), Some(Duration::from_millis(500)));
    assert!(h.tick().unwrap());
    assert_eq!(h.metric("test.ticks"), Some(1));
    assert_eq!(h.elapse(Duration::from_secs(2)).unwrap(), 4);
    assert_eq!(h.metric("test.ticks"), Some(5));
}

#[test]
fn stdout_and_stderr_are_captured_as_logs() {
    let h = plugin_with("stdout", Options::default());
    assert!(h.logs().iter().any(|l| l.level == LogLevel::Info && l.message == "hello from stdout"));
    assert!(h.logs().iter().any(|l| l.level == LogLevel::Error && l.message == "hello from stderr"));
}

#[test]
fn binary_header_values_survive() {
    let mut h = plugin();
    let outcome = h.request().header_bytes("x-binary", &[0xff, 0x00, 0x80]).send().unwrap();
    let f = forwarded(&outcome);
    assert_eq!(f.request_headers.get("x-binary"), Some(&[0xff, 0x00, 0x80][..]));
    assert_eq!(f.header("x-binary-len").as_deref(), Some("3"));
}

#[test]
fn take_logs_empties_the_log() {
    let mut h = plugin();
    h.request().send().unwrap();
    assert!(!h.take_logs().is_empty());
    assert!(h.logs().is_empty());
}

#[test]
fn memory_and_fuel_are_observable() {
    let mut h = plugin_with("{}", Options { fuel: true, ..Options::default() });
    assert!(h.memory_pages() > 0);
    assert_eq!(h.memory_bytes() as u64, h.memory_pages() * 65536);
    let before = h.fuel_consumed().unwrap();
    h.request().send().unwrap();
    let per_request = h.fuel_consumed().unwrap() - before;
    assert!(per_request > 1000, "{per_request}");
    assert_eq!(plugin().fuel_consumed(), None);
}

#[test]
fn harnesses_are_independent_across_threads() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut h = plugin();
                for _ in 0..=i {
                    h.request().send().unwrap();
                }
                h.metric("test.requests")
            })
        })
        .collect();
    let counts: Vec<_> = handles.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(counts, vec![Some(1), Some(2), Some(3), Some(4)]);
}

#[test]
fn shared_queues_notify_the_root_context() {
    let mut h = plugin();
    let outcome = h.request().header("x-test-action", "queue").send().unwrap();
    assert_eq!(forwarded(&outcome).header("x-queue").as_deref(), Some("1 Some(1) None Ok(Some(\"hello\")) Ok(None)"));
    // Two enqueues, two notifications on the next turns of the event loop; the first drains
    // the item still queued, the second finds the queue empty.
    assert!(logged(&h, "queue 1 ready: for the root"), "{}", h.log_text());
}

#[test]
fn gauges_histograms_and_foreign_functions_follow_envoy() {
    let mut h = plugin();
    let outcome = h.request().header("x-test-action", "metric-kinds").send().unwrap();
    // Envoy's ids: first gauge 5, first histogram 6; counters cannot go down; histograms
    // cannot be read; no foreign functions.
    assert_eq!(
        forwarded(&outcome).header("x-metrics").as_deref(),
        Some("5 6 Err(BadArgument) Err(BadArgument) Ok(3) Some(NotFound)")
    );
    assert_eq!(h.metric("test.gauge"), Some(3));
    let histogram = h.metrics().into_iter().find(|m| m.name == "test.histogram").unwrap();
    assert_eq!(histogram.samples, vec![7]);
}

#[test]
fn without_allow_on_headers_stop_iteration_a_paused_request_gets_no_body() {
    let options = Options { allow_on_headers_stop_iteration: false, ..Options::default() };
    let mut h = plugin_with("{}", options);
    let outcome = h.request().method("POST").header("x-test-action", "buffer").body("abc").send().unwrap();
    assert!(outcome.is_pending(), "{outcome:?}");
    assert!(!logged(&h, "request body:"), "{}", h.log_text());
}

#[test]
fn after_a_resume_the_rest_of_the_request_is_still_delivered() {
    let mut h = plugin();
    h.on_http_call(|_| HttpCallReply::json("k"));
    let outcome = h.request().method("POST").header("x-test-action", "call").chunks(["ab", "c"]).send().unwrap();
    let f = forwarded(&outcome);
    assert_eq!(f.header("x-call-body").as_deref(), Some("k"));
    assert_eq!(f.request_body, b"abc");
    let messages: Vec<&str> = h.logs().iter().map(|l| l.message.as_str()).collect();
    let dispatched = messages.iter().position(|m| m.starts_with("dispatched call")).unwrap();
    let first_body = messages.iter().position(|m| m.starts_with("request body:")).unwrap();
    assert!(dispatched < first_body, "{messages:?}");
}

#[test]
fn continue_from_the_body_releases_paused_headers_and_cancels_nothing_twice() {
    let mut h = plugin();
    // The call is held; the plugin still answers Continue at the end of the body, which
    // releases the paused headers too. The stream ends, and its call is cancelled with it.
    let outcome = h.request().method("POST").header("x-test-action", "call").body("x").send().unwrap();
    let f = forwarded(&outcome);
    assert_eq!(f.header("x-call-body"), None);
    assert!(h.pending_http_calls().is_empty());
    assert_eq!(h.http_calls().len(), 1);
}

#[test]
fn calls_across_the_vm_boundary_are_counted_both_ways() {
    let mut h = plugin();
    let before = h.abi_calls().clone();
    h.request().method("GET").path("/").authority("mcp.example.com").send().unwrap();
    let after = h.abi_calls();
    let delta = |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    // Into the plugin: one stream's callbacks, once each (the test plugin exports them all).
    for export in ["proxy_on_context_create", "proxy_on_request_headers", "proxy_on_response_headers", "proxy_on_log", "proxy_on_done", "proxy_on_delete"] {
        assert_eq!(delta(export), 1, "{export}: {after:?}");
    }
    // Out of it: what the test plugin does (a counter; reads of x-test-action and x-binary,
    // and of :status in on_log; x-plugin set on the request, x-plugin-response on the answer).
    assert_eq!(delta("proxy_increment_metric"), 1, "{after:?}");
    assert_eq!(delta("proxy_get_header_map_value"), 3, "{after:?}");
    assert_eq!(delta("proxy_replace_header_map_value"), 2, "{after:?}");
    assert!(delta("proxy_log") >= 1, "{after:?}");
    assert_eq!(delta("proxy_http_call"), 0);
    // A header that is there is handed back in memory the plugin allocates.
    let before = h.abi_calls().clone();
    h.request().method("GET").path("/").authority("mcp.example.com").header("x-test-action", "none").send().unwrap();
    let after = h.abi_calls();
    let allocations = |m: &std::collections::BTreeMap<&str, u64>| m.get("proxy_on_memory_allocate").copied().unwrap_or(0);
    assert!(allocations(after) > allocations(&before), "{after:?}");
}
