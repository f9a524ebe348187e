//! An example function written for hotpool's `http` format (docs/functions.md).
//!
//! It reads HTTP/1.1 requests from stdin, one after another, and answers each on
//! stdout with a JSON greeting: `{"greeting":"hello, <name>","call_id":"...",
//! "calls_served":N}`. The name is the request body (trimmed), or `world` when the
//! body is empty; `calls_served` counts the calls this container has answered, to
//! show that it stays hot. Every answer echoes the request's `Hotpool-Call-Id`
//! header, as the format requires: that is how hotpool knows the answer is this
//! call's. A body that is not UTF-8 gets a 400 answer, which is an answer like any
//! other: the function keeps serving. Logs go to stderr.
//!
//! It uses only the standard library, so it builds into a static binary that runs
//! in an image `FROM scratch`.

use std::io::{self, BufRead, BufReader, Write};

fn main() {
    let mut requests = BufReader::new(io::stdin().lock());
    let mut responses = io::stdout().lock();
    let mut calls_served = 0u64;
    while let Some(request) = read_request(&mut requests) {
        calls_served += 1;
        let (status, body) = match std::str::from_utf8(&request.body) {
            Ok(text) => {
                let name = match text.trim() {
                    "" => "world",
                    name => name,
                };
                let greeting = format!(
                    "{{\"greeting\":\"hello, {}\",\"call_id\":\"{}\",\"calls_served\":{calls_served}}}",
                    json_escape(name),
                    json_escape(&request.call_id)
                );
                ("200 OK", greeting)
            }
            Err(_) => (
                "400 Bad Request",
                "{\"error\":\"the name must be UTF-8\"}".to_owned(),
            ),
        };
        eprintln!("call {} answered {status}", request.call_id);
        write!(
            responses,
            "HTTP/1.1 {status}\r\nHotpool-Call-Id: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            request.call_id,
            body.len()
        )
        .and_then(|()| responses.flush())
        .expect("write the response to stdout");
    }
}

/// One request: its call id header and its body.
struct Request {
    call_id: String,
    body: Vec<u8>,
}

/// Reads the next request; `None` at EOF (hotpool is done with this container).
fn read_request(input: &mut impl BufRead) -> Option<Request> {
    let mut content_length = 0;
    let mut call_id = String::new();
    let mut line = String::new();
    // The request line, then headers up to the empty line.
    let mut first = true;
    loop {
        line.clear();
        if input.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() && !first {
            break;
        }
        first = false;
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.trim().parse().ok()?,
                "hotpool-call-id" => call_id = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; content_length];
    input.read_exact(&mut body).ok()?;
    Some(Request { call_id, body })
}

fn json_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            c if (c as u32) < 0x20 => escaped.push_str(&format!("\\u{:04x}", c as u32)),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_one_after_another() {
        let stream = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nHotpool-Call-Id: a1\r\n\r\nAdaPOST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        let mut input = &stream[..];
        let first = read_request(&mut input).unwrap();
        assert_eq!(
            (first.call_id.as_str(), &first.body[..]),
            ("a1", &b"Ada"[..])
        );
        let second = read_request(&mut input).unwrap();
        assert!(second.body.is_empty());
        assert!(read_request(&mut input).is_none());
    }

    #[test]
    fn names_are_escaped_into_json() {
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }
}
