//! Plain-text tables for humans: left-aligned columns, two spaces apart, no box drawing (it
//! survives copy-paste into issues and chat).

/// Renders `header` and `rows` with each column as wide as its widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod test {
    #[test]
    fn aligns_columns() {
        let t = super::render(
            &["DEVICE", "STATE"],
            &[
                vec!["kitchen".into(), "online".into()],
                vec!["a".into(), "offline".into()],
            ],
        );
        assert_eq!(t, "DEVICE   STATE\nkitchen  online\na        offline\n");
    }
}
