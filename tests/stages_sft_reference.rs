//! SFT inputs, labels, loss and gradient norm against transformers (tests/fixtures/sft/, written
//! by tests/fixtures/gen_sft_reference.py): same checkpoint, same two conversations.

use std::path::{Path, PathBuf};

use prism::algo::adamw::grad_norm;
use prism::config::PadSide;
use prism::data::sharegpt::{Message, Role, ShareGptRecord};
use prism::models::Qwen3Vl;
use prism::models::processor::Processor;
use prism::stages::sft::{collate_examples, encode_example, summed_token_loss};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn msg(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.to_string(),
    }
}

fn to_vec(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn sft_batch_loss_and_grad_norm_match_transformers() {
    let ckpt = fixtures().join("qwen3_vl/tiny-qwen3-vl");
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("sft/reference.json")).unwrap(),
    )
    .unwrap();
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("sft/reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();

    let records = [
        ShareGptRecord {
            messages: vec![
                msg(Role::System, "You answer briefly."),
                msg(Role::User, "<image>How many shapes are there?"),
                msg(Role::Assistant, "I count 3 shapes.\nThe answer is 3."),
            ],
            images: vec!["image_a_64x96.png".into()],
        },
        ShareGptRecord {
            messages: vec![
                msg(Role::System, "You answer briefly."),
                msg(Role::User, "Name a colour."),
                msg(Role::Assistant, "Blue."),
                msg(Role::User, "Another one?"),
                msg(Role::Assistant, "Red, like a circle."),
            ],
            images: vec![],
        },
    ];
    let proc = Processor::from_dir(&ckpt).unwrap();
    let examples: Vec<_> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let imgs: Vec<_> = r
                .images
                .iter()
                .map(|n| {
                    image::open(fixtures().join("qwen3_vl/images").join(n))
                        .unwrap()
                        .to_rgb8()
                })
                .collect();
            encode_example(&proc, r, &imgs, i).unwrap()
        })
        .collect();
    let batch = collate_examples(
        &proc,
        &examples,
        PadSide::Right,
        4096,
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();

    // same tokens and the same label positions as transformers' processor + header search
    assert_eq!(
        to_vec(&batch.inputs.input_ids),
        to_vec(&reference["input_ids"])
    );
    assert_eq!(
        to_vec(&batch.inputs.attention_mask),
        to_vec(&reference["attention_mask"])
    );
    assert_eq!(to_vec(&batch.labels), to_vec(&reference["labels"]));
    assert_eq!(batch.num_labels, meta["num_labels"].as_i64().unwrap());

    // token-mean loss and the gradient it gives
    let model = Qwen3Vl::load(&ckpt, Device::Cpu, Kind::Float).unwrap();
    let logits = model.forward(&batch.inputs, None).unwrap();
    let loss = summed_token_loss(&logits, &batch.labels).unwrap() / batch.num_labels as f64;
    let want = meta["loss"].as_f64().unwrap();
    let got = loss.double_value(&[]);
    assert!(
        (got - want).abs() < 1e-5,
        "loss {got} vs transformers {want}"
    );
    loss.backward();
    let params: Vec<Tensor> = model.named_parameters().into_values().collect();
    let norm = grad_norm(&params).unwrap().double_value(&[]);
    let want = meta["grad_norm"].as_f64().unwrap();
    assert!(
        (norm - want).abs() < 1e-4 * want,
        "grad norm {norm} vs transformers {want}"
    );
}
