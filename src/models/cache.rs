//! Per-batch decoding state: keys/values of every layer, the key padding mask so far, and the
//! next M-RoPE position of each row.
//!
//! Owned by whoever generates (the generation actor), never by the model (STYLE habit 8). A cache
//! is filled by one prefill `forward` and then extended a few tokens at a time; its batch size is
//! fixed by the prefill (rows may only be dropped, [`KvCache::select_rows`]). Keys/values live in
//! preallocated buffers `[B, nkv, capacity, hd]` written in place (no per-step concatenation of
//! the whole history); the capacity doubles when exceeded. Mask `[B, T]`.

use tch::Tensor;

/// Keys and values of one decoder layer.
#[derive(Debug, Default)]
pub struct LayerCache {
    /// Buffers `[B, nkv, capacity, hd]`; positions `..len` are valid.
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: i64,
}

impl LayerCache {
    /// Appends `k`, `v` `[B, nkv, S, hd]` and returns views of all cached keys/values
    /// `[B, nkv, len + S, hd]`. With gradients enabled on the inputs the history is concatenated
    /// instead (in-place writes would break autograd).
    pub(crate) fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        capacity_hint: i64,
    ) -> (Tensor, Tensor) {
        let s = k.size()[2];
        if k.requires_grad() || v.requires_grad() {
            let cat = |prev: &Option<Tensor>, new: &Tensor| match prev {
                Some(p) => Tensor::cat(&[&p.narrow(2, 0, self.len), new], 2),
                None => new.shallow_clone(),
            };
            let (k_all, v_all) = (cat(&self.k, k), cat(&self.v, v));
            self.k = Some(k_all.shallow_clone());
            self.v = Some(v_all.shallow_clone());
            self.len += s;
            return (k_all, v_all);
        }
        let need = self.len + s;
        let cap = self.k.as_ref().map_or(0, |t| t.size()[2]);
        if need > cap {
            let new_cap = need.max(capacity_hint).max(2 * cap);
            let grow = |prev: &Option<Tensor>, like: &Tensor| {
                let mut size = like.size();
                size[2] = new_cap;
                let buf = Tensor::zeros(size.as_slice(), (like.kind(), like.device()));
                if let Some(p) = prev {
                    buf.narrow(2, 0, self.len).copy_(&p.narrow(2, 0, self.len));
                }
                buf
            };
            self.k = Some(grow(&self.k, k));
            self.v = Some(grow(&self.v, v));
        }
        let (kb, vb) = (
            self.k.as_ref().expect("allocated"),
            self.v.as_ref().expect("allocated"),
        );
        kb.narrow(2, self.len, s).copy_(k);
        vb.narrow(2, self.len, s).copy_(v);
        self.len = need;
        (kb.narrow(2, 0, need), vb.narrow(2, 0, need))
    }
}

/// Keys, values, key mask and next positions of one batch being decoded.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Total positions to allocate at the first write (prompt + new tokens), if known.
    capacity_hint: i64,
    /// Key padding mask of all cached positions `[B, T]` (Int64, 1 = real token).
    pub(crate) key_mask: Option<Tensor>,
    /// Position (all three M-RoPE axes) the next token of each row gets: max position so far + 1.
    pub(crate) next_position: Vec<i64>,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// An empty cache that allocates room for `capacity` positions at its first write.
    pub fn with_capacity(num_layers: usize, capacity: i64) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| LayerCache::default()).collect(),
            capacity_hint: capacity,
            key_mask: None,
            next_position: Vec::new(),
        }
    }

    /// Number of cached positions T (0 before the prefill).
    pub fn len(&self) -> i64 {
        self.key_mask.as_ref().map_or(0, |m| m.size()[1])
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batch size fixed by the prefill, if any.
    pub fn batch_size(&self) -> Option<i64> {
        self.key_mask.as_ref().map(|m| m.size()[0])
    }

    /// The next M-RoPE position of each row.
    pub fn next_positions(&self) -> &[i64] {
        &self.next_position
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub(crate) fn capacity_hint(&self) -> i64 {
        self.capacity_hint
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
    }

    /// Keeps only the batch rows in `rows` (e.g. drop finished sequences).
    pub fn select_rows(&mut self, rows: &[i64]) {
        let idx = Tensor::from_slice(rows);
        for l in self.layers.iter_mut() {
            for t in [&mut l.k, &mut l.v] {
                if let Some(x) = t.as_ref() {
                    *t = Some(x.index_select(0, &idx.to_device(x.device())));
                }
            }
        }
        if let Some(m) = &self.key_mask {
            self.key_mask = Some(m.index_select(0, &idx.to_device(m.device())));
        }
        self.next_position = rows
            .iter()
            .map(|&r| self.next_position[r as usize])
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn kv(b: i64, s: i64, start: f64) -> Tensor {
        Tensor::arange(b * 2 * s * 3, (Kind::Float, Device::Cpu)).view([b, 2, s, 3]) + start
    }

    #[test]
    fn append_grows_and_matches_concatenation() {
        let mut l = LayerCache::default();
        let (a, b, c) = (kv(2, 3, 0.0), kv(2, 1, 100.0), kv(2, 4, 200.0));
        let _ = l.append(&a, &a, 0); // capacity 3
        let _ = l.append(&b, &b, 0); // needs 4: doubles to 6
        let (k, v) = l.append(&c, &c, 0); // needs 8: doubles to 12
        let want = Tensor::cat(&[&a, &b, &c], 2);
        assert!(k.equal(&want) && v.equal(&want));
        assert_eq!(l.k.as_ref().unwrap().size()[2], 12);
        // With gradients the history is concatenated (autograd-safe).
        let mut g = LayerCache::default();
        let x = kv(1, 2, 0.0).set_requires_grad(true);
        let _ = g.append(&x, &x, 16);
        let (k, _) = g.append(&x, &x, 16);
        k.sum(Kind::Float).backward();
        assert_eq!(
            f64::try_from(x.grad().sum(Kind::Float)).unwrap(),
            2.0 * 12.0
        );
    }
}
