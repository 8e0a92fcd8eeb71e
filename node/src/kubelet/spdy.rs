//! The client side of SPDY/3.1 framing, as much as a remote-command stream to the
//! runtime's streaming server needs (containerd's speaks SPDY, and WebSocket only up to
//! `v4.channel.k8s.io`, which cannot say "stdin ended"): opening streams, data with and
//! without FIN, and reading the server's frames.
//!
//! Header blocks are zlib streams; ours are written as stored (uncompressed) deflate
//! blocks without a preset dictionary, each ended by a sync flush's empty block, which
//! every zlib reader accepts. The server's
//! header blocks carry nothing a remote command needs, so they are skipped unread.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Control frame types.
pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
/// Flag: the sender's half of the stream ends with this frame.
pub const FLAG_FIN: u8 = 0x01;

/// One frame from the server.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    Control {
        kind: u16,
        flags: u8,
        payload: Vec<u8>,
    },
}

impl Frame {
    /// The stream a control frame is about (SYN_REPLY, RST_STREAM, HEADERS...).
    pub fn control_stream(payload: &[u8]) -> Option<u32> {
        let b: [u8; 4] = payload.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(b) & 0x7fff_ffff)
    }
}

/// Reads one frame; None at the end of the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if head[0] & 0x80 != 0 {
        Ok(Some(Frame::Control {
            kind: u16::from_be_bytes([head[2], head[3]]),
            flags,
            payload,
        }))
    } else {
        Ok(Some(Frame::Data {
            stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff,
            fin: flags & FLAG_FIN != 0,
            data: payload,
        }))
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8003u16).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// A DATA frame (at most 16 MiB of data, the 24-bit length).
pub fn data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// A PING answered with the same id.
pub fn ping(payload: &[u8]) -> Vec<u8> {
    control(PING, 0, payload)
}

/// The client's writer side of header compression: one zlib stream over the whole
/// connection, each header block a stored deflate block (so each is complete on its
/// own, as a sync flush makes it).
#[derive(Default)]
pub struct Headers {
    started: bool,
}

impl Headers {
    fn block(&mut self, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
        for (k, v) in pairs {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.to_ascii_lowercase().as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 8);
        if !self.started {
            // CMF: deflate with a 32 KiB window; FLG: no preset dictionary, check bits.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        // Header blocks are far below a stored block's 64 KiB.
        let len = u16::try_from(raw.len()).unwrap_or(u16::MAX);
        raw.truncate(usize::from(len));
        out.push(0x00); // BFINAL=0, BTYPE=00 (stored), padded to the byte
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(&raw);
        // An empty stored block, as a zlib sync flush ends with: it is what tells a
        // reader (Go's among them) that the block is complete without it reading on
        // into the next frame.
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }

    /// A SYN_STREAM opening `stream` with these headers.
    pub fn syn_stream(&mut self, stream: u32, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes()); // no associated stream
        p.extend_from_slice(&[0, 0]); // priority 0, slot 0
        p.extend_from_slice(&self.block(pairs));
        control(SYN_STREAM, 0, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut h = Headers::default();
        let syn = h.syn_stream(3, &[("streamType", "stdin")]);
        let mut bytes: Vec<u8> = syn.clone();
        bytes.extend(data(3, true, b"hi"));
        let mut r = &bytes[..];
        match read_frame(&mut r).await.expect("read") {
            Some(Frame::Control { kind, payload, .. }) => {
                assert_eq!(kind, SYN_STREAM);
                assert_eq!(Frame::control_stream(&payload), Some(3));
                // The zlib header, then one stored block holding the pairs as written.
                let block = &payload[10..];
                assert_eq!(&block[..3], &[0x78, 0x01, 0x00]);
                assert!(block.ends_with(b"streamtype\x00\x00\x00\x05stdin\x00\x00\x00\xff\xff"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            read_frame(&mut r).await.expect("read"),
            Some(Frame::Data {
                stream: 3,
                fin: true,
                data: b"hi".to_vec()
            })
        );
        assert_eq!(read_frame(&mut r).await.expect("read"), None);
        // Later header blocks continue the same zlib stream: no second zlib header.
        let next = h.syn_stream(5, &[("streamType", "stdout")]);
        assert_eq!(next[18], 0x00);
    }
}
