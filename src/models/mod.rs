//! Qwen3-VL and Qwen3-VL-MoE on libtorch.
pub mod chat_template;
pub mod image_processor;
pub mod processor;
pub mod tokenizer;
pub mod tokenizer_train;
