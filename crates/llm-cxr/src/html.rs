//! One self-contained HTML page (styles inline, images as data URIs) for evaluation results:
//! markdown sections rendered with pulldown-cmark, PNG figures, and tables of sample cases.

use base64::Engine;

/// A cell of a sample-case table.
pub enum Cell {
    Text(String),
    /// PNG bytes, shown at `width` pixels.
    Png {
        bytes: Vec<u8>,
        width: u32,
    },
}

/// A page under construction.
pub struct Page {
    title: String,
    body: String,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}\
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}\
th{background:#f2f2f2}\
td.text{max-width:420px;white-space:pre-wrap}\
img{image-rendering:auto}\
h2{border-bottom:2px solid #0072b2;padding-bottom:4px;margin-top:2em}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn png_tag(bytes: &[u8], width: u32, alt: &str) -> String {
    format!(
        "<img width=\"{width}\" alt=\"{}\" src=\"data:image/png;base64,{}\">",
        escape(alt),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

impl Page {
    pub fn new(title: &str) -> Self {
        Page {
            title: title.to_string(),
            body: format!("<h1>{}</h1>\n", escape(title)),
        }
    }

    /// Markdown (GitHub tables allowed). Raw HTML in it is escaped, not passed through.
    pub fn markdown(&mut self, md: &str) {
        use pulldown_cmark::{Event, Options, Parser};
        let parser = Parser::new_ext(md, Options::ENABLE_TABLES).map(|e| match e {
            Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
            e => e,
        });
        pulldown_cmark::html::push_html(&mut self.body, parser);
    }

    pub fn figure(&mut self, png: &[u8], width: u32, caption: &str) {
        self.body += &format!(
            "<figure>{}<figcaption>{}</figcaption></figure>\n",
            png_tag(png, width, caption),
            escape(caption)
        );
    }

    /// A table with a header row; text cells keep their line breaks.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<Cell>]) {
        self.body += "<table>\n<tr>";
        for h in header {
            self.body += &format!("<th>{}</th>", escape(h));
        }
        self.body += "</tr>\n";
        for row in rows {
            self.body += "<tr>";
            for cell in row {
                self.body += &match cell {
                    Cell::Text(t) => format!("<td class=\"text\">{}</td>", escape(t)),
                    Cell::Png { bytes, width } => {
                        format!("<td>{}</td>", png_tag(bytes, *width, ""))
                    }
                };
            }
            self.body += "</tr>\n";
        }
        self.body += "</table>\n";
    }

    pub fn finish(self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{}</body>\n</html>\n",
            escape(&self.title),
            self.body
        )
    }
}

/// An image file as a PNG thumbnail `side` pixels wide (grey, aspect kept).
pub fn thumbnail(path: &std::path::Path, side: u32) -> anyhow::Result<Vec<u8>> {
    let img = cxr_image::load_image(path)?;
    let grey = image::GrayImage::from_raw(
        img.width,
        img.height,
        img.pixels
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect(),
    )
    .ok_or_else(|| anyhow::anyhow!("{}: pixel buffer does not match its size", path.display()))?;
    let height = (side as u64 * img.height as u64 / img.width.max(1) as u64).max(1) as u32;
    let small = image::imageops::resize(&grey, side, height, image::imageops::FilterType::Triangle);
    let mut png = Vec::new();
    small.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes_text_and_renders_markdown_tables() {
        let mut page = Page::new("a <b> & c");
        page.markdown("| x | y |\n|---|---|\n| 1 | <script> |\n");
        page.table(
            &["report"],
            &[vec![
                Cell::Text("left < right".into()),
                Cell::Png {
                    bytes: vec![1, 2, 3],
                    width: 8,
                },
            ]],
        );
        let html = page.finish();
        assert!(html.contains("<title>a &lt;b&gt; &amp; c</title>"));
        assert!(html.contains("<td>1</td>"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("left &lt; right"));
        assert!(html.contains("src=\"data:image/png;base64,AQID\""));
    }
}
