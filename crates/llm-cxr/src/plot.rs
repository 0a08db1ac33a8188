//! PNG charts for training curves and image grids. Drawing is embedded-graphics (lines and its
//! built-in bitmap font, so no system fonts are needed) onto an `image` buffer.

use embedded_graphics::mono_font::{ascii::FONT_6X10, ascii::FONT_9X15_BOLD, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, Polyline, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};

struct Canvas(image::RgbImage);

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Self::Error> {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.0
                    .put_pixel(p.x as u32, p.y as u32, image::Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

/// The chart's title, centred at the top.
fn draw_title(c: &mut Canvas, title: &str, width: i32) -> anyhow::Result<()> {
    Text::with_alignment(
        title,
        Point::new(width / 2, 22),
        MonoTextStyle::new(&FONT_9X15_BOLD, Rgb888::BLACK),
        Alignment::Center,
    )
    .draw(c)?;
    Ok(())
}

/// Colour-blind-safe palette (Okabe-Ito).
const PALETTE: [Rgb888; 7] = [
    Rgb888::new(0, 114, 178),
    Rgb888::new(213, 94, 0),
    Rgb888::new(0, 158, 115),
    Rgb888::new(204, 121, 167),
    Rgb888::new(230, 159, 0),
    Rgb888::new(86, 180, 233),
    Rgb888::new(0, 0, 0),
];

fn encode_png(img: &image::DynamicImage) -> anyhow::Result<Vec<u8>> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

/// Tick label: short, with an exponent when needed.
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e4).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A line chart of named series as PNG bytes; with `log_y` the y axis is logarithmic (values
/// at or below zero are left out). Series are smoothed by nothing: what was logged is drawn.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    log_y: bool,
) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (800i32, 500i32);
    let (left, right, top, bottom) = (70i32, 150i32, 40i32, 50i32);
    let mut c = Canvas(image::RgbImage::from_pixel(
        w as u32,
        h as u32,
        image::Rgb([255; 3]),
    ));
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
        .collect();
    let black = Rgb888::BLACK;
    let text = MonoTextStyle::new(&FONT_6X10, black);
    draw_title(&mut c, title, w)?;
    let (x0, x1, y0, y1) = points.iter().fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, cc, d), &(x, y)| (a.min(x), b.max(x), cc.min(ty(y)), d.max(ty(y))),
    );
    let (plot_w, plot_h) = (w - left - right, h - top - bottom);
    Rectangle::new(
        Point::new(left, top),
        Size::new(plot_w as u32, plot_h as u32),
    )
    .into_styled(PrimitiveStyle::with_stroke(black, 1))
    .draw(&mut c)?;
    Text::with_alignment(
        x_label,
        Point::new(left + plot_w / 2, h - 12),
        text,
        Alignment::Center,
    )
    .draw(&mut c)?;
    Text::new(y_label, Point::new(8, top - 8), text).draw(&mut c)?;
    if points.is_empty() {
        return encode_png(&image::DynamicImage::ImageRgb8(c.0));
    }
    let (x1, y1) = (
        if x1 > x0 { x1 } else { x0 + 1.0 },
        if y1 > y0 { y1 } else { y0 + 1.0 },
    );
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * plot_w as f64).round() as i32;
    let py = |y: f64| top + plot_h - ((ty(y) - y0) / (y1 - y0) * plot_h as f64).round() as i32;
    let grey = PrimitiveStyle::with_stroke(Rgb888::new(220, 220, 220), 1);
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let (xv, yv) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        let (gx, gy) = (px(xv), top + plot_h - (f * plot_h as f64).round() as i32);
        Line::new(Point::new(gx, top + 1), Point::new(gx, top + plot_h - 1))
            .into_styled(grey)
            .draw(&mut c)?;
        Line::new(Point::new(left + 1, gy), Point::new(left + plot_w - 1, gy))
            .into_styled(grey)
            .draw(&mut c)?;
        Text::with_alignment(
            &tick_label(xv),
            Point::new(gx, top + plot_h + 14),
            text,
            Alignment::Center,
        )
        .draw(&mut c)?;
        let label = tick_label(if log_y { 10f64.powf(yv) } else { yv });
        Text::with_alignment(&label, Point::new(left - 5, gy + 3), text, Alignment::Right)
            .draw(&mut c)?;
    }
    for (i, (name, s)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<Point> = s
            .iter()
            .filter(|&&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
            .map(|&(x, y)| Point::new(px(x), py(y)))
            .collect();
        if pts.len() == 1 {
            Rectangle::with_center(pts[0], Size::new(3, 3))
                .into_styled(PrimitiveStyle::with_fill(color))
                .draw(&mut c)?;
        }
        Polyline::new(&pts)
            .into_styled(PrimitiveStyle::with_stroke(color, 2))
            .draw(&mut c)?;
        let ly = top + 10 + 16 * i as i32;
        Line::new(
            Point::new(w - right + 12, ly),
            Point::new(w - right + 32, ly),
        )
        .into_styled(PrimitiveStyle::with_stroke(color, 3))
        .draw(&mut c)?;
        Text::new(name, Point::new(w - right + 38, ly + 3), text).draw(&mut c)?;
    }
    encode_png(&image::DynamicImage::ImageRgb8(c.0))
}

/// One observation's ROC curve and its area.
pub struct RocPanel<'a> {
    pub name: &'a str,
    pub curve: &'a [(f64, f64)],
    pub auroc: Option<f64>,
}

/// ROC curves as small multiples, one square panel per observation (name, curve, AUROC), four
/// to a row, each with the chance diagonal; an observation with no curve (one class only in the
/// references) gets an empty panel that says so.
pub fn roc_grid(title: &str, panels: &[RocPanel]) -> anyhow::Result<Vec<u8>> {
    let (side, pad, cols) = (170i32, 36i32, 4i32);
    let rows = (panels.len() as u32).div_ceil(cols as u32).max(1) as i32;
    let (w, h) = (cols * (side + 2 * pad), 40 + rows * (side + 2 * pad));
    let mut c = Canvas(image::RgbImage::from_pixel(
        w as u32,
        h as u32,
        image::Rgb([255; 3]),
    ));
    let black = Rgb888::BLACK;
    let text = MonoTextStyle::new(&FONT_6X10, black);
    draw_title(&mut c, title, w)?;
    for (
        i,
        RocPanel {
            name,
            curve,
            auroc: auc,
        },
    ) in panels.iter().enumerate()
    {
        let (col, row) = (i as i32 % cols, i as i32 / cols);
        let (x0, y0) = (
            col * (side + 2 * pad) + pad,
            40 + row * (side + 2 * pad) + pad / 2,
        );
        let px = |x: f64| x0 + (x.clamp(0.0, 1.0) * side as f64).round() as i32;
        let py = |y: f64| y0 + side - (y.clamp(0.0, 1.0) * side as f64).round() as i32;
        Rectangle::new(Point::new(x0, y0), Size::new(side as u32, side as u32))
            .into_styled(PrimitiveStyle::with_stroke(black, 1))
            .draw(&mut c)?;
        Line::new(Point::new(px(0.0), py(0.0)), Point::new(px(1.0), py(1.0)))
            .into_styled(PrimitiveStyle::with_stroke(Rgb888::new(200, 200, 200), 1))
            .draw(&mut c)?;
        let label = match auc {
            Some(a) => format!("{name}  AUROC {a:.3}"),
            None => format!("{name}  (one class only)"),
        };
        Text::new(&label, Point::new(x0, y0 - 6), text).draw(&mut c)?;
        Text::with_alignment(
            "FPR",
            Point::new(x0 + side / 2, y0 + side + 14),
            text,
            Alignment::Center,
        )
        .draw(&mut c)?;
        Text::with_alignment(
            "TPR",
            Point::new(x0 - 4, y0 + side / 2),
            text,
            Alignment::Right,
        )
        .draw(&mut c)?;
        let pts: Vec<Point> = curve
            .iter()
            .map(|&(x, y)| Point::new(px(x), py(y)))
            .collect();
        Polyline::new(&pts)
            .into_styled(PrimitiveStyle::with_stroke(PALETTE[0], 2))
            .draw(&mut c)?;
    }
    encode_png(&image::DynamicImage::ImageRgb8(c.0))
}

/// Rows of grey images as one PNG, each image scaled (nearest) to at least 128 px high.
pub fn image_grid(rows: &[Vec<image::GrayImage>]) -> anyhow::Result<Vec<u8>> {
    let cell = rows
        .iter()
        .flatten()
        .map(|i| i.height().max(128))
        .max()
        .unwrap_or(128);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let gap = 4;
    let mut grid = image::GrayImage::from_pixel(
        cols * (cell + gap) + gap,
        rows.len() as u32 * (cell + gap) + gap,
        image::Luma([255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (col, img) in row.iter().enumerate() {
            let scaled =
                image::imageops::resize(img, cell, cell, image::imageops::FilterType::Nearest);
            image::imageops::overlay(
                &mut grid,
                &scaled,
                (gap + col as u32 * (cell + gap)) as i64,
                (gap + r as u32 * (cell + gap)) as i64,
            );
        }
    }
    encode_png(&image::DynamicImage::ImageLuma8(grid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_draws_each_series_in_its_colour() {
        let s1: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
            .collect();
        let s2: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 0.5)).collect();
        let png = line_chart("t", "step", "loss", &[("a", s1), ("b", s2)], true).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 500));
        let count = |c: Rgb888| {
            img.pixels()
                .filter(|p| p.0 == [c.r(), c.g(), c.b()])
                .count()
        };
        assert!(count(PALETTE[0]) > 300, "first series drawn");
        assert!(count(PALETTE[1]) > 300, "second series drawn");
    }

    #[test]
    fn grid_places_rows_and_columns() {
        let dark = image::GrayImage::from_pixel(64, 64, image::Luma([0]));
        let png = image_grid(&[vec![dark.clone(), dark.clone()], vec![dark]]).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (2 * 132 + 4, 2 * 132 + 4));
        assert_eq!(
            img.get_pixel(4 + 132 + 10, 4 + 132 + 10).0,
            [255],
            "empty cell stays white"
        );
        assert_eq!(img.get_pixel(4 + 10, 4 + 132 + 10).0, [0]);
    }
}
