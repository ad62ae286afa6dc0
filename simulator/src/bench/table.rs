//! Markdown tables of figures, shared by every scenario.

use super::figure::{Figure, label};

/// A markdown table: a header row and rows of cells, columns padded to line up in a terminal.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push_row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Inserts a column at `at`; `cells` has one entry per existing row (missing ones blank).
    pub fn insert_column(&mut self, at: usize, header: &str, cells: Vec<String>) {
        let at = at.min(self.headers.len());
        self.headers.insert(at, header.to_owned());
        let mut cells = cells.into_iter();
        for row in &mut self.rows {
            row.insert(at, cells.next().unwrap_or_default());
        }
    }

    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.headers[c].chars().count(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = line(&self.headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// A column giving each system's figure as a ratio to a baseline system's same figure.
#[derive(Debug, Clone)]
pub struct Ratio<'a> {
    pub figure: &'a str,
    pub baseline: &'a str,
}

/// One row per system (first-seen order), one column per figure (first-seen order, headed
/// `label (unit)`, see [`label`]), for the figures of `dataset`; with a ratio column right after the ratio's
/// figure.
pub fn pivot(figures: &[Figure], dataset: &str, ratio: Option<Ratio<'_>>) -> Table {
    let of_dataset: Vec<&Figure> = figures.iter().filter(|f| f.dataset == dataset).collect();
    let mut systems: Vec<&str> = Vec::new();
    let mut columns: Vec<(&str, &str)> = Vec::new();
    for f in &of_dataset {
        if !systems.contains(&f.system.as_str()) {
            systems.push(&f.system);
        }
        if !columns.iter().any(|(name, _)| *name == f.figure) {
            columns.push((&f.figure, &f.unit));
        }
    }
    let value = |system: &str, figure: &str| {
        of_dataset
            .iter()
            .find(|f| f.system == system && f.figure == figure)
            .map(|f| f.value)
    };
    let mut headers = vec!["system".to_owned()];
    for (name, unit) in &columns {
        headers.push(format!("{} ({unit})", label(name)));
        if let Some(r) = &ratio
            && r.figure == *name
        {
            headers.push(format!("vs {}", r.baseline));
        }
    }
    let mut table = Table::new(headers);
    for system in &systems {
        let mut row = vec![(*system).to_owned()];
        for (name, _) in &columns {
            row.push(value(system, name).map_or_else(String::new, format_value));
            if let Some(r) = &ratio
                && r.figure == *name
            {
                let cell = match (value(system, name), value(r.baseline, name)) {
                    (Some(v), Some(b)) if b != 0.0 => format!("{:.3}×", v / b),
                    _ => String::new(),
                };
                row.push(cell);
            }
        }
        table.push_row(row);
    }
    table
}

/// Three significant decimals for small values, fewer for large ones.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pivot_puts_systems_in_rows_and_adds_the_ratio() {
        let figs = vec![
            Figure::new("codec", "d", "a", "bytes_per_sample", 1.0, "B"),
            Figure::new(
                "codec",
                "d",
                "a",
                "encode_msamples_per_s",
                200.0,
                "Msamples/s",
            ),
            Figure::new("codec", "d", "base", "bytes_per_sample", 4.0, "B"),
            Figure::new(
                "codec",
                "d",
                "base",
                "encode_msamples_per_s",
                150.0,
                "Msamples/s",
            ),
            Figure::new("codec", "other", "a", "bytes_per_sample", 9.0, "B"),
        ];
        let t = pivot(
            &figs,
            "d",
            Some(Ratio {
                figure: "bytes_per_sample",
                baseline: "base",
            }),
        );
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("| system | bytes/sample (B) | vs base | encode (Msamples/s) |"),
            "{text}"
        );
        assert!(
            lines[2].contains("| 1.000 ") && lines[2].contains("0.250×"),
            "{text}"
        );
        assert!(
            lines[3].contains("1.000×") && lines[3].contains("150.0"),
            "{text}"
        );
        assert!(!text.contains("9.000"), "other datasets stay out");
    }

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(["a", "long header"]);
        t.push_row(["wide cell", "x"]);
        t.insert_column(1, "mid", vec!["m".to_owned()]);
        let text = t.render();
        let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(text.contains("| wide cell | m   | x           |"), "{text}");
    }
}
