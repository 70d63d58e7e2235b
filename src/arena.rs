//! Small per-request byte strings without a heap allocation each.
//!
//! A path without its stage's base path must be `Bytes` (that is what `PathAndQuery` is made
//! of). Copying it into a fresh allocation costs a malloc and a free per request; instead it
//! is cut from a per-thread buffer, and costs two atomic reference-count updates. A chunk is
//! reused once every slice cut from it has been dropped, which for per-request strings is
//! soon. A slice that lives long (the path of a streaming request) keeps its whole chunk,
//! 4 KiB, alive until it goes.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

const CHUNK: usize = 4 * 1024;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(CHUNK));
}

/// The concatenation of `parts`, as `Bytes`.
#[inline]
pub(crate) fn concat(parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    if len > CHUNK / 4 {
        return Bytes::from(parts.concat());
    }
    ARENA.with(|arena| {
        let mut arena = arena.borrow_mut();
        if arena.capacity() < len {
            // Reclaims the chunk in place when every slice of it is gone, or starts a new one.
            arena.reserve(CHUNK);
        }
        for part in parts {
            arena.extend_from_slice(part);
        }
        arena.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_independent_and_survive_chunk_turnover() {
        let first = concat(&[b"/pets", b"?", b"a=1"]);
        assert_eq!(&first[..], b"/pets?a=1");
        let mut kept = Vec::new();
        for i in 0..10_000 {
            let text = format!("request-{i}");
            let bytes = concat(&[text.as_bytes()]);
            assert_eq!(&bytes[..], text.as_bytes());
            if i % 1000 == 0 {
                kept.push((text, bytes));
            }
        }
        for (text, bytes) in kept {
            assert_eq!(&bytes[..], text.as_bytes());
        }
        assert_eq!(&first[..], b"/pets?a=1");
        let large = vec![b'x'; CHUNK];
        assert_eq!(concat(&[&large]).len(), CHUNK);
    }
}
