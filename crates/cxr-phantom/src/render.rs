//! Rasterisation of a phantom: an analytic attenuation map (soft tissue, aerated lungs with vessel
//! markings, heart, mediastinum, trachea, spine, ribs, clavicles, scapulae, diaphragm, gastric
//! bubble, plus each finding) turned into a radiograph by Beer-Lambert exposure, contrast, heel
//! effect and quantum noise.
//!
//! Coordinates are normalised: `u` runs 0..1 across the image (patient right is image left, as on
//! every frontal radiograph) and `v` 0..1 downwards; one unit is about 35 cm. Per side, `d` is the
//! distance from the midline, so the same lung geometry serves both sides.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::findings::{Finding, FindingKind, Lobe, Severity, Side};
use crate::View;
use cxr_image::GrayImage;

/// Sampled anatomy and acquisition of one phantom (normalised units).
#[derive(Debug, Clone, PartialEq)]
pub struct Anatomy {
    pub midline: f32,
    pub body_half_width: f32,
    pub lung_top: f32,
    /// Height of the right / left hemidiaphragm dome.
    pub dome_right: f32,
    pub dome_left: f32,
    /// Half-width of each lung at its widest.
    pub lung_width: f32,
    pub mediastinum_half_width: f32,
    /// Cardiothoracic ratio.
    pub ctr: f32,
    pub rib_spacing: f32,
    pub clavicle_level: f32,
    pub exposure: f32,
    pub gamma: f32,
    pub noise: f32,
    pub texture_seed: u64,
    /// Lesion (nodule or mass) centre as (t, lateral fraction) within its lobe, and radius.
    pub lesion_radius: f32,
    /// Fractured rib, 0 = fourth rib (only drawn when a fracture is present).
    pub fracture_rib: usize,
}

const MM_PER_UNIT: f32 = 350.0;
/// Distance of the lung apex from the midline.
const APEX_D: f32 = 0.12;

impl Anatomy {
    /// Samples the anatomy. The same number of random values is drawn whatever the findings,
    /// so a phantom and its finding-free twin share every other trait (the distinctness test
    /// relies on this).
    pub(crate) fn sample(rng: &mut impl Rng, view: View, findings: &[Finding]) -> Self {
        let find = |k: FindingKind| findings.iter().find(|f| f.kind == k);
        let normal_ctr = rng.random_range(0.40..0.47);
        let enlarged_ctr = [
            rng.random_range(0.54..0.57),
            rng.random_range(0.59..0.63),
            rng.random_range(0.66..0.70),
        ];
        let mut ctr = match find(FindingKind::Cardiomegaly) {
            Some(f) => enlarged_ctr[f.severity.unwrap_or(Severity::Mild).level()],
            None => normal_ctr,
        };
        let normal_mediastinum = rng.random_range(0.045..0.058);
        let wide_mediastinum = rng.random_range(0.085..0.105);
        let mediastinum_half_width = if find(FindingKind::EnlargedCardiomediastinum).is_some() {
            wide_mediastinum
        } else {
            normal_mediastinum
        };
        let top = rng.random_range(0.0..1.0f32);
        let dome = rng.random_range(0.0..1.0f32);
        let (lung_top, mut dome_right) = match view {
            View::Pa => (0.09 + 0.04 * top, 0.66 + 0.06 * dome),
            View::Ap => {
                ctr += 0.03; // magnification of the anterior heart
                (0.11 + 0.04 * top, 0.61 + 0.06 * dome)
            }
        };
        let mut dome_left = dome_right + rng.random_range(0.012..0.03);
        if let Some(f) = find(FindingKind::Atelectasis) {
            // Volume loss lifts the hemidiaphragm on the collapsed side.
            let lift = if f.certain { 0.025 } else { 0.012 };
            if f.side.is_some_and(|s| s.includes(Side::Right)) {
                dome_right -= lift;
            }
            if f.side.is_some_and(|s| s.includes(Side::Left)) {
                dome_left -= lift;
            }
        }
        let radius = rng.random_range(0.0..1.0f32);
        let lesion_radius = match (find(FindingKind::Nodule), find(FindingKind::Mass)) {
            (_, Some(_)) => 0.045 + 0.025 * radius,
            (Some(f), _) if !f.certain => 0.010 + 0.003 * radius,
            _ => 0.013 + 0.011 * radius,
        };
        let clavicle = rng.random_range(0.0..1.0f32);
        Self {
            midline: 0.5 + rng.random_range(-0.015..0.015),
            body_half_width: rng.random_range(0.41..0.46),
            lung_top,
            dome_right,
            dome_left,
            lung_width: rng.random_range(0.33..0.375),
            mediastinum_half_width,
            ctr,
            rib_spacing: rng.random_range(0.056..0.064),
            clavicle_level: lung_top
                + match view {
                    View::Pa => 0.035 + 0.02 * clavicle,
                    View::Ap => 0.02 * clavicle,
                },
            exposure: rng.random_range(1.35..1.8),
            gamma: rng.random_range(0.85..1.15),
            noise: rng.random_range(0.008..0.022),
            texture_seed: rng.random(),
            lesion_radius,
            fracture_rib: rng.random_range(0..6),
        }
    }

    /// Lesion diameter in millimetres, for the report.
    pub fn lesion_mm(&self) -> u32 {
        (2.0 * self.lesion_radius * MM_PER_UNIT).round() as u32
    }

    fn dome(&self, side: Side) -> f32 {
        if side == Side::Right {
            self.dome_right
        } else {
            self.dome_left
        }
    }

    /// Level of the costophrenic angle (lowest point of the lung).
    fn costophrenic(&self, side: Side) -> f32 {
        self.dome(side) + 0.09
    }

    /// Height of the hemidiaphragm at distance `d` from the midline.
    fn diaphragm(&self, side: Side, d: f32) -> f32 {
        let x = ((d - 0.05) / self.lung_width).clamp(0.0, 1.2);
        self.dome(side) + 0.09 * x.powf(2.2) - 0.015 * (1.0 - x).powi(2)
    }

    /// Fraction of the lung's height at `v` (0 at the apex, 1 at the costophrenic angle).
    fn lung_t(&self, side: Side, v: f32) -> f32 {
        (v - self.lung_top) / (self.costophrenic(side) - self.lung_top)
    }

    /// Lateral border of the lung at height `v`: a rounded apex widening to the costophrenic angle.
    fn lateral(&self, side: Side, v: f32) -> f32 {
        let t = self.lung_t(side, v);
        if t <= 0.0 {
            return APEX_D;
        }
        let rise = 1.0 - (1.0 - (t / 0.5).min(1.0)).powi(2);
        APEX_D + (self.lung_width - APEX_D) * rise.sqrt() * (0.9 + 0.1 * t.min(1.0))
    }

    /// Medial border of the lung at height `v`: the apex curves away from the midline.
    fn medial_at(&self, side: Side, v: f32) -> f32 {
        let t = self.lung_t(side, v).max(0.0);
        let m = self.mediastinum_half_width * 0.8;
        m + (APEX_D - m) * (1.0 - smoothstep(0.0, 0.3, t))
    }

    /// A point inside a lung given its height fraction and lateral fraction.
    fn lung_point(&self, side: Side, t: f32, lateral_fraction: f32) -> (f32, f32) {
        let v = self.lung_top + t * (self.costophrenic(side) - self.lung_top);
        let (m, l) = (self.medial_at(side, v), self.lateral(side, v));
        let d = m + lateral_fraction * (l - m);
        (self.side_u(side, d), v)
    }

    fn side_u(&self, side: Side, d: f32) -> f32 {
        if side == Side::Right {
            self.midline - d
        } else {
            self.midline + d
        }
    }

    fn hilum(&self, side: Side) -> (f32, f32) {
        let d = self.mediastinum_half_width + 0.045;
        (self.side_u(side, d), self.lung_top + 0.31)
    }

    fn carina(&self) -> f32 {
        self.lung_top + 0.22
    }
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// 1 inside (x > 0), 0 outside, with a soft edge of width `w`.
fn inside(x: f32, w: f32) -> f32 {
    (x / w + 0.5).clamp(0.0, 1.0)
}

fn hash2(x: i32, y: i32, seed: u64) -> f32 {
    let mut h = seed
        ^ (x as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u32 as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Smooth value noise in [0, 1] with features of size `1 / freq`.
fn value_noise(u: f32, v: f32, freq: f32, seed: u64) -> f32 {
    let (x, y) = (u * freq, v * freq);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (xi, yi) = (x0 as i32, y0 as i32);
    let a = hash2(xi, yi, seed);
    let b = hash2(xi + 1, yi, seed);
    let c = hash2(xi, yi + 1, seed);
    let d = hash2(xi + 1, yi + 1, seed);
    a + (b - a) * sx + (c - a) * sy + (a - b - c + d) * sx * sy
}

fn dist_to_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    (qx * qx + qy * qy).sqrt()
}

fn dist_to_polyline(p: (f32, f32), pts: &[(f32, f32)]) -> f32 {
    pts.windows(2)
        .map(|w| dist_to_segment(p, w[0], w[1]))
        .fold(f32::INFINITY, f32::min)
}

/// Lobe membership (0..1) from height fraction `t` and lateral fraction `l`.
fn lobe_weight(lobe: Lobe, t: f32, l: f32) -> f32 {
    let band = |lo: f32, hi: f32| {
        smoothstep(lo - 0.05, lo + 0.05, t) * (1.0 - smoothstep(hi - 0.05, hi + 0.05, t))
    };
    match lobe {
        Lobe::RightUpper => band(-1.0, 0.38),
        Lobe::RightMiddle => band(0.38, 0.70) * (1.0 - smoothstep(0.65, 0.8, l)),
        Lobe::RightLower => band(0.64, 2.0),
        Lobe::LeftUpper => band(-1.0, 0.45),
        Lobe::Lingula => band(0.45, 0.72) * (1.0 - smoothstep(0.7, 0.85, l)),
        Lobe::LeftLower => band(0.68, 2.0),
    }
}

/// Typical (t, lateral fraction) centre of a lobe, for placing focal findings.
fn lobe_centre(lobe: Lobe) -> (f32, f32) {
    match lobe {
        Lobe::RightUpper | Lobe::LeftUpper => (0.24, 0.55),
        Lobe::RightMiddle | Lobe::Lingula => (0.56, 0.45),
        Lobe::RightLower | Lobe::LeftLower => (0.82, 0.55),
    }
}

/// A blob of extra attenuation: centre, radius (sigma or disc radius), amplitude, kind.
struct Blob {
    u: f32,
    v: f32,
    r: f32,
    amp: f32,
    disc: bool,
    lobulated: f32,
}

/// Per-side state used while rendering.
#[derive(Clone, Copy, Default)]
struct SideFindings {
    effusion: Option<(Severity, bool)>,
    pneumothorax: Option<(Severity, bool)>,
    atelectasis: Option<bool>,
    thickening: bool,
    fracture: Option<bool>,
}

pub(crate) fn render(
    an: &Anatomy,
    findings: &[Finding],
    view: View,
    size: u32,
    rng: &mut ChaCha8Rng,
) -> GrayImage {
    let px = 1.0 / size as f32;
    let edge = (1.5 * px).max(0.003);
    // Devices are drawn at least half a pixel wide so they survive downsampling.
    let thin = (0.5 * px).max(0.003);
    let heel = rng.random_range(-0.06f32..0.06);
    let brightness = rng.random_range(-0.03f32..0.03);
    let sides = [Side::Right, Side::Left];
    let mut per_side = [SideFindings::default(); 2];
    let mut lobar: Vec<(Lobe, FindingKind, bool)> = Vec::new();
    let mut blobs: Vec<Blob> = Vec::new();
    let mut edema: Option<(Severity, bool)> = None;
    let (mut ett, mut line, mut pacer) = (false, false, false);
    for f in findings {
        for (i, &s) in sides.iter().enumerate() {
            if !f.side.is_some_and(|fs| fs.includes(s)) {
                continue;
            }
            let sev = f.severity.unwrap_or(Severity::Mild);
            match f.kind {
                FindingKind::PleuralEffusion => per_side[i].effusion = Some((sev, f.certain)),
                FindingKind::Pneumothorax => per_side[i].pneumothorax = Some((sev, f.certain)),
                FindingKind::Atelectasis => per_side[i].atelectasis = Some(f.certain),
                FindingKind::PleuralThickening => per_side[i].thickening = true,
                FindingKind::Fracture => per_side[i].fracture = Some(f.certain),
                _ => {}
            }
        }
        match f.kind {
            FindingKind::Consolidation | FindingKind::LungOpacity => {
                if let Some(l) = f.lobe {
                    lobar.push((l, f.kind, f.certain));
                }
            }
            FindingKind::Pneumonia => {
                if let Some(lobe) = f.lobe {
                    let (tc, lc) = lobe_centre(lobe);
                    for _ in 0..rng.random_range(5..9) {
                        let t = (tc + rng.random_range(-0.14..0.14)).clamp(0.08, 0.95);
                        let l = (lc + rng.random_range(-0.3..0.3)).clamp(0.15, 0.9);
                        let (u, v) = an.lung_point(lobe.side(), t, l);
                        blobs.push(Blob {
                            u,
                            v,
                            r: rng.random_range(0.018..0.036),
                            amp: rng.random_range(0.35..0.6) * if f.certain { 1.0 } else { 0.7 },
                            disc: false,
                            lobulated: 0.0,
                        });
                    }
                }
            }
            FindingKind::Nodule | FindingKind::Mass => {
                if let Some(lobe) = f.lobe {
                    let (tc, lc) = lobe_centre(lobe);
                    let t = tc + rng.random_range(-0.06..0.06);
                    let l = lc + rng.random_range(-0.15..0.15);
                    let (u, v) = an.lung_point(lobe.side(), t, l);
                    blobs.push(Blob {
                        u,
                        v,
                        r: an.lesion_radius,
                        amp: if f.kind == FindingKind::Mass {
                            0.85
                        } else {
                            0.75
                        },
                        disc: true,
                        lobulated: if f.kind == FindingKind::Mass {
                            0.12
                        } else {
                            0.03
                        },
                    });
                }
            }
            FindingKind::Edema => edema = Some((f.severity.unwrap_or(Severity::Mild), f.certain)),
            FindingKind::EndotrachealTube => ett = true,
            FindingKind::CentralLine => line = true,
            FindingKind::Pacemaker => pacer = true,
            _ => {}
        }
    }

    let cx = an.midline;
    let lung_max = an.lung_width * 1.0;
    let heart_w = an.ctr * 2.0 * lung_max;
    let heart_cu = cx + 0.17 * heart_w;
    let heart_cv = an.dome_right - 0.02;
    let (heart_rx, heart_ry) = (heart_w / 2.0, 0.115 + 0.2 * (heart_w - 0.28).max(0.0));
    let carina = an.carina();
    let seed = an.texture_seed;
    let pacer_leads: [Vec<(f32, f32)>; 2] = [
        vec![
            (cx + 0.26, an.lung_top + 0.05),
            (cx + 0.10, an.lung_top + 0.10),
            (cx + 0.02, an.lung_top + 0.2),
            (cx - 0.01, heart_cv - 0.05),
            (cx + 0.06, heart_cv + 0.04),
        ],
        vec![
            (cx + 0.26, an.lung_top + 0.05),
            (cx + 0.11, an.lung_top + 0.09),
            (cx + 0.03, an.lung_top + 0.19),
            (cx - 0.04, heart_cv - 0.06),
        ],
    ];
    let line_path = [
        (cx - 0.30, an.clavicle_level + 0.01),
        (cx - 0.12, an.clavicle_level + 0.035),
        (cx - 0.04, an.clavicle_level + 0.08),
        (cx - 0.032, carina + 0.06),
    ];

    let mut pixels = Vec::with_capacity((size * size) as usize);
    for y in 0..size {
        let v = (y as f32 + 0.5) * px;
        for x in 0..size {
            let u = (x as f32 + 0.5) * px;
            let d = (u - cx).abs();
            let side = if u < cx { Side::Right } else { Side::Left };
            let sf = per_side[if side == Side::Right { 0 } else { 1 }];
            let fine = value_noise(u, v, 60.0, seed);
            let coarse = value_noise(u, v, 14.0, seed ^ 0xABCD);

            // Body outline: neck widening into shoulders, then the thorax.
            let body_hw = 0.085 + (an.body_half_width - 0.085) * smoothstep(0.0, 0.11, v);
            let m_body = inside(body_hw - d, edge * 2.0);
            let depth = (1.0 - (d / body_hw).powi(2)).max(0.0).sqrt();
            let mut a = m_body * (0.45 + 0.55 * depth);

            // Lungs.
            let t = an.lung_t(side, v);
            let (m_d, l_d) = (an.medial_at(side, v), an.lateral(side, v));
            let diaph = an.diaphragm(side, d);
            let lung_dist = (d - m_d).min(l_d - d).min(diaph - v);
            let m_lung = inside(lung_dist, edge);
            let lf = ((d - m_d) / (l_d - m_d).max(1e-3)).clamp(0.0, 1.0);
            let mut markings = 1.0;
            if let Some((sev, certain)) = sf.pneumothorax {
                let edge_d = if sev == Severity::Severe {
                    m_d + (l_d - m_d) * (0.5 + 0.1 * t)
                } else {
                    let reach = if certain { 0.3 } else { 0.12 };
                    let depth = if certain { 0.075 } else { 0.035 };
                    l_d - depth * (1.0 - (t / reach)).max(0.0) - 0.002
                };
                let outside = inside(d - edge_d, edge);
                markings *= 1.0 - outside;
                a -= 0.2 * outside * m_lung;
                a += 0.18
                    * (-((d - edge_d) / 0.0035).powi(2)).exp()
                    * m_lung
                    * (t < 1.0) as u8 as f32;
            }
            if m_lung > 0.0 {
                let profile = (lung_dist / 0.05).clamp(0.0, 1.0).sqrt();
                a -= 0.72 * m_lung * (0.6 + 0.4 * profile);
                let (hu, hv) = an.hilum(side);
                let r_h = ((u - hu).powi(2) + (v - hv).powi(2)).sqrt();
                let vessels = (-r_h / 0.16).exp() * (0.55 + 0.45 * fine) + 0.05 * fine;
                a += 0.16 * m_lung * vessels * markings;
                // Edema: perihilar haze and, when moderate or worse, septal lines at the bases.
                if let Some((sev, certain)) = edema {
                    let amp = [0.16, 0.3, 0.55][sev.level()] * if certain { 1.0 } else { 0.6 };
                    let sigma = [0.09, 0.11, 0.14][sev.level()];
                    let haze = (-(r_h * r_h) / (2.0 * sigma * sigma)).exp();
                    let blotch = if sev == Severity::Severe {
                        0.6 + 0.6 * coarse
                    } else {
                        0.8 + 0.2 * fine
                    };
                    a += amp * m_lung * haze * blotch + 0.1 * amp * m_lung;
                    if sev >= Severity::Moderate && t > 0.6 && lf > 0.75 {
                        let s = ((v / 0.018).fract() - 0.5).abs();
                        a += 0.25 * m_lung * inside(0.08 - s, 0.04);
                    }
                }
                // Lobar opacities.
                for &(lobe, kind, certain) in &lobar {
                    if lobe.side() != side {
                        continue;
                    }
                    let w = lobe_weight(lobe, t, lf) * m_lung;
                    if w <= 0.0 {
                        continue;
                    }
                    if kind == FindingKind::Consolidation {
                        let amp = if certain { 0.55 } else { 0.3 };
                        let shape = smoothstep(0.45, 0.75, 0.55 * coarse + 0.25 * fine + 0.45 * w);
                        let mut c = amp * w * shape * (0.9 + 0.1 * fine);
                        if certain {
                            // Air bronchograms: dark branches radiating from the hilum.
                            let (hu, hv) = an.hilum(side);
                            let ang = (v - hv).atan2(u - hu);
                            let s = ((ang * 9.0 + 3.0 * coarse).sin()).abs();
                            c -= 0.3 * w * inside(0.08 - s, 0.05) * inside(r_h - 0.05, 0.02);
                        }
                        a += c;
                    } else {
                        let (tc, lc) = lobe_centre(lobe);
                        let (bu, bv) = an.lung_point(side, tc, lc);
                        let r2 = (u - bu).powi(2) + (v - bv).powi(2);
                        a +=
                            0.32 * w * (-r2 / (2.0 * 0.07f32.powi(2))).exp() * (0.7 + 0.3 * coarse);
                    }
                }
                if let Some(certain) = sf.atelectasis {
                    let base = an.dome(side) - 0.05 - 0.03 * lf;
                    let thick = if certain { 0.007 } else { 0.02 };
                    let amp = if certain { 0.55 } else { 0.25 };
                    let band = inside(thick - (v - base).abs(), edge)
                        * inside(lf - 0.15, 0.05)
                        * inside(0.85 - lf, 0.05);
                    a += amp * band * m_lung;
                }
            }

            // Pleural fluid, with a meniscus climbing the lateral wall; it hides the diaphragm.
            if let Some((sev, certain)) = sf.effusion {
                let h = [0.07, 0.17, 0.32][sev.level()] * if certain { 1.0 } else { 0.5 };
                let top = an.costophrenic(side) - h
                    + 0.05 * (1.0 - (d / an.lung_width).min(1.0)) * (h / 0.17).min(1.0);
                let wall = an.lateral(side, v.min(an.costophrenic(side)));
                let in_thorax = inside(d - m_d, edge) * inside(wall + 0.008 - d, edge);
                let fluid = smoothstep(top - 0.02, top + 0.02, v)
                    * in_thorax
                    * inside(diaph + 0.03 - v, edge);
                a += 0.6 * fluid;
            }
            if sf.thickening {
                let wall = an.lateral(side, v);
                let band = inside(0.014 - (d - wall + 0.004).abs(), edge);
                a += 0.45 * band * smoothstep(0.2, 0.3, t) * (1.0 - smoothstep(0.65, 0.75, t));
            }

            // Heart, sitting on the diaphragm, two thirds to the patient's left.
            let hr2 = ((u - heart_cu) / heart_rx).powi(2) + ((v - heart_cv) / heart_ry).powi(2);
            if hr2 < 1.2 {
                let m_heart = inside(1.0 - hr2, 0.08);
                a += 0.55 * m_heart * (1.0 - hr2).max(0.0).sqrt().max(0.45);
            }
            // Mediastinum and aortic knob.
            let med_top = 0.04;
            if v > med_top && v < heart_cv {
                let w =
                    an.mediastinum_half_width * (0.85 + 0.15 * smoothstep(med_top, heart_cv, v));
                a += 0.42 * inside(w - d, edge * 2.0);
            }
            let knob = ((u - (cx + an.mediastinum_half_width + 0.012)).powi(2)
                + (v - (an.lung_top + 0.19)).powi(2))
            .sqrt();
            a += 0.4 * inside(0.028 - knob, edge);
            // Trachea and main bronchi (air).
            if v < carina {
                a -= 0.35 * inside(0.014 - d, edge) * smoothstep(0.0, 0.04, v);
            } else if v < carina + 0.08 {
                let s = (v - carina) / 0.08;
                let off = 0.075 * s;
                let bd = (d - off).abs();
                a -= 0.25 * inside(0.011 - bd, edge) * (1.0 - s * 0.6);
            }
            // Spine with vertebral bodies and disc spaces.
            let vert = 0.8 + 0.2 * ((v / 0.045) * std::f32::consts::TAU).cos();
            a += 0.14 * inside(0.032 - d, edge) * vert;
            // Abdomen under the diaphragm, gastric bubble under the left dome.
            a += 0.22 * smoothstep(diaph - 0.005, diaph + 0.03, v) * m_body;
            let bubble =
                ((u - (cx + 0.16)) / 0.055).powi(2) + ((v - (an.dome_left + 0.055)) / 0.03).powi(2);
            a -= 0.45 * inside(1.0 - bubble, 0.15);

            // Posterior ribs: the k-th rib's centre line is v0 + k * spacing + g(d).
            if d > 0.025 && d < an.body_half_width - 0.02 && v > an.lung_top - 0.03 {
                let x = d / an.lung_width;
                let g = 0.17 * x.powf(1.8) - 0.06 * x;
                let v0 = an.lung_top - 0.035;
                let k = ((v - v0 - g) / an.rib_spacing).round();
                if (0.0..12.0).contains(&k) {
                    let mut centre = v0 + k * an.rib_spacing + g;
                    let mut gap = 1.0;
                    if let Some(certain) = sf.fracture {
                        if k as usize == an.fracture_rib + 3 {
                            let df = 0.62 * an.lung_width;
                            if d > df && certain {
                                centre += 0.75 * an.rib_spacing * smoothstep(df, df + 0.03, d);
                            }
                            gap =
                                inside((d - df).abs() - if certain { 0.014 } else { 0.005 }, edge);
                        }
                    }
                    let half = 0.010 + 0.004 * x;
                    let off = (v - centre).abs();
                    let cortex = 0.7 + 0.3 * smoothstep(half * 0.5, half, off);
                    a += 0.2
                        * inside(half - off, edge)
                        * cortex
                        * gap
                        * (0.6 + 0.4 * (1.0 - x).max(0.0));
                }
                // Anterior ribs, fainter, sloping down towards the midline.
                let ga = -0.13 * x;
                let ka = ((v - an.lung_top - 0.08 - ga) / an.rib_spacing / 1.15).round();
                if (0.0..7.0).contains(&ka) && x > 0.2 {
                    let centre = an.lung_top + 0.08 + ka * an.rib_spacing * 1.15 + ga;
                    a += 0.06 * inside(0.012 - (v - centre).abs(), edge);
                }
            }
            // Clavicles: PA slope up laterally, AP flatter and higher.
            let slope = if view == View::Pa { -0.3 } else { -0.1 };
            let clav_a = (0.035, an.clavicle_level + 0.03);
            let clav_b = (0.27, an.clavicle_level + 0.03 + slope * 0.235);
            let dc = dist_to_segment((d, v - 0.008 * (d * 20.0).sin()), clav_a, clav_b);
            a += 0.3 * inside(0.012 - dc, edge);
            // Scapulae: over the lateral upper lungs on AP, outside them on PA.
            let scap_d = if view == View::Ap {
                an.lung_width - 0.07
            } else {
                an.lung_width + 0.01
            };
            let scap = inside(d - scap_d - 0.1 * (v - an.lung_top - 0.05), edge)
                * inside(an.body_half_width - 0.01 - d, edge);
            a += 0.14
                * scap
                * smoothstep(an.lung_top, an.lung_top + 0.04, v)
                * (1.0 - smoothstep(an.lung_top + 0.25, an.lung_top + 0.3, v));

            for b in &blobs {
                let (du, dv) = (u - b.u, v - b.v);
                let r = (du * du + dv * dv).sqrt();
                if r > b.r * 3.5 {
                    continue;
                }
                if b.disc {
                    let wobble = 1.0 + b.lobulated * (dv.atan2(du) * 5.0).sin();
                    let rr = b.r * wobble;
                    a += b.amp
                        * inside(rr - r, edge)
                        * (1.0 - (r / rr).powi(2)).max(0.0).sqrt().max(0.5);
                } else {
                    a += b.amp
                        * (-(r * r) / (2.0 * b.r * b.r)).exp()
                        * (0.5 + 0.6 * coarse)
                        * m_lung.max(0.3);
                }
            }

            // Devices (metal and radiopaque plastic).
            if ett && v < carina - 0.05 {
                let wall = (d - 0.011).abs();
                a += 0.9 * inside(1.5 * thin - wall, px * 0.8) + 0.3 * inside(0.011 - d, edge);
            }
            if line {
                a += 0.9 * inside(thin - dist_to_polyline((u, v), &line_path), px * 0.8);
            }
            if pacer {
                let (gu, gv) = (cx + 0.28, an.lung_top + 0.04);
                let (qx, qy) = (
                    ((u - gu).abs() - 0.04).max(0.0),
                    ((v - gv).abs() - 0.025).max(0.0),
                );
                let gen = (qx * qx + qy * qy).sqrt();
                a += 2.5 * inside(0.008 - gen, edge);
                for lead in &pacer_leads {
                    a += 1.1 * inside(thin * 1.2 - dist_to_polyline((u, v), lead), px * 0.8);
                }
            }

            // Film: Beer-Lambert, contrast, heel effect, noise.
            let a = a.max(0.0) * (1.0 + heel * (u - 0.5));
            let mut i = 1.0 - (-an.exposure * a).exp();
            i = i.powf(an.gamma) + brightness;
            // Quantum noise from a per-pixel hash, so findings never shift the noise pattern.
            let (xi, yi) = (x as i32, y as i32);
            let n =
                hash2(xi, yi, seed ^ 1) + hash2(xi, yi, seed ^ 2) + hash2(xi, yi, seed ^ 3) - 1.5;
            pixels.push((i + an.noise * n * 1.4).clamp(0.0, 1.0));
        }
    }
    GrayImage::new(size, size, pixels).expect("size x size pixels")
}
