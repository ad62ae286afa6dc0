//! The few MQTT 3.1.1 packets the benchmark needs, encoded and decoded by hand.
use tokio::io::{AsyncRead, AsyncReadExt};

pub const DISCONNECT: [u8; 2] = [0xE0, 0];

fn remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    // Level 4 (3.1.1), clean session, keep-alive 60 s.
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    string(&mut body, client_id);
    let mut out = vec![0x10];
    remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

pub fn subscribe(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    string(&mut body, filter);
    body.push(qos);
    let mut out = vec![0x82];
    remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

pub fn publish(out: &mut Vec<u8>, topic: &str, payload: &[u8], qos: u8, pkid: u16) {
    out.push(0x30 | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    remaining_length(out, 2 + topic.len() + id_len + payload.len());
    string(out, topic);
    if qos > 0 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub fn puback(pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [0x40, 2, hi, lo]
}

/// The packet id of a QoS 1/2 PUBLISH body.
pub fn publish_pkid(body: &[u8]) -> Option<u16> {
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let at = 2 + topic_len;
    Some(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]))
}

/// Splits a byte stream into packets: (first header byte, body).
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
}

impl Reader {
    /// (header byte, body length, header length) of the packet at the front, if whole.
    fn frame(&self) -> Option<(u8, usize, usize)> {
        let data = &self.buf[self.start..];
        let header = *data.first()?;
        let (mut len, mut shift) = (0usize, 0);
        for (i, &b) in data.iter().enumerate().skip(1).take(4) {
            len |= ((b & 0x7F) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return (data.len() >= 1 + i + len).then_some((header, len, 1 + i));
            }
        }
        None
    }

    pub fn has_packet(&self) -> bool {
        self.frame().is_some()
    }

    pub async fn next(
        &mut self,
        stream: &mut (impl AsyncRead + Unpin),
    ) -> std::io::Result<(u8, Vec<u8>)> {
        loop {
            if let Some((header, len, head)) = self.frame() {
                let body_at = self.start + head;
                let body = self.buf[body_at..body_at + len].to_vec();
                self.start = body_at + len;
                return Ok((header, body));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 1 << 16];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
