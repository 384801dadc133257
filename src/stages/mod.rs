//! Training stages: SFT, discriminator warm-up, PRISM alignment, RLVR, evaluation, and the
//! pipeline that chains them.

pub mod eval;
