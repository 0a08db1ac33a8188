//! Mixed-precision training: the arithmetic type of the matrix products ([`Precision`], applied
//! with `cxr_ops::autocast`) and, for f16, the dynamic loss scale that keeps small gradients from
//! flushing to zero ([`LossScale`], as `torch.cuda.amp.GradScaler`). Weights, optimizer moments
//! and gradients stay f32 in every precision.

use std::collections::BTreeMap;

use candle_core::DType;

/// The type the matrix products compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 products (f32's range: no loss scale needed).
    Bf16,
    /// f16 products, with a dynamic loss scale.
    F16,
}

impl Precision {
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "f16"];

    /// The products' type.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// Runs `f` (a forward pass) with the products in this precision.
    pub fn autocast<R>(self, f: impl FnOnce() -> R) -> R {
        cxr_ops::autocast(self.dtype(), f)
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Precision::NAMES[*self as usize])
    }
}

impl serde::Serialize for Precision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            _ => Err(format!(
                "unknown precision {s:?}; expected one of {}",
                Precision::NAMES.join(", ")
            )),
        }
    }
}

/// A dynamic loss scale (PyTorch's `GradScaler` rule and defaults): the loss is multiplied by
/// `scale` before the backward pass and the gradients divided by it after; a step whose
/// gradients overflowed is skipped and the scale halved; after `GROWTH_INTERVAL` good steps in a
/// row it doubles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScale {
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u64,
}

impl LossScale {
    pub const INITIAL: f64 = 65536.0;
    pub const GROWTH_INTERVAL: u64 = 2000;
    /// Below this the gradients overflow at any scale: they are not finite (a diverged run, a
    /// NaN in the data), and halving further cannot help. 32 halvings from the initial scale.
    pub const SMALLEST: f64 = 1.0 / 65536.0;

    /// The scale a run in `precision` needs, starting at `initial`: only f16 has one.
    pub fn for_precision(precision: Precision, initial: f64) -> Option<LossScale> {
        (precision == Precision::F16).then_some(LossScale {
            scale: initial,
            good_steps: 0,
        })
    }

    /// Records a step whose (unscaled) gradient norm was `norm`; returns whether to apply it.
    pub fn update(&mut self, norm: f64) -> bool {
        if !norm.is_finite() {
            self.scale /= 2.0;
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }

    /// Writes the scale into checkpoint metadata.
    pub fn write_to(&self, meta: &mut BTreeMap<String, String>) {
        meta.insert("loss_scale".into(), self.scale.to_string());
        meta.insert("loss_scale_good_steps".into(), self.good_steps.to_string());
    }

    /// Reads it back (None when the metadata has no scale or an unreadable one).
    pub fn read_from(meta: &BTreeMap<String, String>) -> Option<LossScale> {
        Some(LossScale {
            scale: meta.get("loss_scale")?.parse().ok()?,
            good_steps: meta.get("loss_scale_good_steps")?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_names_round_trip_and_bad_ones_are_named() {
        for name in Precision::NAMES {
            assert_eq!(name.parse::<Precision>().unwrap().to_string(), name);
        }
        let err = "fp8".parse::<Precision>().unwrap_err();
        assert!(err.contains("fp8") && err.contains("bf16"), "{err}");
        assert!(LossScale::for_precision(Precision::Bf16, LossScale::INITIAL).is_none());
    }

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_a_run_of_good_steps() {
        let mut s = LossScale::for_precision(Precision::F16, LossScale::INITIAL).unwrap();
        assert!(!s.update(f64::INFINITY));
        assert!(!s.update(f64::NAN));
        assert_eq!(s.scale, LossScale::INITIAL / 4.0);
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            assert!(s.update(1.0));
        }
        assert_eq!(s.scale, LossScale::INITIAL / 4.0);
        assert!(s.update(1.0));
        assert_eq!((s.scale, s.good_steps), (LossScale::INITIAL / 2.0, 0));
        let mut meta = BTreeMap::new();
        s.write_to(&mut meta);
        let back = LossScale::read_from(&meta).unwrap();
        assert_eq!(back, s);
    }
}
