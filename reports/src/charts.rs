//! Charts (plotters): every chart is written as SVG (for the book) and PNG.
//!
//! Text needs a font: plotters' `ab_glyph` backend is given DejaVu Sans
//! (Debian: fonts-dejavu-core), found at run time; without it the charts
//! cannot be drawn and the error says which package to install.
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Errors drawing charts.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error(
        "no font for chart text: install fonts-dejavu-core (or set ISOLAB_FONT to a .ttf file)"
    )]
    NoFont,
    #[error("drawing {path}: {detail}")]
    Draw { path: PathBuf, detail: String },
    #[error("chart {0} has no data")]
    Empty(String),
}

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the font once per process.
pub fn init_font() -> Result<(), ChartError> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("ISOLAB_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        false
    });
    if ok {
        Ok(())
    } else {
        Err(ChartError::NoFont)
    }
}

/// One distribution (e.g. startup times of one backend), in display units.
#[derive(Debug, Clone)]
pub struct Distribution {
    pub label: String,
    pub values: Vec<f64>,
}

/// A published figure drawn as a dashed reference line.
#[derive(Debug, Clone)]
pub struct Reference {
    pub label: String,
    pub value: f64,
}

/// A bar made of named segments (phases, memory parts).
#[derive(Debug, Clone)]
pub struct StackedBar {
    pub label: String,
    pub segments: Vec<(String, f64)>,
}

/// A cell of the probe matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Isolated,
    Exposed,
    NotApplicable,
    Missing,
}

/// Twenty distinguishable colours (the "tab20" set, dark then light).
/// What a reader would find wrong with a chart, read from its SVG: a text
/// element with nothing in it (an axis or row label that vanished), or a
/// legend key whose colour no series uses (a legend entry without its
/// series). Returns one sentence per problem.
pub fn lint_svg(svg: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find("<text") {
        let after = &rest[i..];
        let Some(open_end) = after.find('>') else {
            break;
        };
        let Some(close) = after.find("</text>") else {
            problems.push("a text element is not closed".into());
            break;
        };
        if close > open_end && after[open_end + 1..close].trim().is_empty() {
            problems.push("an empty text element (a label that vanished)".into());
        }
        rest = &after[close + 7..];
    }
    // Legend keys are the 12x10 rectangles; their colour must appear on a
    // series element too.
    let fills: Vec<(&str, bool)> = svg
        .split("<rect")
        .skip(1)
        .filter_map(|r| {
            let r = &r[..r.find("/>").unwrap_or(r.len())];
            let fill = r.split("fill=\"").nth(1)?.split('"').next()?;
            let key = r.contains("width=\"12\"") && r.contains("height=\"10\"");
            Some((fill, key))
        })
        .collect();
    for (fill, key) in &fills {
        if *key
            && fills.iter().filter(|(f, _)| f == fill).count() < 2
            && !svg.contains(&format!("stroke=\"{fill}\""))
        {
            problems.push(format!("a legend key of colour {fill} has no series"));
        }
    }
    problems.dedup();
    problems
}

/// `n` colours that stay apart however many there are: the palette while
/// it lasts, then hues a golden angle apart in three lightnesses.
fn distinct(i: usize, n: usize) -> RGBColor {
    if n <= 20 {
        return palette(i);
    }
    // The golden angle keeps consecutive hues far apart for any n.
    let (h, l) = ((i as f64 * 137.508) % 360.0, [0.42, 0.62, 0.78][i % 3]);
    let c = (1.0 - (2.0 * l - 1.0f64).abs()) * 0.75;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = l - c / 2.0;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    RGBColor(to(r), to(g), to(b))
}

/// Key points 1-2-5 per decade within `lo..hi`: a log axis with more
/// than two labelled ticks.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.max(1e-9).log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// A tick value without trailing zeros.
fn tick(v: f64) -> String {
    if v >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 20] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(174, 199, 232),
        RGBColor(255, 187, 120),
        RGBColor(152, 223, 138),
        RGBColor(255, 152, 150),
        RGBColor(197, 176, 213),
        RGBColor(196, 156, 148),
        RGBColor(247, 182, 210),
        RGBColor(199, 199, 199),
        RGBColor(219, 219, 141),
        RGBColor(158, 218, 229),
    ];
    C[i % C.len()]
}

fn err<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> ChartError + '_ {
    move |e| ChartError::Draw {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Draws with `f` into `<stem>.svg` and `<stem>.png`; returns both paths.
/// (Two closures because a closure cannot be generic over the backend.)
fn both<F, G>(stem: &Path, size: (u32, u32), f: F, g: G) -> Result<Vec<PathBuf>, ChartError>
where
    F: Fn(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
    G: Fn(&DrawingArea<BitMapBackend, Shift>) -> Result<(), String>,
{
    init_font()?;
    let svg = stem.with_extension("svg");
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err(&svg))?;
        f(&root).map_err(err(&svg))?;
        root.present().map_err(err(&svg))?;
    }
    let png = stem.with_extension("png");
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        root.fill(&WHITE).map_err(err(&png))?;
        g(&root).map_err(err(&png))?;
        root.present().map_err(err(&png))?;
    }
    Ok(vec![svg, png])
}

fn quartiles(v: &[f64]) -> Option<[f64; 5]> {
    let mut s: Vec<f64> = v
        .iter()
        .copied()
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p| crate::stats::quantile_sorted(&s, p).unwrap_or(f64::NAN);
    Some([s[0], q(0.25), q(0.5), q(0.75), s[s.len() - 1]])
}

/// Box plots on a log scale, one per distribution, with reference lines.
pub fn box_plot_log(
    stem: &Path,
    title: &str,
    unit: &str,
    dists: &[Distribution],
    refs: &[Reference],
) -> Result<Vec<PathBuf>, ChartError> {
    let qs: Vec<(String, [f64; 5])> = dists
        .iter()
        .filter_map(|d| quartiles(&d.values).map(|q| (d.label.clone(), q)))
        .collect();
    if qs.is_empty() {
        return Err(ChartError::Empty(title.into()));
    }
    let lo = qs
        .iter()
        .map(|q| q.1[0])
        .chain(refs.iter().map(|r| r.value))
        .fold(f64::MAX, f64::min)
        / 1.5;
    let hi = qs
        .iter()
        .map(|q| q.1[4])
        .chain(refs.iter().map(|r| r.value))
        .fold(f64::MIN, f64::max)
        * 1.5;
    let n = qs.len();
    fn draw<DB: DrawingBackend>(
        root: &DrawingArea<DB, Shift>,
        title: &str,
        unit: &str,
        qs: &[(String, [f64; 5])],
        refs: &[Reference],
        lo: f64,
        hi: f64,
    ) -> Result<(), String> {
        let n = qs.len();
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                -0.5f64..(n as f64 - 0.5),
                (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
            )
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = qs.iter().map(|q| q.0.clone()).collect();
        chart
            .configure_mesh()
            .y_label_formatter(&|v| format!("{} {unit}", tick(*v)))
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(unit)
            .disable_x_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (_, q)) in qs.iter().enumerate() {
            let x = i as f64;
            let c = palette(i);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.25, q[1]), (x + 0.25, q[3])],
                    c.mix(0.35).filled(),
                )))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.25, q[1]), (x + 0.25, q[3])],
                    c.stroke_width(2),
                )))
                .map_err(|e| e.to_string())?;
            for seg in [
                [(x - 0.25, q[2]), (x + 0.25, q[2])],
                [(x, q[0]), (x, q[1])],
                [(x, q[3]), (x, q[4])],
                [(x - 0.1, q[0]), (x + 0.1, q[0])],
                [(x - 0.1, q[4]), (x + 0.1, q[4])],
            ] {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        seg.to_vec(),
                        c.stroke_width(2),
                    )))
                    .map_err(|e| e.to_string())?;
            }
        }
        for (j, r) in refs.iter().enumerate() {
            let style = palette(7).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(-0.5, r.value), (n as f64 - 0.5, r.value)],
                    6,
                    4,
                    style,
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{} ({} {unit})", r.label, tick(r.value)))
                // The key is dashed, as the line it stands for.
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (6, 0)], palette(7))
                        + PathElement::new(vec![(10, 0), (16, 0)], palette(7))
                });
            let _ = j;
        }
        if !refs.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    let width = 200 + 140 * n as u32;
    both(
        stem,
        (width.max(640), 420),
        |root| draw(root, title, unit, &qs, refs, lo, hi),
        |root| draw(root, title, unit, &qs, refs, lo, hi),
    )
}

/// Horizontal stacked bars (phases of a start, parts of memory).
pub fn stacked_bars(
    stem: &Path,
    title: &str,
    unit: &str,
    bars: &[StackedBar],
    refs: &[Reference],
) -> Result<Vec<PathBuf>, ChartError> {
    if bars.is_empty() || bars.iter().all(|b| b.segments.is_empty()) {
        return Err(ChartError::Empty(title.into()));
    }
    let mut names: Vec<String> = Vec::new();
    for b in bars {
        for (s, _) in &b.segments {
            if !names.contains(s) {
                names.push(s.clone());
            }
        }
    }
    let max = bars
        .iter()
        .map(|b| b.segments.iter().map(|s| s.1).sum::<f64>())
        .chain(refs.iter().map(|r| r.value))
        .fold(0.0, f64::max)
        // Room on the right for the legend, clear of the bars.
        * if names.len() > 1 { 1.6 } else { 1.15 };
    fn draw<DB: DrawingBackend>(
        root: &DrawingArea<DB, Shift>,
        title: &str,
        unit: &str,
        bars: &[StackedBar],
        refs: &[Reference],
        names: &[String],
        max: f64,
    ) -> Result<(), String> {
        let n = bars.len();
        let longest = bars
            .iter()
            .map(|b| b.label.chars().count())
            .max()
            .unwrap_or(0) as u32;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(30 + 7 * longest)
            .build_cartesian_2d(0f64..max.max(1e-9), -0.5f64..(n as f64 - 0.5))
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
        chart
            .configure_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc(unit)
            // Six labelled ticks and no minor grid: the bars, not a
            // screen of hairlines, are what the reader looks at.
            .x_labels(6)
            .x_label_formatter(&|x| {
                let digits = if max >= 100.0 {
                    0
                } else if max >= 10.0 {
                    1
                } else {
                    2
                };
                format!("{x:.digits$}")
            })
            .light_line_style(WHITE)
            .disable_y_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        for (k, name) in names.iter().enumerate() {
            let c = distinct(k, names.len());
            let mut rects = Vec::new();
            for (i, b) in bars.iter().enumerate() {
                let start: f64 = b
                    .segments
                    .iter()
                    .take_while(|s| &s.0 != name)
                    .map(|s| s.1)
                    .sum();
                if let Some(v) = b.segments.iter().find(|s| &s.0 == name).map(|s| s.1) {
                    rects.push(Rectangle::new(
                        [(start, i as f64 - 0.3), (start + v, i as f64 + 0.3)],
                        c.filled(),
                    ));
                }
            }
            chart
                .draw_series(rects)
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        for r in refs {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(r.value, -0.5), (r.value, n as f64 - 0.5)],
                    6,
                    4,
                    BLACK.stroke_width(1),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{} ({} {unit})", r.label, tick(r.value)))
                .legend(|(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (6, 0)], BLACK)
                        + PathElement::new(vec![(10, 0), (16, 0)], BLACK)
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    }
    let height = 160 + 70 * bars.len() as u32;
    both(
        stem,
        (900, height.max(360)),
        |root| draw(root, title, unit, bars, refs, &names, max),
        |root| draw(root, title, unit, bars, refs, &names, max),
    )
}

/// The isolation matrix as a heat map: probes down, backends across.
pub fn heat_map(
    stem: &Path,
    title: &str,
    rows: &[String],
    cols: &[String],
    cells: &[Vec<Verdict>],
) -> Result<Vec<PathBuf>, ChartError> {
    if rows.is_empty() || cols.is_empty() {
        return Err(ChartError::Empty(title.into()));
    }
    fn draw<DB: DrawingBackend>(
        root: &DrawingArea<DB, Shift>,
        title: &str,
        rows: &[String],
        cols: &[String],
        cells: &[Vec<Verdict>],
    ) -> Result<(), String> {
        let (nr, nc) = (rows.len(), cols.len());
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(260)
            .build_cartesian_2d(0f64..nc as f64, 0f64..nr as f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(0)
            .y_labels(0)
            .disable_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        // Every row and column labelled at its cell's centre, drawn here:
        // left to the mesh's own ticks, a 38-row matrix got no label at all.
        let font = ("sans-serif", 13).into_font().color(&BLACK);
        for (i, name) in rows.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(0.0, (nr - 1 - i) as f64 + 0.5));
            root.draw(&Text::new(
                name.clone(),
                (px - 8, py),
                font.pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(|e| e.to_string())?;
        }
        for (j, name) in cols.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(j as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (px, py + 8),
                font.pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(|e| e.to_string())?;
        }
        for (r, row) in cells.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let color = match v {
                    Verdict::Isolated => RGBColor(120, 190, 120),
                    Verdict::Exposed => RGBColor(220, 110, 100),
                    Verdict::NotApplicable => RGBColor(200, 200, 200),
                    Verdict::Missing => RGBColor(255, 255, 255),
                };
                let y = (nr - 1 - r) as f64;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(c as f64 + 0.03, y + 0.06), (c as f64 + 0.97, y + 0.94)],
                        color.filled(),
                    )))
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
    let size = (300 + 130 * cols.len() as u32, 90 + 22 * rows.len() as u32);
    both(
        stem,
        (size.0.max(600), size.1.max(300)),
        |root| draw(root, title, rows, cols, cells),
        |root| draw(root, title, rows, cols, cells),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn font_or_skip() -> bool {
        match init_font() {
            Ok(()) => true,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI must have a font: {e}"
                );
                eprintln!("SKIP: {e}");
                false
            }
        }
    }

    #[test]
    fn every_row_every_phase_and_every_tick_is_labelled() {
        if !font_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // 22 phases: more than the palette's 20 colours.
        let names: Vec<String> = (0..22).map(|i| format!("phase{i}")).collect();
        let bars = vec![
            StackedBar {
                label: "microvm (no-OS guest)".into(),
                segments: names.iter().map(|n| (n.clone(), 1.0)).collect(),
            },
            StackedBar {
                label: "container".into(),
                segments: vec![(names[0].clone(), 3.0)],
            },
        ];
        stacked_bars(&dir.path().join("phases"), "Phases", "ms", &bars, &[]).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("phases.svg")).unwrap();
        assert!(lint_svg(&svg).is_empty(), "{:?}", lint_svg(&svg));
        for n in &names {
            assert!(svg.contains(n.as_str()), "legend lacks {n}");
        }
        let colours: std::collections::BTreeSet<(u8, u8, u8)> = (0..22)
            .map(|i| distinct(i, 22))
            .map(|c| (c.0, c.1, c.2))
            .collect();
        assert_eq!(colours.len(), 22, "phases share a colour");
        // 38 probes: every row labelled.
        let rows: Vec<String> = (0..38).map(|i| format!("probe_{i}")).collect();
        let cols = vec!["container".to_owned(), "microvm (no-OS guest)".to_owned()];
        let cells = vec![vec![Verdict::Isolated, Verdict::NotApplicable]; 38];
        heat_map(&dir.path().join("probes"), "Probes", &rows, &cols, &cells).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("probes.svg")).unwrap();
        assert!(lint_svg(&svg).is_empty(), "{:?}", lint_svg(&svg));
        for r in rows.iter().chain(&cols) {
            assert!(
                svg.contains(&format!(">{r}<")) || svg.contains(&format!("\n{r}\n")),
                "no label {r}"
            );
        }
        // A log axis over 3..300 ms has its 1-2-5 ticks.
        assert_eq!(log_ticks(3.0, 300.0), [5.0, 10.0, 20.0, 50.0, 100.0, 200.0]);
        // The lint finds what it looks for.
        assert!(!lint_svg("<svg><text x=\"1\"> </text></svg>").is_empty());
        assert!(
            !lint_svg("<svg><rect width=\"12\" height=\"10\" fill=\"#123456\"/></svg>").is_empty()
        );
    }

    #[test]
    fn charts_are_written_as_svg_and_png() {
        if !font_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = vec![
            Distribution {
                label: "container".into(),
                values: vec![4.0, 4.5, 5.0, 6.0, 9.0],
            },
            Distribution {
                label: "crun".into(),
                values: vec![10.0, 12.0, 13.0, 20.0],
            },
        ];
        let files = box_plot_log(
            &dir.path().join("startup"),
            "Startup",
            "ms",
            &d,
            &[Reference {
                label: "Firecracker".into(),
                value: 125.0,
            }],
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("container") && svg.contains("Firecracker")
        );
        let png = std::fs::read(&files[1]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let bars = vec![StackedBar {
            label: "container".into(),
            segments: vec![("clone".into(), 1.0), ("mounts".into(), 0.5)],
        }];
        let files = stacked_bars(&dir.path().join("phases"), "Phases", "ms", &bars, &[]).unwrap();
        assert!(std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("mounts"));
        let files = heat_map(
            &dir.path().join("probes"),
            "Probes",
            &["pid".into()],
            &["container".into(), "microvm".into()],
            &[vec![Verdict::Isolated, Verdict::Exposed]],
        )
        .unwrap();
        assert!(files[1].exists());
    }

    #[test]
    fn empty_data_is_an_error_not_a_blank_chart() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            box_plot_log(&dir.path().join("x"), "X", "ms", &[], &[]),
            Err(ChartError::Empty(_)) | Err(ChartError::NoFont)
        ));
        assert!(quartiles(&[f64::NAN]).is_none());
        assert_eq!(
            quartiles(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap(),
            [1.0, 2.0, 3.0, 4.0, 5.0]
        );
    }
}
