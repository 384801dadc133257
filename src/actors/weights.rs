//! Versioned weights: the [`WeightsBus`] that carries the latest [`WeightsSnapshot`] from the
//! learner (or an expert) to whoever loads it, and the conversions between snapshots and tch
//! tensors that engines use.
//!
//! The bus keeps only the newest version (a `tokio::sync::watch`): generators swap to it between
//! batches, a restarted actor restores from it, the coordinator waits on its version for the
//! staleness gate. Snapshots are host copies shared by `Arc`, so publishing never blocks on a
//! reader and a reader never sees a half-written version.

use std::sync::Arc;

use tch::{Kind, Tensor};
use tokio::sync::watch;

use super::messages::{DType, NamedBuffer, WeightsSnapshot};

/// Latest published weights of one model.
#[derive(Debug, Clone)]
pub struct WeightsBus {
    /// Written by the owning trainer (learner or expert) after each optimizer step; read by
    /// generators, restarted actors and the staleness gate. `None` until the first publish.
    tx: Arc<watch::Sender<Option<Arc<WeightsSnapshot>>>>,
}

impl Default for WeightsBus {
    fn default() -> Self {
        WeightsBus::new()
    }
}

impl WeightsBus {
    pub fn new() -> WeightsBus {
        WeightsBus {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// Makes `snap` the latest version (readers waiting on a version are woken).
    pub fn publish(&self, snap: Arc<WeightsSnapshot>) {
        self.tx.send_replace(Some(snap));
    }

    pub fn latest(&self) -> Option<Arc<WeightsSnapshot>> {
        self.tx.borrow().clone()
    }

    pub fn version(&self) -> Option<u64> {
        self.tx.borrow().as_ref().map(|s| s.version)
    }

    /// Waits until a version `>= v` is published.
    pub async fn wait_for_version(&self, v: u64) -> Arc<WeightsSnapshot> {
        let mut rx = self.tx.subscribe();
        let got = rx
            .wait_for(|s| s.as_ref().is_some_and(|s| s.version >= v))
            .await
            .expect("the bus owns its sender");
        got.clone().expect("checked by wait_for")
    }
}

/// Errors converting between snapshots and tensors; each names the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("tensor {name}: unsupported dtype {kind:?}")]
    Dtype { name: String, kind: Kind },
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("snapshot v{version} has no tensor {name}")]
    Missing { version: u64, name: String },
    #[error("snapshot v{version} tensor {name}: shape {got:?}, expected {expected:?}")]
    Shape {
        version: u64,
        name: String,
        got: Vec<i64>,
        expected: Vec<i64>,
    },
}

fn dtype_of(name: &str, kind: Kind) -> Result<DType, WeightsError> {
    Ok(match kind {
        Kind::Float => DType::F32,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Int64 => DType::I64,
        k => {
            return Err(WeightsError::Dtype {
                name: name.to_string(),
                kind: k,
            });
        }
    })
}

fn kind_of(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
    }
}

/// Copies named tensors (any device) into a host snapshot stamped `version`.
pub fn snapshot_from_tensors(
    version: u64,
    named: &[(String, Tensor)],
) -> Result<WeightsSnapshot, WeightsError> {
    let mut tensors = Vec::with_capacity(named.len());
    for (name, t) in named {
        let terr = |e: tch::TchError| WeightsError::Tensor {
            name: name.clone(),
            msg: e.to_string(),
        };
        let dtype = dtype_of(name, t.kind())?;
        let host = t
            .f_detach()
            .and_then(|t| t.f_to_device(tch::Device::Cpu))
            .and_then(|t| t.f_contiguous())
            .map_err(terr)?;
        let numel = host.numel();
        let mut data = vec![0u8; numel * dtype.size()];
        host.f_copy_data_u8(&mut data, numel).map_err(terr)?;
        tensors.push(NamedBuffer {
            name: name.clone(),
            shape: host.size(),
            dtype,
            data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(WeightsSnapshot { version, tensors })
}

/// Copies a snapshot into existing tensors (by name, under `no_grad`), checking every name and
/// shape. Tensors keep their device and dtype.
pub fn load_into_tensors(
    snap: &WeightsSnapshot,
    named: &mut [(String, Tensor)],
) -> Result<(), WeightsError> {
    let _guard = tch::no_grad_guard();
    for (name, dst) in named.iter_mut() {
        let src = snap
            .tensors
            .iter()
            .find(|b| &b.name == name)
            .ok_or_else(|| WeightsError::Missing {
                version: snap.version,
                name: name.clone(),
            })?;
        if src.shape != dst.size() {
            return Err(WeightsError::Shape {
                version: snap.version,
                name: name.clone(),
                got: src.shape.clone(),
                expected: dst.size(),
            });
        }
        let terr = |e: tch::TchError| WeightsError::Tensor {
            name: name.clone(),
            msg: e.to_string(),
        };
        let host =
            Tensor::f_from_data_size(&src.data, &src.shape, kind_of(src.dtype)).map_err(terr)?;
        dst.f_copy_(&host).map_err(terr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors_name_the_tensor() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[7i64, 8]);
        let snap = snapshot_from_tensors(3, &[("w".into(), a), ("b".into(), b)]).unwrap();
        assert_eq!(snap.version, 3);
        assert_eq!(snap.nbytes(), 16 + 16);
        let mut dst = vec![
            (
                "w".to_string(),
                Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "b".to_string(),
                Tensor::zeros([2], (Kind::Int64, tch::Device::Cpu)),
            ),
        ];
        load_into_tensors(&snap, &mut dst).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(dst[0].1.flatten(0, -1)).unwrap(),
            vec![1., 2., 3., 4.]
        );
        assert_eq!(Vec::<i64>::try_from(&dst[1].1).unwrap(), vec![7, 8]);

        let mut wrong = vec![(
            "w".to_string(),
            Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)),
        )];
        let e = load_into_tensors(&snap, &mut wrong)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor w") && e.contains("[2, 2]"), "{e}");
        let mut missing = vec![(
            "v".to_string(),
            Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)),
        )];
        let e = load_into_tensors(&snap, &mut missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tensor v"), "{e}");
    }

    #[tokio::test]
    async fn bus_wakes_waiters_on_newer_version() {
        let bus = WeightsBus::new();
        assert_eq!(bus.version(), None);
        let b2 = bus.clone();
        let waiter = tokio::spawn(async move { b2.wait_for_version(2).await.version });
        for v in 0..3 {
            bus.publish(Arc::new(WeightsSnapshot {
                version: v,
                tensors: vec![],
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(waiter.await.unwrap(), 2);
        assert_eq!(bus.version(), Some(2));
    }
}
