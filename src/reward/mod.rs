//! The verifiable reward: format validity, caption/reasoning split, answer matching.
