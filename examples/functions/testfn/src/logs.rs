//! Hot-mode commands that log on stderr the way a hostile or careless function
//! does: floods, endless floods, lines without end, control characters.
//!
//! ```text
//! !log-flood BYTES   write BYTES to stderr in 100-byte lines ("flood 0000000001 xx…"),
//!                    then answer "flooded BYTES"
//! !log-storm         start a thread that writes such lines to stderr for as long as
//!                    the process lives; answer "storming" at once
//! !log-nonl BYTES    write BYTES of "x" to stderr with no newline; answer "wrote BYTES"
//! !log-ctrl          write a line full of control characters (colours, CR, BEL,
//!                    a screen clear, invalid UTF-8); answer "wrote controls"
//! ```

use std::io::{self, BufWriter, Write};

/// The bytes of each flood line, its newline included.
const FLOOD_LINE: usize = 100;

/// What `!log-ctrl` writes.
const CONTROLS: &[u8] =
    b"ctrl \x1b[31mred\x1b[0m \x1b[2J cr\rhidden bell\x07 nul\x00 bad\xff end\n";

/// Whether `name` is one of these commands.
pub fn handles(name: &str) -> bool {
    matches!(name, "log-flood" | "log-storm" | "log-nonl" | "log-ctrl")
}

/// Runs the command `name` with its argument text `rest`; returns the answer.
pub fn run(name: &str, rest: &str) -> Vec<u8> {
    let bytes: usize = rest.trim().parse().unwrap_or(0);
    match name {
        "log-flood" => {
            flood(bytes);
            format!("flooded {bytes}").into_bytes()
        }
        "log-storm" => {
            std::thread::spawn(|| flood(usize::MAX));
            b"storming".to_vec()
        }
        "log-nonl" => {
            let mut err = BufWriter::new(io::stderr().lock());
            for _ in 0..bytes {
                err.write_all(b"x").expect("write stderr");
            }
            err.flush().expect("flush stderr");
            format!("wrote {bytes}").into_bytes()
        }
        "log-ctrl" => {
            io::stderr().write_all(CONTROLS).expect("write stderr");
            b"wrote controls".to_vec()
        }
        _ => unreachable!("not a log command: {name}"),
    }
}

/// Writes `bytes` bytes of numbered lines of [`FLOOD_LINE`] bytes (the last one
/// shorter if need be) to stderr.
fn flood(bytes: usize) {
    let mut err = BufWriter::with_capacity(64 << 10, io::stderr().lock());
    let mut left = bytes;
    let mut number = 0u64;
    while left > 0 {
        number += 1;
        let take = left.min(FLOOD_LINE);
        let mut line = format!("flood {number:010} ").into_bytes();
        line.resize(take - 1, b'x');
        line.push(b'\n');
        err.write_all(&line).expect("write stderr");
        left -= take;
    }
    err.flush().expect("flush stderr");
}
