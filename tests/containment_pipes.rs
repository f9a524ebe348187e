//! A call's timeout bounds its caller's wait, whatever the function does to its
//! pipes (issue #19): closes stdout, closes all three, holds them without
//! answering, exits, closes stdout and dies a moment later, or exits leaving a
//! child that holds them (silent, or writing). Each case runs on both transports,
//! in `line` and in `http`; cold functions have their own cases.
//!
//! Every call must be answered within its timeout plus a margin (a bound on the
//! caller's wait, not a speed), with the error the case deserves, and its
//! container must be gone. Each test runs on Docker (both transports) and on
//! containerd (direct alone), in its own pool, and ends with none of its
//! containers left.

mod support;

use std::time::{Duration, Instant};

use hotpool::driver::Transport;
use hotpool::pool::{Format, Lifecycle, Request, TIMEOUT_MARGIN};
use hotpool::{CallError, ErrorKind};

use support::OnEngine;
use support::engine::TestEngine;
use support::pool::{TestPool, containers_of, eventually, with_pool};

/// The timeout of every call here.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How long past its timeout a call may be answered: hotpool's documented
/// margin and slack for a loaded machine. A bound on a wait, not a speed.
const PAST_TIMEOUT: Duration = TIMEOUT_MARGIN.saturating_add(Duration::from_secs(2));

/// Calls `body` in a warm container of a `format` function with a [`TIMEOUT`];
/// checks that the answer came within [`PAST_TIMEOUT`] of it and is an error that
/// `expected` accepts, that the container is gone, and that a new one serves the
/// next call.
async fn call_in_warm_container<D: TestEngine>(
    pool: &TestPool<D>,
    transport: Transport,
    format: Format,
    body: &str,
    expected: impl Fn(&CallError) -> bool,
) {
    let mut function = pool.spec(transport, &format!("pipes-{}", format.as_str()), format);
    function.timeout = TIMEOUT;
    let handle = pool.register(function);
    let whoami = async || {
        let response = handle.call(Request::new("!whoami")).await.expect("whoami");
        String::from_utf8_lossy(&response.body).into_owned()
    };
    let before = whoami().await;
    let started = Instant::now();
    let result = handle.call(Request::new(body.to_owned())).await;
    let took = started.elapsed();
    eprintln!(
        "{body:?} over {transport} in {}: {:?} after {took:.2?}",
        format.as_str(),
        result.as_ref().map_err(CallError::kind)
    );
    assert!(
        took <= TIMEOUT + PAST_TIMEOUT,
        "{body:?} ({}) was answered {took:?} after the call began, past its {TIMEOUT:?} timeout + {PAST_TIMEOUT:?}",
        format.as_str()
    );
    match &result {
        Err(error) if expected(error) => {}
        other => panic!("{body:?} ({}): unexpected {other:?}", format.as_str()),
    }
    eventually("the container is gone", async || {
        !containers_of(pool, false)
            .await
            .iter()
            .any(|id| id.starts_with(&before))
    })
    .await;
    assert_ne!(
        whoami().await,
        before,
        "a new container serves the next call"
    );
}

/// Runs [`call_in_warm_container`] in `line` and in `http`.
async fn in_both_hot_formats<D: TestEngine>(
    engine: OnEngine<D>,
    name: &str,
    transport: Transport,
    body: &str,
    expected: impl Fn(&CallError) -> bool,
) {
    with_pool(
        engine,
        &format!("test-pipes-{name}-{transport}"),
        async |pool| {
            for format in [Format::Line, Format::Http] {
                call_in_warm_container(pool, transport, format, body, &expected).await;
            }
        },
    )
    .await;
}

/// A function that closed stdout but runs on: direct pipes end at once and
/// the call says so; the engine's attach stream stays open until the timeout.
fn stdout_closed_but_running(transport: Transport) -> impl Fn(&CallError) -> bool {
    move |error| match (transport, error) {
        (Transport::Direct, CallError::ProtocolError { detail }) => {
            detail.contains("closed its stdout but kept running")
        }
        (Transport::Attach, error) => error.kind() == ErrorKind::Timeout,
        _ => false,
    }
}

fn exited_with(code: i64) -> impl Fn(&CallError) -> bool {
    move |error| matches!(error, CallError::Exited { code: c, .. } if *c == code)
}

per_engine_transport!(closing_stdout_and_running_on);
async fn closing_stdout_and_running_on<D: TestEngine>(engine: OnEngine<D>, transport: Transport) {
    let expected = stdout_closed_but_running(transport);
    in_both_hot_formats(engine, "close-stdout", transport, "!close-stdout", expected).await;
}

per_engine_transport!(closing_all_pipes_and_running_on);
async fn closing_all_pipes_and_running_on<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let expected = stdout_closed_but_running(transport);
    in_both_hot_formats(engine, "close-all", transport, "!close-all", expected).await;
}

per_engine_transport!(holding_the_pipes_without_answering_is_a_timeout);
async fn holding_the_pipes_without_answering_is_a_timeout<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let timeout = |error: &CallError| error.kind() == ErrorKind::Timeout;
    in_both_hot_formats(engine, "hold", transport, "!sleep 600000", timeout).await;
}

per_engine_transport!(exiting_is_exited);
async fn exiting_is_exited<D: TestEngine>(engine: OnEngine<D>, transport: Transport) {
    in_both_hot_formats(engine, "exit", transport, "!exit 3", exited_with(3)).await;
}

per_engine_transport!(closing_stdout_and_exiting_a_moment_later_is_exited);
async fn closing_stdout_and_exiting_a_moment_later_is_exited<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let body = "!close-stdout-exit 300 4";
    in_both_hot_formats(engine, "close-exit", transport, body, exited_with(4)).await;
}

per_engine_transport!(exiting_with_a_child_holding_the_pipes_is_exited);
async fn exiting_with_a_child_holding_the_pipes_is_exited<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    in_both_hot_formats(
        engine,
        "fork-exit",
        transport,
        "!fork-exit 5",
        exited_with(5),
    )
    .await;
}

per_engine_transport!(exiting_with_a_child_writing_late_is_exited);
async fn exiting_with_a_child_writing_late_is_exited<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    let body = "!fork-late-exit 6";
    in_both_hot_formats(engine, "fork-late", transport, body, exited_with(6)).await;
}

per_engine_transport!(cold_calls_are_answered_within_their_timeout);
async fn cold_calls_are_answered_within_their_timeout<D: TestEngine>(
    engine: OnEngine<D>,
    transport: Transport,
) {
    with_pool(
        engine,
        &format!("test-pipes-cold-{transport}"),
        async |pool| {
            type Expected = fn(&Result<String, CallError>) -> bool;
            let timed_out: Expected = |result| matches!(result, Err(CallError::Timeout { .. }));
            let cases: [(&[&str], Expected); 3] = [
                (&["close-stdout"], timed_out),
                (&["sleep", "600"], timed_out),
                // The child dies with its parent's container: none of its late
                // lines reach the body.
                (&["fork-echo"], |result| {
                    result.as_ref().is_ok_and(|body| body == "hello")
                }),
            ];
            for (cmd, expected) in cases {
                let mode = cmd[0];
                let mut function = pool.spec(transport, &format!("cold-{mode}"), Lifecycle::Cold);
                function.cmd = cmd.iter().map(|arg| arg.to_string()).collect();
                function.timeout = TIMEOUT;
                let started = Instant::now();
                let result = pool
                    .register(function)
                    .call(Request::new("hello"))
                    .await
                    .map(|response| String::from_utf8_lossy(&response.body).into_owned());
                let took = started.elapsed();
                eprintln!("cold {mode} over {transport}: {result:?} after {took:.2?}");
                // The cold timeout counts from the container's start: its creation
                // is on top, so the bound has one more margin.
                assert!(
                    took <= TIMEOUT + 2 * PAST_TIMEOUT,
                    "cold {mode} was answered {took:?} after the call began"
                );
                assert!(expected(&result), "cold {mode}: unexpected {result:?}");
                // Removed after the answer, before the next call.
                eventually(&format!("cold {mode} leaves no container"), async || {
                    containers_of(pool, false).await.is_empty()
                })
                .await;
            }
        },
    )
    .await;
}
