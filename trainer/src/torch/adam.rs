//! Adam over a [`VarStore`]'s trainable variables, with a learning rate per parameter group and
//! state that can be saved and restored: what resuming a preempted run from its checkpoint
//! needs, and what tch's optimizer (C++ `torch::optim`) does not expose. The update is
//! `torch.optim.Adam`'s (no AMSGrad, no weight decay), operation for operation.

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::WeightsError;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    group: usize,
    /// First and second moment estimates (`exp_avg`, `exp_avg_sq`).
    m: Tensor,
    v: Tensor,
}

#[derive(Debug)]
pub struct Adam {
    params: Vec<Param>,
    lr: Vec<f64>,
    step: i64,
    /// The step count on the device, once [`Adam::step_unless`] has run: whether a step was
    /// taken is known only there.
    device_step: Option<Tensor>,
}

impl Adam {
    /// Every trainable variable of `vs`, all groups at learning rate `lr`.
    pub fn new(vs: &VarStore, lr: f64) -> Self {
        let variables = vs.variables_.lock().unwrap_or_else(|e| e.into_inner());
        let mut params: Vec<Param> = variables
            .named_variables
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, t)| {
                let group = variables
                    .trainable_variables
                    .iter()
                    .find(|v| v.tensor.data_ptr() == t.data_ptr())
                    .map_or(0, |v| v.group);
                Param {
                    name: name.clone(),
                    tensor: t.shallow_clone(),
                    group,
                    m: t.zeros_like(),
                    v: t.zeros_like(),
                }
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        let groups = params.iter().map(|p| p.group + 1).max().unwrap_or(1);
        Self {
            params,
            lr: vec![lr; groups],
            step: 0,
            device_step: None,
        }
    }

    pub fn set_lr_group(&mut self, group: usize, lr: f64) {
        if let Some(slot) = self.lr.get_mut(group) {
            *slot = lr;
        }
    }

    /// Steps taken so far (bias correction depends on it). After [`Adam::step_unless`] this
    /// reads the count from the device, waiting for it.
    pub fn steps(&self) -> i64 {
        match &self.device_step {
            Some(t) => t.double_value(&[]).round() as i64,
            None => self.step,
        }
    }

    /// Sets the step count, e.g. to what another rank's optimizer has taken.
    pub fn set_steps(&mut self, steps: i64) {
        self.step = steps;
        self.device_step = None;
    }

    /// The parameters' gradients (undefined ones left out), e.g. to unscale or check them.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(Tensor::defined)
            .collect()
    }

    pub fn zero_grad(&mut self) {
        for p in &self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Zeroes the gradients, back-propagates `loss` and applies one update.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<(), tch::TchError> {
        self.zero_grad();
        loss.f_backward()?;
        self.step();
        Ok(())
    }

    /// One Adam update from the current gradients.
    pub fn step(&mut self) {
        if let Some(t) = &mut self.device_step {
            let _ = t.g_add_scalar_(1.0);
        }
        self.step += 1;
        let t = self.step as f64;
        let bias1 = 1.0 - BETA1.powf(t);
        let bias2_sqrt = (1.0 - BETA2.powf(t)).sqrt();
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let step_size = self.lr[p.group] / bias1;
                let _ = p.m.lerp_(&g, 1.0 - BETA1);
                let _ = p.v.g_mul_scalar_(BETA2);
                let _ = p.v.addcmul_(&g, &(&g * (1.0 - BETA2)));
                let denom = p.v.sqrt() / bias2_sqrt + EPS;
                let _ = p.tensor.g_sub_(&(p.m.g_div(&denom) * step_size));
            }
        });
    }

    /// One Adam update from the current gradients unless `skip`, a boolean scalar on the
    /// parameters' device, is true — decided there, without the host reading it: parameters,
    /// moments and the step count are then left as they were. What fp16's loss scaling uses
    /// to skip a step whose gradients overflowed. The same update as [`Adam::step`], with the
    /// bias corrections computed on the device in fp32.
    pub fn step_unless(&mut self, skip: &Tensor) {
        let Some(device) = self.params.first().map(|p| p.tensor.device()) else {
            return;
        };
        let host_step = self.step as f64;
        let steps = self
            .device_step
            .get_or_insert_with(|| Tensor::full([], host_step, (Kind::Float, device)));
        tch::no_grad(|| {
            let keep = skip.logical_not();
            let _ = steps.g_add_(&keep.to_kind(Kind::Float));
            // 1 - β^t, with t from the device.
            let correction = |beta: f64| (&*steps * beta.ln()).exp().neg() + 1.0;
            let bias1 = correction(BETA1);
            let bias2_sqrt = correction(BETA2).sqrt();
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let step_size = bias1.reciprocal() * self.lr[p.group];
                let m = p.m.lerp(&g, 1.0 - BETA1);
                let v = (&p.v * BETA2).addcmul(&g, &(&g * (1.0 - BETA2)));
                let denom = v.sqrt() / &bias2_sqrt + EPS;
                let updated = &p.tensor - m.g_div(&denom) * &step_size;
                let kept_m = m.where_self(&keep, &p.m);
                let kept_v = v.where_self(&keep, &p.v);
                let kept = updated.where_self(&keep, &p.tensor);
                p.m.copy_(&kept_m);
                p.v.copy_(&kept_v);
                p.tensor.shallow_clone().copy_(&kept);
            }
        });
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`) and the step count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, i64) {
        let mut named = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            named.push((format!("m.{}", p.name), p.m.shallow_clone()));
            named.push((format!("v.{}", p.name), p.v.shallow_clone()));
        }
        (named, self.steps())
    }

    /// The moments, in a fixed order (the parameters' names), for broadcasting in place.
    pub fn moments(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .flat_map(|p| [p.m.shallow_clone(), p.v.shallow_clone()])
            .collect()
    }

    /// Checks that `named` holds both moments of every parameter, with the right shapes.
    pub fn check(&self, named: &[(String, Tensor)]) -> Result<(), WeightsError> {
        let by_name: std::collections::HashMap<&str, &Tensor> =
            named.iter().map(|(k, t)| (k.as_str(), t)).collect();
        for p in &self.params {
            for (prefix, moment) in [("m", &p.m), ("v", &p.v)] {
                let key = format!("{prefix}.{}", p.name);
                let src = by_name.get(key.as_str()).ok_or_else(|| {
                    WeightsError::Mismatch(format!("optimizer state has no {key}"))
                })?;
                if src.size() != moment.size() {
                    return Err(WeightsError::Mismatch(format!(
                        "optimizer state {key} has shape {:?}, the model {:?}",
                        src.size(),
                        moment.size()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Restores what [`Adam::state`] returned, all or nothing: nothing is copied unless
    /// [`Adam::check`] passes.
    pub fn restore(&mut self, named: Vec<(String, Tensor)>, step: i64) -> Result<(), WeightsError> {
        self.check(&named)?;
        let by_name: std::collections::HashMap<String, Tensor> = named.into_iter().collect();
        tch::no_grad(|| {
            for p in &mut self.params {
                for (prefix, dst) in [("m", &mut p.m), ("v", &mut p.v)] {
                    let src = &by_name[&format!("{prefix}.{}", p.name)];
                    dst.f_copy_(&src.f_to_kind(Kind::Float)?)?;
                }
            }
            Ok::<_, WeightsError>(())
        })?;
        self.set_steps(step);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module, OptimizerConfig};
    use tch::{Device, Reduction};

    /// Two identical linear models. Everything is built from fixed values, not the global
    /// seed: other tests running in parallel threads reseed it at any moment.
    fn model(offset: f64) -> (VarStore, nn::Linear) {
        let vs = VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "lin", 5, 3, Default::default());
        tch::no_grad(|| {
            let mut w = lin.ws.shallow_clone();
            w.copy_(
                &(Tensor::arange(15, (Kind::Float, Device::Cpu)).view([3, 5]) * 0.07 - offset)
                    .sin(),
            );
            if let Some(b) = &lin.bs {
                let mut b = b.shallow_clone();
                b.copy_(&Tensor::from_slice(&[0.1f32, -0.2, 0.05]));
            }
        });
        (vs, lin)
    }

    fn loss(lin: &nn::Linear, step: i64) -> Tensor {
        let x = (Tensor::arange(40, (Kind::Float, Device::Cpu)).view([8, 5]) * (0.3 + step as f64))
            .cos();
        let y = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 2, 1]);
        lin.forward(&x)
            .cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, 0.0)
    }

    fn max_diff(a: &VarStore, b: &VarStore) -> f64 {
        let (a, b) = (a.variables(), b.variables());
        a.iter()
            .map(|(k, t)| (t - &b[k]).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    /// Same trajectory as libtorch's own Adam, step for step.
    #[test]
    fn matches_libtorch_adam() {
        let (vs_ours, lin_ours) = model(0.1);
        let (vs_ref, lin_ref) = model(0.1);
        let mut ours = Adam::new(&vs_ours, 1e-2);
        let mut reference = nn::Adam::default().build(&vs_ref, 1e-2).unwrap();
        for step in 0..5 {
            ours.backward_step(&loss(&lin_ours, step)).unwrap();
            reference.backward_step(&loss(&lin_ref, step));
        }
        let diff = max_diff(&vs_ours, &vs_ref);
        assert!(diff < 1e-6, "parameters differ by {diff}");
    }

    /// `step_unless(false)` is a normal step (to fp32 rounding of the bias corrections);
    /// `step_unless(true)` changes nothing, not even the step count.
    #[test]
    fn a_step_decided_on_the_device_updates_or_skips() {
        let (vs_a, lin_a) = model(0.3);
        let (vs_b, lin_b) = model(0.3);
        let mut a = Adam::new(&vs_a, 1e-2);
        let mut b = Adam::new(&vs_b, 1e-2);
        let no = Tensor::from(false);
        let yes = Tensor::from(true);
        for step in 0..4 {
            a.backward_step(&loss(&lin_a, step)).unwrap();
            b.zero_grad();
            loss(&lin_b, step).backward();
            b.step_unless(&no);
        }
        let diff = max_diff(&vs_a, &vs_b);
        assert!(diff < 1e-6, "parameters differ by {diff}");
        let before: Vec<(String, Tensor)> = vs_b
            .variables()
            .into_iter()
            .map(|(k, t)| (k, t.copy()))
            .collect();
        let (moments, _) = b.state();
        let moments: Vec<Tensor> = moments.iter().map(|(_, t)| t.copy()).collect();
        b.zero_grad();
        loss(&lin_b, 9).backward();
        b.step_unless(&yes);
        for (k, t) in &before {
            assert!(vs_b.variables()[k].equal(t), "{k} moved on a skipped step");
        }
        let (after, steps) = b.state();
        assert_eq!(steps, 4);
        for ((_, t), m) in after.iter().zip(&moments) {
            assert!(t.equal(m), "a moment moved on a skipped step");
        }
    }

    /// Saving after 3 steps and restoring into a fresh optimizer continues exactly as if
    /// nothing had happened: what resuming a checkpoint relies on.
    #[test]
    fn state_round_trips() {
        let (vs_a, lin_a) = model(0.2);
        let (vs_b, lin_b) = model(0.2);
        let mut a = Adam::new(&vs_a, 1e-2);
        let mut b = Adam::new(&vs_b, 1e-2);
        for step in 0..3 {
            a.backward_step(&loss(&lin_a, step)).unwrap();
            b.backward_step(&loss(&lin_b, step)).unwrap();
        }
        let (state, steps) = b.state();
        let copied: Vec<(String, Tensor)> = state.into_iter().map(|(k, t)| (k, t.copy())).collect();
        let mut resumed = Adam::new(&vs_b, 1e-2);
        resumed.restore(copied, steps).unwrap();
        for step in 3..6 {
            a.backward_step(&loss(&lin_a, step)).unwrap();
            resumed.backward_step(&loss(&lin_b, step)).unwrap();
        }
        assert_eq!(max_diff(&vs_a, &vs_b), 0.0);
        assert!(
            resumed.restore(Vec::new(), 0).is_err(),
            "missing moments are refused"
        );
    }
}
