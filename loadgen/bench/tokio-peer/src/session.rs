//! One accepted connection, served by its own task the ordinary way: a
//! `Vec` of input that `read_buf` appends to, the protocol's decoder over
//! it, the replies gathered in a second `Vec` and written with one
//! `write_all` per read. Nothing is shared between sessions.
//!
//! What a session holds while idle is the point of this peer: the spawned
//! task (its future, this function's state), the socket's registration
//! and the two buffers, the input one allocated at [`INPUT_CAPACITY`] up
//! front as mini-redis and most tutorials do.

use crate::{line, resp, Protocol};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The input buffer each session allocates when it starts.
const INPUT_CAPACITY: usize = 4 * 1024;

/// Serves `stream` until the peer closes it, it fails, or its input breaks
/// the protocol.
pub async fn serve(stream: TcpStream, protocol: Protocol) -> io::Result<()> {
    match protocol {
        Protocol::Resp => serve_resp(stream).await,
        Protocol::Line => serve_line(stream).await,
    }
}

async fn serve_resp(mut stream: TcpStream) -> io::Result<()> {
    let mut input = Vec::with_capacity(INPUT_CAPACITY);
    let mut output = Vec::new();
    loop {
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        let mut used = 0;
        let framing = loop {
            match resp::decode(&input[used..]) {
                Ok(Some((request, len))) => {
                    resp::reply(&input[used..], &request, &mut output);
                    used += len;
                }
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        input.drain(..used);
        if framing.is_err() {
            output.extend_from_slice(resp::PROTOCOL_ERROR);
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if framing.is_err() {
            return stream.shutdown().await;
        }
    }
}

async fn serve_line(mut stream: TcpStream) -> io::Result<()> {
    let mut input = Vec::with_capacity(INPUT_CAPACITY);
    loop {
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        // Complete lines are echoed as they stand, so the reply is the
        // input up to the end of its last complete line.
        let mut echoed = 0;
        let framing = loop {
            match line::next_line(&input[echoed..]) {
                Ok(Some(len)) => echoed += len,
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        if echoed > 0 {
            stream.write_all(&input[..echoed]).await?;
            input.drain(..echoed);
        }
        if framing.is_err() {
            return Ok(());
        }
    }
}
