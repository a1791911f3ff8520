//! The CSV dialect of history files: RFC 4180 quoting, one record per physical line.
//!
//! A field is quoted when it contains `,` or `"` (embedded quotes doubled). Carriage returns and
//! line feeds inside a field are written as spaces: RFC 4180 would allow them quoted, but then a
//! record could span lines, `grep` would show half rows, and a line cut short by a crash could
//! swallow the next one. With one record per line, a damaged line damages only itself.
//!
//! Lines end with `\n` (a reader that meets `\r\n`, e.g. after a round trip through a
//! spreadsheet on Windows, gets the `\r` stripped).

use std::borrow::Cow;

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
}

/// Splits one line (without its line end) into exactly `N` fields, unquoting as needed.
/// Fields without quotes borrow from `line`; most lines have none and take the fast path.
pub fn split_line<const N: usize>(line: &str) -> Result<[Cow<'_, str>; N], CsvError> {
    let mut fields: [Cow<'_, str>; N] = std::array::from_fn(|_| Cow::Borrowed(""));
    let b = line.as_bytes();
    let count = |found| CsvError::FieldCount { expected: N, found };
    if memchr(b'"', b).is_none() {
        let mut n = 0;
        for f in line.split(',') {
            if n == N {
                return Err(count(line.split(',').count()));
            }
            fields[n] = Cow::Borrowed(f);
            n += 1;
        }
        return if n == N { Ok(fields) } else { Err(count(n)) };
    }
    let (mut i, mut n) = (0, 0);
    loop {
        if n == N {
            return Err(count(n + 1));
        }
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
            fields[n] = Cow::Owned(s);
            n += 1;
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
            fields[n] = Cow::Borrowed(f);
            n += 1;
            match end {
                None => break,
                Some(e) => i = e + 1,
            }
        }
    }
    if n == N {
        Ok(fields)
    } else {
        Err(count(n))
    }
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
        let back = split_line::<7>(&l).unwrap();
        assert_eq!(back.map(|c| c.into_owned()), fields.map(String::from));
    }

    #[test]
    fn line_breaks_inside_a_field_become_spaces_so_a_record_is_one_line() {
        let l = line(&["two\nlines", "cr\r\nlf, and comma"]);
        assert_eq!(l, "two lines,\"cr  lf, and comma\"");
        assert!(!l.contains('\n'));
    }

    #[test]
    fn malformed_lines_say_why() {
        assert_eq!(
            split_line::<3>("a,b"),
            Err(CsvError::FieldCount {
                expected: 3,
                found: 2
            })
        );
        assert_eq!(
            split_line::<2>("a,b,c"),
            Err(CsvError::FieldCount {
                expected: 2,
                found: 3
            })
        );
        assert_eq!(split_line::<2>("a,\"b"), Err(CsvError::Unterminated));
        assert_eq!(split_line::<2>("a,\"b\"c"), Err(CsvError::TextAfterQuote));
        assert_eq!(split_line::<2>("a,b\"c\""), Err(CsvError::StrayQuote));
        assert_eq!(
            split_line::<2>("\"a\",b,\"c\""),
            Err(CsvError::FieldCount {
                expected: 2,
                found: 3
            })
        );
        assert_eq!(split_line::<2>("\"\",").unwrap(), ["", ""]);
    }
}
