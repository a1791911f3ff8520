//! The CSV dialect of history files: RFC 4180 quoting, one record per physical line.
//!
//! A field is quoted when it contains `,` or `"` (embedded quotes doubled). Carriage returns and
//! line feeds inside a field are written as spaces: RFC 4180 would allow them quoted, but then a
//! record could span lines, `grep` would show half rows, and a line cut short by a crash could
//! swallow the next one. With one record per line, a damaged line damages only itself.
//!
//! Lines end with `\n` (a reader that meets `\r\n`, e.g. after a round trip through a
//! spreadsheet on Windows, gets the `\r` stripped).

use memchr::memchr;

/// Appends `field` to `out`, quoted if it needs to be.
pub fn push_field(out: &mut Vec<u8>, field: &str) {
    let needs_quotes = field.bytes().any(|b| matches!(b, b',' | b'"'));
    let needs_cleaning = field.bytes().any(|b| matches!(b, b'\r' | b'\n'));
    if !needs_quotes && !needs_cleaning {
        out.extend_from_slice(field.as_bytes());
        return;
    }
    if needs_quotes {
        out.push(b'"');
    }
    for b in field.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\"\""),
            b'\r' | b'\n' => out.push(b' '),
            _ => out.push(b),
        }
    }
    if needs_quotes {
        out.push(b'"');
    }
}

/// Why a line is not a well-formed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("{found} fields instead of {expected}")]
    FieldCount { expected: usize, found: usize },
    #[error("a quoted field is not closed")]
    Unterminated,
    #[error("text after the closing quote of a field")]
    TextAfterQuote,
    #[error("a quote inside an unquoted field")]
    StrayQuote,
    #[error("not valid UTF-8")]
    NotUtf8,
}

/// The fields of one line. Lines without a quote (nearly all) are only indexed, not copied:
/// a query touches a few columns of each of hundreds of thousands of lines.
#[derive(Debug)]
pub struct Fields<'a, const N: usize> {
    line: &'a [u8],
    /// Where each field ends; the next starts one byte later (after the comma). `u32` keeps
    /// the struct small enough to move around for free, hence `split_line`'s length limit.
    ends: [u32; N],
    /// Unquoted copies, for a line with quotes.
    owned: Option<Vec<String>>,
}

impl<'a, const N: usize> Fields<'a, N> {
    /// Field `i`, unquoted, as bytes: what comparisons and digit parsing need.
    #[inline]
    pub fn bytes(&self, i: usize) -> &[u8] {
        match &self.owned {
            Some(o) => o[i].as_bytes(),
            None => {
                let start = if i == 0 {
                    0
                } else {
                    self.ends[i - 1] as usize + 1
                };
                &self.line[start..self.ends[i] as usize]
            }
        }
    }

    /// Field `i`, unquoted. UTF-8 is checked per field, when a field is used: a query reads
    /// four columns of each line, so checking whole lines would be most of its work.
    #[inline]
    pub fn get(&self, i: usize) -> Result<&str, CsvError> {
        std::str::from_utf8(self.bytes(i)).map_err(|_| CsvError::NotUtf8)
    }

    pub fn to_vec(&self) -> Result<Vec<String>, CsvError> {
        (0..N).map(|i| self.get(i).map(String::from)).collect()
    }
}

/// Splits one line (without its line end) into exactly `N` fields, unquoting as needed.
/// Works on bytes: `,` and `"` never occur inside a multi-byte UTF-8 character.
pub fn split_line<const N: usize>(line: &[u8]) -> Result<Fields<'_, N>, CsvError> {
    if line.len() >= u32::MAX as usize {
        return split_quoted(line);
    }
    let mut ends = [0; N];
    let mut n = 0;
    // Eight bytes at a time: the commas' positions come out of one word as bits. A quote, or
    // one comma too many, sends the line to the general parser.
    let mut words = line.chunks_exact(8);
    let mut at = 0;
    for w in words.by_ref() {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        if bytes_equal(w, b'"') != 0 {
            return split_quoted(line);
        }
        let mut commas = bytes_equal(w, b',');
        while commas != 0 {
            if n + 1 == N {
                return split_quoted(line);
            }
            ends[n] = (at + commas.trailing_zeros() as usize / 8) as u32;
            n += 1;
            commas &= commas - 1;
        }
        at += 8;
    }
    for (i, &c) in words.remainder().iter().enumerate() {
        if c == b'"' || (c == b',' && n + 1 == N) {
            return split_quoted(line);
        }
        if c == b',' {
            ends[n] = (at + i) as u32;
            n += 1;
        }
    }
    if n + 1 != N {
        return Err(CsvError::FieldCount {
            expected: N,
            found: n + 1,
        });
    }
    ends[n] = line.len() as u32;
    Ok(Fields {
        line,
        ends,
        owned: None,
    })
}

/// The high bit of every byte of `w` equal to `b`, exactly (no carries between bytes).
#[inline]
fn bytes_equal(w: u64, b: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (0x0101_0101_0101_0101 * u64::from(b));
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// The general case: quoted fields, or an error to explain.
fn split_quoted<const N: usize>(bytes: &[u8]) -> Result<Fields<'_, N>, CsvError> {
    let line = std::str::from_utf8(bytes).map_err(|_| CsvError::NotUtf8)?;
    let b = bytes;
    let mut out: Vec<String> = Vec::with_capacity(N);
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            let mut s = String::new();
            let mut j = i + 1;
            loop {
                let k = memchr(b'"', &b[j..]).ok_or(CsvError::Unterminated)?;
                s.push_str(&line[j..j + k]);
                j += k + 1;
                if b.get(j) == Some(&b'"') {
                    s.push('"');
                    j += 1;
                } else {
                    break;
                }
            }
            out.push(s);
            match b.get(j) {
                None => break,
                Some(b',') => i = j + 1,
                Some(_) => return Err(CsvError::TextAfterQuote),
            }
        } else {
            let end = memchr(b',', &b[i..]).map(|k| i + k);
            let f = &line[i..end.unwrap_or(b.len())];
            if f.contains('"') {
                return Err(CsvError::StrayQuote);
            }
            out.push(f.to_string());
            match end {
                None => break,
                Some(e) => i = e + 1,
            }
        }
    }
    if out.len() != N {
        return Err(CsvError::FieldCount {
            expected: N,
            found: out.len(),
        });
    }
    Ok(Fields {
        line: bytes,
        ends: [0; N],
        owned: Some(out),
    })
}

#[cfg(test)]
mod test {
    use super::*;

    fn line(fields: &[&str]) -> String {
        let mut out = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_field(&mut out, f);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_are_quoted_only_when_needed_and_round_trip() {
        let fields = ["plain", "a,b", "say \"hi\"", "", "°C", "\"", ","];
        let l = line(&fields);
        assert_eq!(l, r#"plain,"a,b","say ""hi""",,°C,"""",",""#);
        let back = split_line::<7>(l.as_bytes()).unwrap();
        assert_eq!(back.to_vec().unwrap(), fields.map(String::from));
        let plain = split_line::<3>(b"a,,c").unwrap();
        assert_eq!(plain.to_vec().unwrap(), ["a", "", "c"]);
        let bad = split_line::<2>(b"ok,\xff").unwrap();
        assert_eq!((bad.get(0), bad.get(1)), (Ok("ok"), Err(CsvError::NotUtf8)));
    }

    #[test]
    fn the_word_at_a_time_split_agrees_with_the_general_one_at_every_length() {
        for len in 0..40 {
            let fields: Vec<String> = (0..5).map(|i| "x".repeat((len * (i + 1)) % 7)).collect();
            let line = fields.join(",");
            let fast = split_line::<5>(line.as_bytes()).unwrap();
            assert_eq!(fast.to_vec().unwrap(), fields, "{line:?}");
            let slow = split_quoted::<5>(line.as_bytes()).unwrap();
            assert_eq!(slow.to_vec().unwrap(), fields);
            assert!(split_line::<4>(line.as_bytes()).is_err());
            assert!(split_line::<6>(line.as_bytes()).is_err());
        }
        // Bytes that differ from ',' by one bit, and non-ASCII, are not commas.
        let line = "-,.\u{ac}\u{2c00}é,°,x\u{7f}";
        assert_eq!(
            split_line::<4>(line.as_bytes()).unwrap().to_vec().unwrap(),
            ["-", ".\u{ac}\u{2c00}é", "°", "x\u{7f}"]
        );
    }

    #[test]
    fn line_breaks_inside_a_field_become_spaces_so_a_record_is_one_line() {
        let l = line(&["two\nlines", "cr\r\nlf, and comma"]);
        assert_eq!(l, "two lines,\"cr  lf, and comma\"");
        assert!(!l.contains('\n'));
    }

    #[test]
    fn malformed_lines_say_why() {
        let err = |l: &str| split_line::<2>(l.as_bytes()).unwrap_err();
        let count = |found| CsvError::FieldCount { expected: 2, found };
        assert_eq!(err("a"), count(1));
        assert_eq!(err("a,b,c"), count(3));
        assert_eq!(err("\"a\",b,\"c\""), count(3));
        assert_eq!(err("a,\"b"), CsvError::Unterminated);
        assert_eq!(err("a,\"b\"c"), CsvError::TextAfterQuote);
        assert_eq!(err("a,b\"c\""), CsvError::StrayQuote);
        assert_eq!(
            split_line::<2>(b"\"\",").unwrap().to_vec().unwrap(),
            ["", ""]
        );
    }
}
