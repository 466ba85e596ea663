//! Charts (plotters): every chart is written as SVG (for the book) and PNG.
//!
//! Text needs a font: plotters' `ab_glyph` backend is given DejaVu Sans
//! (Debian: fonts-dejavu-core), found at run time; without it the charts
//! cannot be drawn and the error says which package to install.
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

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
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = qs.iter().map(|q| q.0.clone()).collect();
        chart
            .configure_mesh()
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
                .label(format!("{} ({})", r.label, r.value))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], palette(7)));
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
        * 1.15;
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
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(110)
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
            .disable_y_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        for (k, name) in names.iter().enumerate() {
            let c = palette(k);
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
                .label(format!("{} ({})", r.label, r.value))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
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
            .x_labels(nc * 2)
            .y_labels(nr * 2)
            .x_label_formatter(&|x| {
                let f = x.fract();
                if (f - 0.5).abs() < 0.01 {
                    cols.get(x.floor() as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| {
                let f = y.fract();
                if (f - 0.5).abs() < 0.01 {
                    rows.get(nr - 1 - y.floor() as usize)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .disable_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
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
