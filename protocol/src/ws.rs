//! The WebSocket framing of what a server sends (RFC 6455 §5.2): the
//! frame header in front of a payload, unmasked. Encoded once per frame,
//! so every socket a frame goes to can be handed the same bytes.

/// The longest header [`text_frame`] writes.
pub const HEADER_MAX: usize = 10;

/// One unmasked text frame (FIN + opcode 1, then the payload length in 7,
/// 16 or 64 bits) holding `text`.
pub fn text_frame(text: &[u8]) -> Vec<u8> {
    let len = text.len();
    let mut frame = Vec::with_capacity(len + HEADER_MAX);
    frame.push(0x81);
    if len < 126 {
        frame.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        frame.push(126);
        frame.extend_from_slice(&short.to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(text);
    frame
}

/// A Ping frame with no payload.
pub const PING: [u8; 2] = [0x89, 0x00];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_takes_7_16_or_64_bits() {
        assert_eq!(text_frame(b"hi"), [0x81, 2, b'h', b'i']);
        let medium = text_frame(&[b'x'; 126]);
        assert_eq!(&medium[..4], [0x81, 126, 0, 126]);
        assert_eq!(medium.len(), 4 + 126);
        let large = text_frame(&vec![b'x'; 70_000]);
        assert_eq!(&large[..2], [0x81, 127]);
        assert_eq!(&large[2..10], 70_000u64.to_be_bytes());
        assert_eq!(large.len(), 10 + 70_000);
    }
}
