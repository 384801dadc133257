//! Per-batch decoding state: keys/values of every layer, the key padding mask so far, and the
//! next M-RoPE position of each row.
//!
//! Owned by whoever generates (the generation actor), never by the model (STYLE habit 8). A cache
//! is filled by one prefill `forward` and then extended one step at a time; its batch size and
//! device are fixed by the prefill. Shapes: keys/values `[B, nkv, T, hd]`, mask `[B, T]`.

use tch::Tensor;

/// Keys, values, key mask and next positions of one batch being decoded.
#[derive(Debug, Default)]
pub struct KvCache {
    /// Per layer `(keys, values)`, `None` before the prefill.
    layers: Vec<(Option<Tensor>, Option<Tensor>)>,
    /// Key padding mask of all cached positions `[B, T]` (Int64, 1 = real token).
    pub(crate) key_mask: Option<Tensor>,
    /// Position (all three M-RoPE axes) the next token of each row gets: max position so far + 1.
    pub(crate) next_position: Vec<i64>,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| (None, None)).collect(),
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

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut (Option<Tensor>, Option<Tensor>) {
        &mut self.layers[i]
    }

    /// Keeps only the batch rows in `rows` (e.g. drop finished sequences).
    pub fn select_rows(&mut self, rows: &[i64]) {
        let idx = Tensor::from_slice(rows);
        for (k, v) in self.layers.iter_mut() {
            for t in [k, v] {
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
