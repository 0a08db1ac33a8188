//! Gradient accumulation: the gradients of several micro-batches summed into those of one
//! optimizer step, as one large batch would give when each micro-batch's loss is scaled by its
//! share. Every trainer sums through this one helper, so the additions happen in one order
//! (the first micro-batch's store, then each later one's gradients added in the order of the
//! variables given).

use candle_core::backprop::GradStore;
use candle_core::Var;

/// The running sum of a step's micro-batch gradients.
#[derive(Default)]
pub struct GradAccumulator {
    sum: Option<GradStore>,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one micro-batch's gradients of `vars`: the first store is kept whole, later ones
    /// add each variable's gradient to the sum (`sum + new`).
    pub fn add<'a>(
        &mut self,
        grads: GradStore,
        vars: impl IntoIterator<Item = &'a Var>,
    ) -> candle_core::Result<()> {
        let Some(sum) = &mut self.sum else {
            self.sum = Some(grads);
            return Ok(());
        };
        for var in vars {
            if let Some(new) = grads.get(var.as_tensor()) {
                let total = match sum.get(var.as_tensor()) {
                    Some(old) => (old + new)?,
                    None => new.clone(),
                };
                sum.insert(var.as_tensor(), total);
            }
        }
        Ok(())
    }

    /// The summed gradients; `None` when no micro-batch was added.
    pub fn finish(self) -> Option<GradStore> {
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sums_the_gradients_of_each_micro_batch() {
        let w = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let mut acc = GradAccumulator::new();
        for scale in [1.0, 3.0] {
            let loss = (w.as_tensor() * scale).unwrap().sum_all().unwrap();
            acc.add(loss.backward().unwrap(), [&w]).unwrap();
        }
        let grads = acc.finish().unwrap();
        let g: Vec<f32> = grads.get(w.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(g, [4.0, 4.0]);
        assert!(GradAccumulator::new().finish().is_none());
    }
}
