//! The end of a residual block, `relu(a + b)`, as one op: one pass forward, one backward.
//!
//! candle runs it as an add and a ReLU: two tensors written forward, and a backward of three
//! ops (a comparison, a conversion, a product) whose result is then added into each input's
//! gradient. Here the forward writes `relu(a + b)` once, and the backward writes the masked
//! gradient once and hands the same tensor to both inputs, with candle's ReLU derivative (1
//! where `a + b >= 0`). Off the fast path (not f32 on the CPU, shapes that differ) candle's ops run.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, written_vec};

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// `relu(a + b)` for tensors of the same shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if super::fast_path(a) && super::fast_path(b) && a.shape() == b.shape() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        (a + b)?.relu()
    }
}

/// `(a, b) -> relu(a + b)`.
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "ood-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (
            cpu_f32(s1, l1, "add-relu a")?,
            cpu_f32(s2, l2, "add-relu b")?,
        );
        if l1.shape() != l2.shape() {
            bail!("add-relu: shapes {:?} and {:?}", l1.shape(), l2.shape())
        }
        // Every value written: the chunks of `out` pair with chunks of `a` of the same length.
        let out = written_vec(a.len(), |out| {
            out.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(|(o, (a, b))| {
                    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                        o.write((a + b).max(0.0));
                    }
                })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g =
            grad.contiguous()?
                .apply_op3_no_bwd(&a.contiguous()?, &b.contiguous()?, &ReluMask)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `(g, a, b) -> g * relu'(a + b)`.
struct ReluMask;

impl CustomOp3 for ReluMask {
    fn name(&self) -> &'static str {
        "ood-add-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, a, b) = (
            cpu_f32(s1, l1, "add-relu gradient")?,
            cpu_f32(s2, l2, "add-relu a")?,
            cpu_f32(s3, l3, "add-relu b")?,
        );
        if g.len() != a.len() || a.len() != b.len() {
            bail!(
                "add-relu backward: gradient {:?} for {:?}",
                l1.shape(),
                l2.shape()
            )
        }
        // Every value written: the chunks of `out` pair with chunks of `g` of the same length.
        let out = written_vec(g.len(), |out| {
            out.par_chunks_mut(CHUNK)
                .zip(
                    g.par_chunks(CHUNK)
                        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))),
                )
                .for_each(|(o, (g, (a, b)))| {
                    for (((o, &g), &a), &b) in o.iter_mut().zip(g).zip(a).zip(b) {
                        o.write(super::batchnorm::relu_grad(a + b, g));
                    }
                })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn random(shape: &[usize], rng: &mut impl Rng) -> Vec<f32> {
        (0..shape.iter().product())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect()
    }

    #[test]
    fn matches_add_then_relu_forward_and_backward() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for shape in [vec![1, 1, 1, 3], vec![3, 5, 7, 7], vec![2, 16, 28, 28]] {
            let dev = Device::Cpu;
            let a = random(&shape, &mut rng);
            let mut b = random(&shape, &mut rng);
            // Exact zeros of a + b, where candle's ReLU derivative is 1.
            b[0] = -a[0];
            let (av, bv) = (
                Var::from_vec(a, shape.as_slice(), &dev).unwrap(),
                Var::from_vec(b, shape.as_slice(), &dev).unwrap(),
            );
            let r = Tensor::from_vec(random(&shape, &mut rng), shape.as_slice(), &dev).unwrap();
            let fused = add_relu(av.as_tensor(), bv.as_tensor()).unwrap();
            let stock = (av.as_tensor() + bv.as_tensor()).unwrap().relu().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&fused), flat(&stock), "{shape:?} forward");
            let gf = (&fused * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gs = (&stock * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (v, name) in [(&av, "a"), (&bv, "b")] {
                let (f, s) = (gf.get(v).unwrap(), gs.get(v).unwrap());
                assert_eq!(flat(f), flat(s), "{shape:?} gradient of {name}");
            }
            assert_eq!(
                flat(gf.get(&av).unwrap())[0],
                flat(&r)[0],
                "zero input passes"
            );
        }
    }

    #[test]
    fn other_shapes_fall_back_to_candle() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, -2.0], [3.0, -4.0]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, 0.5], &dev).unwrap();
        // Shapes differ: the fast op does not apply and candle's add refuses them as usual.
        assert!(add_relu(&a, &b).is_err());
        let b = Tensor::new(&[[0.5f32, 0.5], [0.5, 0.5]], &dev).unwrap();
        let y: Vec<Vec<f32>> = add_relu(&a, &b).unwrap().to_vec2().unwrap();
        assert_eq!(y, vec![vec![1.5, 0.0], vec![3.5, 0.0]]);
    }
}
