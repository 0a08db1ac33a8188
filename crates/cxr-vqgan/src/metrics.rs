//! Reconstruction metrics on grey images in [0, 1]: PSNR, SSIM (Wang et al. 2004 with the usual
//! Gaussian window, as `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
//! use_sample_covariance=False, data_range=1)`), and codebook usage and perplexity.

/// Peak signal-to-noise ratio in dB for values in [0, 1]; infinite for identical images.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    -10.0 * mse.log10()
}

/// Gaussian filter, sigma 1.5, truncated at 3.5 sigma (radius 5), scipy's `reflect` border
/// (half-sample symmetric), applied along rows then columns.
fn gaussian_filter(x: &[f64], h: usize, w: usize) -> Vec<f64> {
    const SIGMA: f64 = 1.5;
    const RADIUS: i64 = 5;
    let kernel: Vec<f64> = {
        let k: Vec<f64> = (-RADIUS..=RADIUS)
            .map(|i| (-0.5 * (i as f64 / SIGMA).powi(2)).exp())
            .collect();
        let s: f64 = k.iter().sum();
        k.into_iter().map(|v| v / s).collect()
    };
    let reflect = |i: i64, n: usize| -> usize {
        let n = n as i64;
        let period = 2 * n;
        let m = i.rem_euclid(period);
        (if m < n { m } else { period - 1 - m }) as usize
    };
    let mut tmp = vec![0.0; h * w];
    for r in 0..h {
        for c in 0..w {
            tmp[r * w + c] = kernel
                .iter()
                .enumerate()
                .map(|(k, kv)| kv * x[r * w + reflect(c as i64 + k as i64 - RADIUS, w)])
                .sum();
        }
    }
    let mut out = vec![0.0; h * w];
    for r in 0..h {
        for c in 0..w {
            out[r * w + c] = kernel
                .iter()
                .enumerate()
                .map(|(k, kv)| kv * tmp[reflect(r as i64 + k as i64 - RADIUS, h) * w + c])
                .sum();
        }
    }
    out
}

/// Mean structural similarity of two `h x w` images with values in [0, 1]; the 5-pixel border
/// is left out of the mean, as skimage does.
pub fn ssim(a: &[f32], b: &[f32], h: usize, w: usize) -> f64 {
    assert_eq!(a.len(), h * w);
    assert_eq!(b.len(), h * w);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let x: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let y: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    let prod = |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(u, v)| u * v).collect() };
    let (ux, uy) = (gaussian_filter(&x, h, w), gaussian_filter(&y, h, w));
    let (uxx, uyy, uxy) = (
        gaussian_filter(&prod(&x, &x), h, w),
        gaussian_filter(&prod(&y, &y), h, w),
        gaussian_filter(&prod(&x, &y), h, w),
    );
    let pad = 5;
    let (mut total, mut n) = (0.0, 0usize);
    for r in pad..h.saturating_sub(pad) {
        for c in pad..w.saturating_sub(pad) {
            let i = r * w + c;
            let (mx, my) = (ux[i], uy[i]);
            let (vx, vy, cxy) = (uxx[i] - mx * mx, uyy[i] - my * my, uxy[i] - mx * my);
            total += ((2.0 * mx * my + c1) * (2.0 * cxy + c2))
                / ((mx * mx + my * my + c1) * (vx + vy + c2));
            n += 1;
        }
    }
    total / n.max(1) as f64
}

/// How the codebook is used over a set of encoded images.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CodebookUsage {
    /// Distinct codes seen.
    pub used: usize,
    pub n_embed: usize,
    /// `exp(entropy)` of the code histogram: the effective number of codes.
    pub perplexity: f64,
}

pub fn codebook_usage(codes: impl IntoIterator<Item = u16>, n_embed: usize) -> CodebookUsage {
    let mut hist = vec![0u64; n_embed];
    for c in codes {
        hist[c as usize] += 1;
    }
    let total: u64 = hist.iter().sum();
    let entropy: f64 = hist
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = n as f64 / total as f64;
            -p * p.ln()
        })
        .sum();
    CodebookUsage {
        used: hist.iter().filter(|&&n| n > 0).count(),
        n_embed,
        perplexity: entropy.exp(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_a_known_error() {
        let a = vec![0.5f32; 100];
        let b = vec![0.6f32; 100];
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-4);
        assert!(psnr(&a, &a).is_infinite());
    }

    #[test]
    fn ssim_is_one_for_identical_and_falls_with_noise() {
        let (h, w) = (32, 32);
        let a: Vec<f32> = (0..h * w)
            .map(|i| ((i % w) as f32 / w as f32 + (i / w) as f32 / h as f32) / 2.0)
            .collect();
        assert!((ssim(&a, &a, h, w) - 1.0).abs() < 1e-12);
        let noisy: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, v)| v + if (i * 7919) % 3 == 0 { 0.1 } else { -0.05 })
            .collect();
        let s = ssim(&a, &noisy, h, w);
        assert!(s < 0.9 && s > 0.0, "{s}");
        // A constant offset changes only the luminance term.
        let shifted: Vec<f32> = a.iter().map(|v| v + 0.1).collect();
        assert!(ssim(&a, &shifted, h, w) > ssim(&a, &noisy, h, w));
    }

    #[test]
    fn perplexity_counts_effective_codes() {
        let u = codebook_usage([0u16, 1, 2, 3].repeat(10), 8);
        assert_eq!(u.used, 4);
        assert!((u.perplexity - 4.0).abs() < 1e-9);
        let u = codebook_usage([5u16; 7], 8);
        assert_eq!((u.used, u.perplexity), (1, 1.0));
    }
}
