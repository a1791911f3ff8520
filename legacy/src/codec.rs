//! Framing of the legacy protocols (`docs/legacy.md`), both directions.
//!
//! - Length-prefixed: `count "_" payload`, where `count` is the number of *characters* of the
//!   whole frame, its own digits and the `_` included (`4_on`, `11_Led OFF.`).
//! - NUL-terminated (tcpcom): `payload 0x00`.
//!
//! Framing is detected per frame: one or more ASCII digits followed by `_` is length-prefixed,
//! anything else is NUL-terminated. While only digits have arrived the decoder waits for the
//! next byte to decide. A listener may pin one framing instead.
//!
//! The decoder never holds more than `max_frame` bytes of one frame: a longer frame, or a length
//! prefix announcing one, is a [`FrameError`] after which the connection is answered and closed.

use std::fmt;

/// How a frame was (or is to be) delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// `N_payload`.
    Length,
    /// `payload\0`.
    Nul,
}

/// Which framings a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FramingMode {
    #[default]
    Auto,
    Length,
    Nul,
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub framing: Framing,
    pub text: String,
}

/// Why a stream cannot be decoded further. The connection gets an error reply in `framing` and
/// is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame longer than {max} bytes")]
    TooLong { framing: Framing, max: usize },
    #[error("invalid length prefix")]
    BadPrefix,
    #[error("frame is not valid UTF-8")]
    BadUtf8 { framing: Framing },
}

impl FrameError {
    /// The framing to answer in.
    pub fn framing(&self) -> Framing {
        match self {
            FrameError::TooLong { framing, .. } | FrameError::BadUtf8 { framing } => *framing,
            FrameError::BadPrefix => Framing::Length,
        }
    }

    /// The reply sent before closing.
    pub fn reply(&self) -> String {
        match self {
            FrameError::TooLong { max, .. } => format!("Frame too long (limit {max} bytes)."),
            FrameError::BadPrefix => "Invalid length prefix.".to_string(),
            FrameError::BadUtf8 { .. } => "Frame is not valid UTF-8.".to_string(),
        }
    }
}

/// The longest digit run accepted as a length prefix (a count of 10^9 is far past any bound).
const MAX_DIGITS: usize = 9;

/// An incremental decoder: feed bytes as they arrive, take frames as they complete.
#[derive(Debug)]
pub struct Decoder {
    mode: FramingMode,
    max_frame: usize,
    buf: Vec<u8>,
    failed: bool,
}

impl Decoder {
    pub fn new(mode: FramingMode, max_frame: usize) -> Self {
        Decoder {
            mode,
            max_frame,
            buf: Vec::new(),
            failed: false,
        }
    }

    /// Bytes held for an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes. Call [`Decoder::next_frame`] until it returns `Ok(None)` after
    /// every `feed`, which keeps the buffer within one frame.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or an error after which
    /// the decoder yields nothing more.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Ok(None);
        }
        let result = self.decode();
        if result.is_err() {
            self.failed = true;
            self.buf = Vec::new();
        }
        result
    }

    fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let framing = match self.mode {
            FramingMode::Length => Framing::Length,
            FramingMode::Nul => Framing::Nul,
            FramingMode::Auto => {
                let digits = self.buf.iter().take_while(|b| b.is_ascii_digit()).count();
                match self.buf.get(digits) {
                    _ if digits == 0 => Framing::Nul,
                    Some(b'_') => Framing::Length,
                    Some(_) => Framing::Nul,
                    // Only digits so far: wait, unless the run is already too long to be a prefix.
                    None if digits > MAX_DIGITS => Framing::Nul,
                    None => return Ok(None),
                }
            }
        };
        match framing {
            Framing::Nul => self.decode_nul(),
            Framing::Length => self.decode_length(),
        }
    }

    fn decode_nul(&mut self) -> Result<Option<Frame>, FrameError> {
        let framing = Framing::Nul;
        match self.buf.iter().position(|&b| b == 0) {
            Some(end) if end > self.max_frame => Err(FrameError::TooLong {
                framing,
                max: self.max_frame,
            }),
            Some(end) => {
                let text = std::str::from_utf8(&self.buf[..end])
                    .map_err(|_| FrameError::BadUtf8 { framing })?
                    .to_string();
                self.buf.drain(..=end);
                Ok(Some(Frame { framing, text }))
            }
            None if self.buf.len() > self.max_frame => Err(FrameError::TooLong {
                framing,
                max: self.max_frame,
            }),
            None => Ok(None),
        }
    }

    fn decode_length(&mut self) -> Result<Option<Frame>, FrameError> {
        let framing = Framing::Length;
        let digits = self.buf.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > MAX_DIGITS {
            return Err(FrameError::TooLong {
                framing,
                max: self.max_frame,
            });
        }
        match self.buf.get(digits) {
            None => return Ok(None), // pinned length mode, prefix still arriving
            Some(b'_') if digits > 0 => {}
            Some(_) => return Err(FrameError::BadPrefix),
        }
        let count: usize = std::str::from_utf8(&self.buf[..digits])
            .expect("ASCII digits")
            .parse()
            .map_err(|_| FrameError::BadPrefix)?;
        let header = digits + 1;
        if count < header {
            return Err(FrameError::BadPrefix);
        }
        let chars = count - header;
        // A character is at most 4 bytes, at least 1: the frame needs at least `chars` bytes.
        if chars > self.max_frame {
            return Err(FrameError::TooLong {
                framing,
                max: self.max_frame,
            });
        }
        let body = &self.buf[header..];
        let (end, complete) =
            char_boundary(body, chars).map_err(|()| FrameError::BadUtf8 { framing })?;
        if !complete {
            if body.len() > self.max_frame {
                return Err(FrameError::TooLong {
                    framing,
                    max: self.max_frame,
                });
            }
            return Ok(None);
        }
        // The bound is in bytes, whichever way the frame arrived.
        if end > self.max_frame {
            return Err(FrameError::TooLong {
                framing,
                max: self.max_frame,
            });
        }
        let text = std::str::from_utf8(&body[..end])
            .expect("validated")
            .to_string();
        self.buf.drain(..header + end);
        Ok(Some(Frame { framing, text }))
    }
}

/// The byte offset after `chars` UTF-8 characters of `bytes`, and whether that many arrived.
/// Err for an invalid (not merely incomplete) sequence.
fn char_boundary(bytes: &[u8], chars: usize) -> Result<(usize, bool), ()> {
    let mut offset = 0;
    for _ in 0..chars {
        let Some(&lead) = bytes.get(offset) else {
            return Ok((offset, false));
        };
        let width = match lead {
            0x00..=0x7F => 1,
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return Err(()),
        };
        let Some(seq) = bytes.get(offset..offset + width) else {
            // Incomplete: check what has arrived is a valid beginning.
            if bytes[offset + 1..].iter().any(|b| b & 0xC0 != 0x80) {
                return Err(());
            }
            return Ok((offset, false));
        };
        if std::str::from_utf8(seq).is_err() {
            return Err(());
        }
        offset += width;
    }
    Ok((offset, true))
}

/// Encodes a reply. For the length prefix the count includes its own digits, which matters at
/// rollover: `Led OFF.` (8 characters) is `11_Led OFF.`, not `10_…`.
pub fn encode(framing: Framing, text: &str) -> Vec<u8> {
    match framing {
        Framing::Nul => {
            // A NUL inside the text would end the message early and desynchronise the client.
            let mut v: Vec<u8> = text.bytes().filter(|&b| b != 0).collect();
            v.push(0);
            v
        }
        Framing::Length => {
            let n = text.chars().count();
            let mut digits = decimal_digits(n + 2);
            while decimal_digits(n + 1 + digits) != digits {
                digits += 1;
            }
            format!("{}_{text}", n + 1 + digits).into_bytes()
        }
    }
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Length => "length-prefixed",
            Framing::Nul => "NUL-terminated",
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn frames(mode: FramingMode, chunks: &[&[u8]]) -> Vec<Result<Frame, FrameError>> {
        let mut d = Decoder::new(mode, 64 * 1024);
        let mut out = vec![];
        for c in chunks {
            d.feed(c);
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => out.push(Ok(f)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        break;
                    }
                }
            }
        }
        out
    }

    fn len(t: &str) -> Result<Frame, FrameError> {
        Ok(Frame {
            framing: Framing::Length,
            text: t.into(),
        })
    }

    fn nul(t: &str) -> Result<Frame, FrameError> {
        Ok(Frame {
            framing: Framing::Nul,
            text: t.into(),
        })
    }

    #[test]
    fn spec_table_a_encodes_byte_for_byte() {
        assert_eq!(encode(Framing::Length, "on"), [0x34, 0x5F, 0x6F, 0x6E]);
        assert_eq!(
            encode(Framing::Length, "off"),
            [0x35, 0x5F, 0x6F, 0x66, 0x66]
        );
        assert_eq!(encode(Framing::Length, "q"), [0x33, 0x5F, 0x71]);
        assert_eq!(encode(Framing::Length, "Led ON."), b"9_Led ON.");
        assert_eq!(encode(Framing::Length, "Led OFF."), b"11_Led OFF.");
        assert_eq!(
            encode(Framing::Length, "Unrecognized command."),
            b"24_Unrecognized command."
        );
        assert_eq!(
            encode(Framing::Length, "Server ended. Stay rock."),
            b"27_Server ended. Stay rock."
        );
        assert_eq!(encode(Framing::Length, ""), b"2_");
        // 97 characters: 97 + 1 + 2 = 100 needs three digits, so 101.
        let s = "x".repeat(97);
        assert_eq!(encode(Framing::Length, &s), format!("101_{s}").into_bytes());
        let s = "x".repeat(96);
        assert_eq!(encode(Framing::Length, &s), format!("99_{s}").into_bytes());
    }

    #[test]
    fn spec_table_a_decodes() {
        assert_eq!(frames(FramingMode::Auto, &[b"4_on"]), vec![len("on")]);
        assert_eq!(
            frames(FramingMode::Auto, &[b"11_Led OFF."]),
            vec![len("Led OFF.")]
        );
        assert_eq!(
            frames(FramingMode::Auto, &[b"27_Server ended. Stay rock."]),
            vec![len("Server ended. Stay rock.")]
        );
    }

    #[test]
    fn spec_table_b() {
        assert_eq!(encode(Framing::Nul, "go"), [0x67, 0x6F, 0x00]);
        assert_eq!(encode(Framing::Nul, "Button pressed"), b"Button pressed\0");
        assert_eq!(
            frames(FramingMode::Auto, &[&[0x67, 0x6F, 0x00]]),
            vec![nul("go")]
        );
        assert_eq!(
            frames(FramingMode::Auto, &[&[0x61, 0x00, 0x62, 0x00]]),
            vec![nul("a"), nul("b")]
        );
        assert_eq!(frames(FramingMode::Auto, &[&[0x00]]), vec![nul("")]);
    }

    #[test]
    fn one_byte_at_a_time() {
        let wire = b"11_Led OFF.go\x004_on12\x00";
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(
            frames(FramingMode::Auto, &chunks),
            vec![len("Led OFF."), nul("go"), len("on"), nul("12")]
        );
    }

    #[test]
    fn several_frames_in_one_read_and_mixed_framing() {
        assert_eq!(
            frames(FramingMode::Auto, &[b"4_on5_offgo\x003_q"]),
            vec![len("on"), len("off"), nul("go"), len("q")]
        );
    }

    #[test]
    fn counts_characters_not_bytes() {
        // "é" is one character, two bytes: 2 digits? no: 1 + 1 + 1 = 3.
        assert_eq!(encode(Framing::Length, "é"), "3_é".as_bytes());
        assert_eq!(encode(Framing::Length, "Grüße"), "7_Grüße".as_bytes());
        let wire = "7_Grüße4_on".as_bytes();
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(
            frames(FramingMode::Auto, &chunks),
            vec![len("Grüße"), len("on")]
        );
        // An emoji is one scalar value, four bytes.
        assert_eq!(
            frames(FramingMode::Auto, &["3_🚀".as_bytes()]),
            vec![len("🚀")]
        );
    }

    #[test]
    fn partial_frames_wait() {
        let mut d = Decoder::new(FramingMode::Auto, 1024);
        d.feed(b"1");
        assert_eq!(
            d.next_frame(),
            Ok(None),
            "a lone digit could start either framing"
        );
        d.feed(b"1_Led ");
        assert_eq!(d.next_frame(), Ok(None));
        d.feed(b"OFF.");
        assert_eq!(
            d.next_frame(),
            Ok(Some(Frame {
                framing: Framing::Length,
                text: "Led OFF.".into()
            }))
        );
        d.feed(b"go");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 2);
    }

    #[test]
    fn digits_without_underscore_are_nul_framed() {
        assert_eq!(frames(FramingMode::Auto, &[b"42\x00"]), vec![nul("42")]);
        assert_eq!(
            frames(FramingMode::Auto, &[b"4", b"2x\x00"]),
            vec![nul("42x")]
        );
    }

    #[test]
    fn bounds_and_bad_prefixes() {
        let mut d = Decoder::new(FramingMode::Auto, 16);
        d.feed(b"70000_");
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLong {
                framing: Framing::Length,
                max: 16
            })
        );
        assert_eq!(d.next_frame(), Ok(None), "nothing after an error");
        let mut d = Decoder::new(FramingMode::Auto, 16);
        d.feed(&[b'a'; 17]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLong {
                framing: Framing::Nul,
                max: 16
            })
        );
        assert_eq!(
            frames(FramingMode::Auto, &[b"1_"]),
            vec![Err(FrameError::BadPrefix)]
        );
        assert_eq!(frames(FramingMode::Auto, &[b"2_"]), vec![len("")]);
        assert_eq!(
            frames(FramingMode::Length, &[b"on\x00"]),
            vec![Err(FrameError::BadPrefix)]
        );
        assert_eq!(
            frames(FramingMode::Auto, &[b"4_\xff\xfe"]),
            vec![Err(FrameError::BadUtf8 {
                framing: Framing::Length
            })]
        );
        assert_eq!(
            frames(FramingMode::Nul, &[b"\xff\x00"]),
            vec![Err(FrameError::BadUtf8 {
                framing: Framing::Nul
            })]
        );
        let mut d = Decoder::new(FramingMode::Auto, 16);
        d.feed(b"1234567890123_");
        assert!(matches!(d.next_frame(), Err(FrameError::TooLong { .. })));
    }

    #[test]
    fn the_bound_is_in_bytes_however_the_frame_is_split() {
        let wire = format!("13_{}", "é".repeat(10)); // 10 characters, 20 bytes
        for split in [1, 4, wire.len()] {
            let mut d = Decoder::new(FramingMode::Auto, 16);
            let mut result = Ok(None);
            for chunk in wire.as_bytes().chunks(split) {
                d.feed(chunk);
                result = d.next_frame();
                if result.is_err() {
                    break;
                }
            }
            assert!(
                matches!(result, Err(FrameError::TooLong { .. })),
                "split {split}: {result:?}"
            );
        }
        assert_eq!(encode(Framing::Nul, "a\0b"), b"ab\0");
    }

    #[test]
    fn pinned_nul_mode_treats_prefixes_as_text() {
        assert_eq!(frames(FramingMode::Nul, &[b"4_on\x00"]), vec![nul("4_on")]);
    }

    /// Property: for arbitrary byte streams split arbitrarily, the decoder never panics, never
    /// holds more than the bound plus one read, and decodes the same frames however the stream
    /// is split.
    #[test]
    fn arbitrary_bytes_never_panic_or_overbuffer() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        const MAX: usize = 64;
        const READ: usize = 32;
        for case in 0..20_000 {
            let len = (next() % 300) as usize;
            // Bias toward the interesting alphabet: digits, '_', NUL, UTF-8 pieces.
            let alphabet: &[u8] = b"0123456789__\x00\x00ab\xc3\xa9\xf0\x9f\x9a\x80\xff";
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if case % 3 == 0 {
                        next() as u8
                    } else {
                        alphabet[(next() % alphabet.len() as u64) as usize]
                    }
                })
                .collect();
            let mut results = Vec::new();
            for split in [1usize, 7, READ] {
                let mut d = Decoder::new(FramingMode::Auto, MAX);
                let mut got = Vec::new();
                'feed: for chunk in bytes.chunks(split) {
                    d.feed(chunk);
                    loop {
                        match d.next_frame() {
                            Ok(Some(f)) => got.push(Ok(f)),
                            Ok(None) => break,
                            Err(e) => {
                                got.push(Err(e));
                                break 'feed;
                            }
                        }
                    }
                    assert!(
                        d.buffered() <= MAX + MAX_DIGITS + 1 + READ,
                        "case {case}: {} buffered",
                        d.buffered()
                    );
                }
                results.push(got);
            }
            assert_eq!(
                results[0], results[1],
                "case {case}: split 1 vs 7 on {bytes:?}"
            );
            assert_eq!(results[0], results[2], "case {case}: split 1 vs 32");
        }
    }
}
