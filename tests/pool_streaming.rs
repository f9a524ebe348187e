//! Streamed responses through the pool, fast and deterministic: the in-process
//! driver's `http` functions answer `!stream` commands with chunked bodies, under
//! tokio's paused clock. What a stream may hold in hotpool, and each way it is
//! cut, with the container it held evicted and the next call served. The same
//! streams go through `hotpool serve` on the real engines in
//! `server_streaming.rs`.

use std::time::Duration;

use hotpool::driver::in_process::InProcessDriver;
use hotpool::format::chunked::PIECE;
use hotpool::pool::{
    Answer, Format, Function, FunctionSpec, KeepAlive, Pool, PoolConfig, QUEUED_PIECES, Request,
    Start, StreamingResponse,
};
use hotpool::{CallError, ErrorKind};

const MIB: u64 = 1 << 20;
/// The call's timeout.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The longest silence in a stream.
const IDLE: Duration = Duration::from_secs(3);

/// A pool whose streams carry at most `max_stream` bytes, on an in-process
/// driver, and its http function `streams`.
async fn streams(
    max_stream: usize,
) -> (
    InProcessDriver,
    Pool<InProcessDriver>,
    Function<InProcessDriver>,
) {
    let driver = InProcessDriver::new(Duration::from_millis(200));
    let pool = pool(&driver, max_stream).await;
    let function = register(&pool);
    (driver, pool, function)
}

async fn pool(driver: &InProcessDriver, max_stream: usize) -> Pool<InProcessDriver> {
    let mut config = PoolConfig::default();
    config.name = "streaming-test".into();
    config.max_stream_bytes = max_stream;
    config.stream_idle_timeout = IDLE;
    config.max_response_bytes = 1 << 20;
    Pool::builder(driver.clone())
        .config(config)
        .build()
        .await
        .expect("pool")
}

fn register(pool: &Pool<InProcessDriver>) -> Function<InProcessDriver> {
    let mut spec = FunctionSpec::new("streams", "http-image");
    spec.cmd = vec!["http".into()];
    spec.lifecycle = Format::Http.into();
    spec.memory = 64 * MIB;
    spec.timeout = TIMEOUT;
    spec.keep_alive = KeepAlive::fixed(Duration::from_secs(600));
    pool.register(spec)
}

async fn streamed(function: &Function<InProcessDriver>, command: &str) -> StreamingResponse {
    match function
        .call_streamed(Request::new(command.to_owned()))
        .await
    {
        Ok(Answer::Streaming(streaming)) => streaming,
        Ok(Answer::Whole(whole)) => panic!("{command} answered whole: {whole:?}"),
        Ok(other) => panic!("{command}: {other:?}"),
        Err(error) => panic!("{command} failed: {error}"),
    }
}

/// Reads `streaming` to its end: the body, and the error that cut it if one did.
async fn read_to_end(streaming: &mut StreamingResponse) -> (Vec<u8>, Option<CallError>) {
    let mut body = Vec::new();
    while let Some(piece) = streaming.body.next_piece().await {
        match piece {
            Ok(piece) => body.extend_from_slice(&piece),
            Err(error) => return (body, Some(error)),
        }
    }
    (body, None)
}

/// A call of `function` after a stream: it must be answered, and hot or cold
/// as `start` says.
async fn next_call_is(function: &Function<InProcessDriver>, start: Start) {
    let answer = function
        .call(Request::new("after"))
        .await
        .expect("the call after a stream");
    assert_eq!(answer.body, "after");
    assert_eq!(answer.start, start);
}

#[tokio::test(start_paused = true)]
async fn a_stream_comes_piece_by_piece_and_gives_its_container_back() {
    let (driver, pool, function) = streams(1 << 30).await;
    let mut streaming = streamed(&function, "!stream 100").await;
    assert_eq!(streaming.status, 200);
    assert!(
        !streaming
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding")),
        "the framing is hotpool's own: {:?}",
        streaming.headers
    );
    let first = streaming.body.next_piece().await.unwrap().unwrap();
    assert_eq!(first, "data: 1\n\n", "each chunk comes as its own piece");
    let (rest, cut) = read_to_end(&mut streaming).await;
    assert!(cut.is_none(), "a clean end: {cut:?}");
    let expected: String = (2..=100).map(|i| format!("data: {i}\n\n")).collect();
    assert_eq!(String::from_utf8(rest).unwrap(), expected);
    next_call_is(&function, Start::Hot).await;
    assert_eq!(driver.statistics().created, 1);

    // A caller that does not stream reads the same response whole.
    let whole = function.call(Request::new("!stream 3")).await.unwrap();
    assert_eq!(whole.body, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    next_call_is(&function, Start::Hot).await;
    assert_eq!(driver.statistics().created, 1);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_reads_nothing_holds_a_bounded_number_of_bytes_and_leaving_cuts_the_stream() {
    let (driver, pool, function) = streams(1 << 40).await;
    let streaming = streamed(&function, "!stream-forever").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = driver.statistics().streamed;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        driver.statistics().streamed,
        held,
        "the function is held back while the caller reads nothing"
    );
    // The queue's pieces, the pool's read buffer and the pipe's own 64 KiB.
    let bound = QUEUED_PIECES * PIECE + 2 * PIECE + (64 << 10);
    assert!(
        held <= bound,
        "{held} bytes left the function, more than {bound}"
    );
    assert!(held > 0, "the stream began");

    drop(streaming);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        driver.statistics().closed,
        1,
        "the container mid-stream is evicted"
    );
    next_call_is(&function, Start::Cold).await;
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_is_cut_after_the_idle_timeout() {
    let (_driver, pool, function) = streams(1 << 30).await;
    let mut streaming = streamed(&function, "!stream-stall").await;
    let (body, cut) = read_to_end(&mut streaming).await;
    assert_eq!(body, b"first\n", "what came before the silence was relayed");
    let cut = cut.expect("a silent stream is cut, never ended cleanly");
    assert_eq!(cut.kind(), ErrorKind::Timeout, "{cut}");
    assert!(matches!(cut, CallError::StreamStalled { idle_timeout } if idle_timeout == IDLE));
    assert!(streaming.body.next_piece().await.is_none(), "then it ends");
    next_call_is(&function, Start::Cold).await;
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_calls_timeout_bounds_a_stream_whose_caller_is_slow() {
    let (_driver, pool, function) = streams(1 << 40).await;
    let mut streaming = streamed(&function, "!stream-forever").await;
    let started = tokio::time::Instant::now();
    let mut read = 0;
    let cut = loop {
        match streaming.body.next_piece().await {
            Some(Ok(piece)) => read += piece.len(),
            Some(Err(error)) => break error,
            None => panic!("an endless stream ended cleanly"),
        }
        // A slow reader: never silent long enough for the idle timeout.
        tokio::time::sleep(IDLE / 2).await;
    };
    assert!(
        matches!(cut, CallError::Timeout { timeout } if timeout == TIMEOUT),
        "{cut}"
    );
    assert!(started.elapsed() >= TIMEOUT, "cut at the call's deadline");
    assert!(read > 0);
    next_call_is(&function, Start::Cold).await;
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stream_past_its_limit_is_cut_and_a_whole_call_past_max_response_fails() {
    let limit = 10 * PIECE;
    let (_driver, pool, function) = streams(limit).await;
    let mut streaming = streamed(&function, "!stream-forever").await;
    let (body, cut) = read_to_end(&mut streaming).await;
    let cut = cut.expect("an endless stream is cut");
    assert_eq!(cut.kind(), ErrorKind::ProtocolError, "{cut}");
    assert!(cut.to_string().contains("passed its limit"), "{cut}");
    assert!(body.len() <= limit, "{} bytes relayed", body.len());
    next_call_is(&function, Start::Cold).await;

    let whole = function.call(Request::new("!stream-forever")).await;
    let error = whole.expect_err("an endless stream is no whole response");
    assert_eq!(error.kind(), ErrorKind::ProtocolError, "{error}");
    assert!(error.to_string().contains("1048576 bytes"), "{error}");
    next_call_is(&function, Start::Cold).await;
    pool.shutdown().await;
}
