//! The line echo protocol, without IO: every `\n`-terminated line is sent
//! back verbatim (its `\n`, and a `\r` before it, included).
//!
//! Contract: [`next_line`] looks at the start of its input and returns the
//! length of the first complete line, `Ok(None)` while it is incomplete, or
//! `Err` once it has passed [`MAX_LINE`] bytes without its `\n`, and then
//! the session closes (no reply: the protocol has no error message).

/// The longest line echoed, its `\n` not counted.
pub const MAX_LINE: usize = 64 * 1024;

/// A line longer than [`MAX_LINE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong;

/// The length of the first line in `input`, `\n` included.
pub fn next_line(input: &[u8]) -> Result<Option<usize>, LineTooLong> {
    let searched = &input[..input.len().min(MAX_LINE + 1)];
    match searched.iter().position(|&b| b == b'\n') {
        Some(newline) => Ok(Some(newline + 1)),
        None if input.len() > MAX_LINE => Err(LineTooLong),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_include_their_newline() {
        assert_eq!(next_line(b"hello\nworld"), Ok(Some(6)));
        assert_eq!(next_line(b"\r\n"), Ok(Some(2)));
        assert_eq!(next_line(b"\n"), Ok(Some(1)));
    }

    #[test]
    fn a_line_without_newline_is_incomplete() {
        assert_eq!(next_line(b""), Ok(None));
        assert_eq!(next_line(b"partial"), Ok(None));
    }

    #[test]
    fn the_limit_is_on_the_line_without_its_newline() {
        let mut line = vec![b'x'; MAX_LINE];
        assert_eq!(next_line(&line), Ok(None));
        line.push(b'\n');
        assert_eq!(next_line(&line), Ok(Some(MAX_LINE + 1)));
        line.pop();
        line.push(b'x');
        assert_eq!(next_line(&line), Err(LineTooLong));
        line.push(b'\n');
        assert_eq!(next_line(&line), Err(LineTooLong));
    }
}
