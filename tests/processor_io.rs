//! Error paths of the processor (every message names the file, field, image or prompt) and the
//! demo tokenizer training round trip.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use prism::models::chat_template::{
    ChatMessage, ChatTemplate, ContentPart, RenderOptions, split_vision_placeholders,
};
use prism::models::image_processor::{ImageError, ImageProcessor, ImageProcessorConfig};
use prism::models::processor::{PaddingSide, Processor, ProcessorError};
use prism::models::tokenizer::{QWEN3_VL_ADDED_TOKENS, QwenTokenizer, TokenizerError};
use prism::models::tokenizer_train::{TokenizerTrainOptions, train_demo_tokenizer};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl")
}

/// A copy of the fixture's processor files in a temp dir, for breaking one of them.
fn copy_fixture(tmp: &Path) {
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture_dir().join(f), tmp.join(f)).unwrap();
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn missing_tokenizer_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let err = Processor::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn broken_tokenizer_json_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    std::fs::write(tmp.path().join("tokenizer.json"), "{not json").unwrap();
    let err = QwenTokenizer::from_dir(tmp.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Load { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn bad_tokenizer_config_fields_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let cfg = tmp.path().join("tokenizer_config.json");
    edit_json(&cfg, |v| v["eos_token"] = serde_json::json!(12));
    let err = QwenTokenizer::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("eos_token"),
        "{err}"
    );

    edit_json(&cfg, |v| v["eos_token"] = serde_json::json!("<|nope|>"));
    let err = QwenTokenizer::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("<|nope|>"),
        "{err}"
    );

    std::fs::write(&cfg, "[1, 2").unwrap();
    let err = QwenTokenizer::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("invalid JSON"),
        "{err}"
    );
}

#[test]
fn bad_generation_config_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let path = tmp.path().join("generation_config.json");
    edit_json(&path, |v| {
        v["eos_token_id"] = serde_json::json!([402, 99999])
    });
    let err = QwenTokenizer::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("generation_config.json") && err.contains("99999"),
        "{err}"
    );
}

#[test]
fn bad_preprocessor_fields_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let path = tmp.path().join("preprocessor_config.json");
    for (field, value, needle) in [
        ("patch_size", serde_json::json!("16"), "patch_size"),
        ("merge_size", serde_json::json!(0), "merge_size"),
        ("patch_size", serde_json::json!(1u64 << 40), "patch_size"),
        ("image_std", serde_json::json!([0.5, 0.0, 0.5]), "image_std"),
        ("resample", serde_json::json!(2), "resample"),
        (
            "size",
            serde_json::json!({"shortest_edge": 9000, "longest_edge": 4096}),
            "size",
        ),
        (
            "size",
            serde_json::json!({"shortest_edge": "a"}),
            "size.shortest_edge",
        ),
    ] {
        copy_fixture(tmp.path());
        edit_json(&path, |v| v[field] = value.clone());
        let err = ImageProcessorConfig::from_dir(tmp.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ImageError::Field { .. })
                && msg.contains("preprocessor_config.json")
                && msg.contains(needle),
            "{field}={value}: {msg}"
        );
    }
    // old min_pixels / max_pixels keys
    copy_fixture(tmp.path());
    edit_json(&path, |v| {
        v.as_object_mut().unwrap().remove("size");
        v["min_pixels"] = serde_json::json!(1024);
        v["max_pixels"] = serde_json::json!(8192);
    });
    let cfg = ImageProcessorConfig::from_dir(tmp.path()).unwrap();
    assert_eq!((cfg.min_pixels, cfg.max_pixels), (1024, 8192));
}

#[test]
fn missing_chat_template_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    std::fs::remove_file(tmp.path().join("chat_template.jinja")).unwrap();
    let err = ChatTemplate::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("no chat template"), "{err}");
    // a template that does not compile names its file
    std::fs::write(tmp.path().join("chat_template.jinja"), "{% for x in %}").unwrap();
    let err = ChatTemplate::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("chat_template.jinja"), "{err}");
    // raise_exception from the template surfaces with the file name
    let t = ChatTemplate::from_dir(fixture_dir()).unwrap();
    let err = t
        .render(
            &[ChatMessage::text("robot", "hi")],
            &RenderOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown role: robot") && err.contains("chat_template.jinja"),
        "{err}"
    );
}

#[test]
fn undecodable_and_oversize_images_are_named() {
    let mut ip = ImageProcessor::from_dir(fixture_dir()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let err = ip.load(&junk).unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("junk.png"), "{err}");

    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let err = ip.load(&text).unwrap_err().to_string();
    assert!(err.contains("notes.txt") && err.contains("decode"), "{err}");

    let missing = tmp.path().join("missing.png");
    let err = ip.load(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.png"), "{err}");

    // too large: rejected from the header, before decoding
    let big = tmp.path().join("big.png");
    RgbImage::from_pixel(300, 200, Rgb([1, 2, 3]))
        .save(&big)
        .unwrap();
    ip.max_input_pixels = 50_000;
    let err = ip.load(&big).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");
    assert!(
        err.to_string().contains("big.png") && err.to_string().contains("300x200"),
        "{err}"
    );

    // aspect ratio over 200 names the image
    let thin = RgbImage::from_pixel(201, 1, Rgb([0, 0, 0]));
    let err = ip.preprocess(&thin, "thin.png").unwrap_err().to_string();
    assert!(
        err.contains("thin.png") && err.contains("aspect ratio"),
        "{err}"
    );
}

#[test]
fn prompt_errors_name_the_row() {
    let proc = Processor::from_dir(fixture_dir()).unwrap();
    let img = RgbImage::from_pixel(64, 64, Rgb([10, 20, 30]));
    let chat = |parts: Vec<ContentPart>| {
        proc.apply_chat_template(&[ChatMessage::parts("user", parts)], true)
            .unwrap()
    };
    let one_image = chat(vec![
        ContentPart::Image { image: None },
        ContentPart::Text {
            text: "What?".into(),
        },
    ]);
    // image count mismatch
    let err = proc
        .batch_texts(
            &[one_image.clone(), one_image.clone()],
            &[vec![img.clone()], vec![]],
            PaddingSide::Left,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProcessorError::ImageCount {
                row: 1,
                placeholders: 1,
                images: 0
            }
        ),
        "{err:?}"
    );
    // too long (64x64 -> 4 image tokens)
    let enc = proc
        .batch_texts(
            std::slice::from_ref(&one_image),
            &[vec![img.clone()]],
            PaddingSide::Left,
            None,
        )
        .unwrap();
    let len = enc.seq_len;
    let err = proc
        .batch_texts(
            &["short".to_string(), one_image.clone()],
            &[vec![], vec![img.clone()]],
            PaddingSide::Right,
            Some(len - 1),
        )
        .unwrap_err();
    assert!(
        matches!(err, ProcessorError::TooLong { row: 1, length, max_length } if length == len && max_length == len - 1),
        "{err:?}"
    );
    assert!(err.to_string().contains("prompt 1"), "{err}");
    // video placeholders are rejected
    let video = chat(vec![ContentPart::Video { video: None }]);
    let err = proc
        .batch_texts(&[video], &[vec![]], PaddingSide::Left, None)
        .unwrap_err();
    assert!(matches!(err, ProcessorError::Video { row: 0 }), "{err:?}");
    // empty batch
    assert!(matches!(
        proc.batch_texts(&[], &[], PaddingSide::Left, None),
        Err(ProcessorError::EmptyBatch)
    ));
}

#[test]
fn processor_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Processor>();
    let proc = std::sync::Arc::new(Processor::from_dir(fixture_dir()).unwrap());
    let texts: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let proc = proc.clone();
                s.spawn(move || {
                    proc.apply_chat_template(&[ChatMessage::user(format!("q{i}"))], true)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        texts[1],
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn batch_chats_equals_render_then_batch() {
    let proc = Processor::from_dir(fixture_dir()).unwrap();
    let img = RgbImage::from_fn(96, 64, |x, y| Rgb([x as u8, y as u8, 3]));
    let convs = vec![
        vec![
            ChatMessage::system("Count."),
            ChatMessage::parts("user", split_vision_placeholders("<image>How many?")),
        ],
        vec![ChatMessage::user("No image here.")],
    ];
    let images = vec![vec![img], vec![]];
    let a = proc
        .batch_chats(&convs, &images, true, PaddingSide::Left, Some(64))
        .unwrap();
    let texts: Vec<String> = convs
        .iter()
        .map(|c| proc.apply_chat_template(c, true).unwrap())
        .collect();
    assert!(texts[0].contains("<|vision_start|><|image_pad|><|vision_end|>How many?"));
    let b = proc
        .batch_texts(&texts, &images, PaddingSide::Left, Some(64))
        .unwrap();
    assert_eq!(a, b);
    // 64x96 -> grid [1,4,6] -> 6 image tokens
    assert_eq!(a.image_grid_thw, vec![[1, 4, 6]]);
    assert_eq!(a.mm_token_type_ids.iter().filter(|&&t| t == 1).count(), 6);
}

#[test]
fn left_and_right_padding_hold_the_same_rows() {
    let proc = Processor::from_dir(fixture_dir()).unwrap();
    let img = RgbImage::from_fn(70, 50, |x, y| Rgb([x as u8, y as u8, (x + y) as u8]));
    let texts = vec![
        proc.apply_chat_template(
            &[ChatMessage::parts(
                "user",
                vec![
                    ContentPart::Text {
                        text: "Look".into(),
                    },
                    ContentPart::Image { image: None },
                ],
            )],
            true,
        )
        .unwrap(),
        proc.apply_chat_template(
            &[ChatMessage::user(
                "A much longer question about nothing at all?",
            )],
            true,
        )
        .unwrap(),
    ];
    let images = vec![vec![img], vec![]];
    let left = proc
        .batch_texts(&texts, &images, PaddingSide::Left, None)
        .unwrap();
    let right = proc
        .batch_texts(&texts, &images, PaddingSide::Right, None)
        .unwrap();
    assert_eq!(left.lengths, right.lengths);
    let pad = proc.tokenizer.special().pad as i64;
    for b in 0..2 {
        let n = left.lengths[b];
        let s = left.seq_len;
        assert_eq!(&left.row_ids(b)[s - n..], &right.row_ids(b)[..n]);
        assert!(left.row_ids(b)[..s - n].iter().all(|&x| x == pad));
        assert!(right.row_ids(b)[n..].iter().all(|&x| x == pad));
        assert_eq!(
            left.attention_mask[b * s..(b + 1) * s].iter().sum::<i64>(),
            n as i64
        );
    }
    // 50x70 -> 64x64 -> grid [1,4,4] -> 4 image tokens, all typed 1
    assert_eq!(left.image_grid_thw, vec![[1, 4, 4]]);
    assert_eq!(
        left.mm_token_type_ids.iter().filter(|&&t| t == 1).count(),
        4
    );
    assert_eq!(left.pixel_values, right.pixel_values);
    assert_eq!(left.pixel_values.len(), 16 * 1536);
}

#[test]
fn trained_demo_tokenizer_round_trips() {
    let corpus: Vec<String> = [
        "How many red circles are in the picture?",
        "There are 3 red circles and 2 blue squares.",
        "The green triangle is left of the yellow star.",
        "Count the shapes, then add 4. The answer is 9.",
        "Describe the scene: a purple square above an orange circle.",
    ]
    .iter()
    .cycle()
    .take(60)
    .map(|s| s.to_string())
    .collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-model");
    let image_cfg = ImageProcessorConfig {
        min_pixels: 1024,
        max_pixels: 65536,
        ..Default::default()
    };
    let opts = TokenizerTrainOptions {
        vocab_size: 300,
        ..Default::default()
    };
    let tok = train_demo_tokenizer(&corpus, &dir, &opts, &image_cfg).unwrap();
    let bpe = tok.vocab_size() - QWEN3_VL_ADDED_TOKENS.len();
    assert!(bpe > 256 && bpe <= 300, "bpe vocab {bpe}");
    for (i, (t, _)) in QWEN3_VL_ADDED_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_to_id(t), Some((bpe + i) as u32), "{t}");
    }
    // merges were learned: a frequent word is fewer tokens than bytes
    assert!(tok.encode(" circles").unwrap().len() < " circles".len());
    for text in [
        "How many red circles? 12 + 30 = 42.",
        "unseen wörds ünïcödé and 🙂 emoji\n\ttabs",
        "<|im_start|>user\nhi<|im_end|>\n",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // the whole directory loads as a processor and renders / encodes a vision prompt
    let proc = Processor::from_dir(&dir).unwrap();
    assert_eq!(proc.image_processor.config, image_cfg);
    let text = proc
        .apply_chat_template(
            &[ChatMessage::parts(
                "user",
                vec![
                    ContentPart::Image { image: None },
                    ContentPart::Text {
                        text: "How many red circles?".into(),
                    },
                ],
            )],
            true,
        )
        .unwrap();
    let img = RgbImage::from_pixel(40, 40, Rgb([200, 0, 0]));
    let enc = proc
        .batch_texts(&[text], &[vec![img]], PaddingSide::Left, None)
        .unwrap();
    // 40x40 -> min_pixels 1024 -> 32x32 -> grid [1,2,2] -> 1 image token
    assert_eq!(enc.image_grid_thw, vec![[1, 2, 2]]);
    assert_eq!(enc.mm_token_type_ids.iter().filter(|&&t| t == 1).count(), 1);
    let sp = proc.tokenizer.special();
    assert_eq!(proc.tokenizer.stop_ids(), &[sp.im_end, sp.pad]);
    // deterministic: training again gives the same tokenizer.json
    let dir2 = tmp.path().join("again");
    train_demo_tokenizer(&corpus, &dir2, &opts, &image_cfg).unwrap();
    assert_eq!(
        std::fs::read(dir.join("tokenizer.json")).unwrap(),
        std::fs::read(dir2.join("tokenizer.json")).unwrap()
    );
}

mod properties {
    use image::{Rgb, RgbImage};
    use prism::models::image_processor::{
        ImageError, ImageProcessor, ImageProcessorConfig, ResizeBackend, resize_bicubic,
        smart_resize,
    };
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// smart_resize gives multiples of 32 (at least 32), or the aspect-ratio error; for
        /// moderate aspect ratios (<= 4, budget >= 4x the minimum) it lands inside the pixel
        /// budget. (For extreme ratios Qwen's rounding can leave it: 20x4000 at 64K pixels gives
        /// 32x3616, over the budget, which is what transformers does too.)
        #[test]
        fn smart_resize_invariants(
            h in 1u32..6000,
            w in 1u32..6000,
            lo_k in 1u64..64,
            hi_k in 256u64..2048,
        ) {
            let (lo, hi) = (lo_k * 1024, hi_k * 1024);
            let ratio = h.max(w) as f64 / h.min(w) as f64;
            match smart_resize(h, w, 32, lo, hi) {
                Ok((rh, rw)) => {
                    prop_assert!(ratio <= 200.0);
                    prop_assert!(rh % 32 == 0 && rw % 32 == 0 && rh >= 32 && rw >= 32);
                    if ratio <= 4.0 {
                        let px = rh as u64 * rw as u64;
                        prop_assert!(px <= hi && px >= lo, "{h}x{w} -> {rh}x{rw} outside [{lo}, {hi}]");
                    }
                }
                Err(ImageError::AspectRatio { .. }) => prop_assert!(ratio > 200.0),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        /// Patch rows hold exactly the image's pixels: undoing the merge-block order and the
        /// normalisation gives the image back, and both temporal copies are equal.
        #[test]
        fn patchify_is_a_permutation(gh2 in 1u32..4, gw2 in 1u32..4, seed in any::<u64>()) {
            let (h, w) = (gh2 * 32, gw2 * 32);
            let img = RgbImage::from_fn(w, h, |x, y| {
                let v = (x as u64 * 31 + y as u64 * 17 + seed) % 251;
                Rgb([v as u8, (v * 3 % 256) as u8, (255 - v) as u8])
            });
            let cfg = ImageProcessorConfig { min_pixels: 1024, max_pixels: 1 << 20, ..Default::default() };
            let out = ImageProcessor::new(cfg).preprocess(&img, "prop").unwrap();
            prop_assert_eq!(out.resized_hw, (h, w));
            let (gh, gw) = (h as usize / 16, w as usize / 16);
            let mut back = RgbImage::new(w, h);
            for (r, row) in out.pixel_values.chunks_exact(1536).enumerate() {
                // r = ((br * gw/2 + bc) * 2 + ir) * 2 + ic
                let (block, ir, ic) = (r / 4, (r / 2) % 2, r % 2);
                let (br, bc) = (block / (gw / 2), block % (gw / 2));
                let (pr, pc) = (br * 2 + ir, bc * 2 + ic);
                prop_assert!(pr < gh && pc < gw);
                for c in 0..3 {
                    let t0 = &row[c * 512..c * 512 + 256];
                    prop_assert_eq!(t0, &row[c * 512 + 256..c * 512 + 512]);
                    for (i, v) in t0.iter().enumerate() {
                        let (y, x) = (pr * 16 + i / 16, pc * 16 + i % 16);
                        back.get_pixel_mut(x as u32, y as u32)[c] = (v * 127.5 + 127.5).round() as u8;
                    }
                }
            }
            prop_assert!(back == img);
        }

        /// A constant image stays constant under both resize kernels (weights sum to one).
        #[test]
        fn resize_keeps_constant_images(h in 1u32..80, w in 1u32..80, oh in 1u32..80, ow in 1u32..80, v in any::<u8>()) {
            let img = RgbImage::from_pixel(w, h, Rgb([v, v / 2, 255 - v]));
            for b in [ResizeBackend::Torchvision, ResizeBackend::Pil] {
                let out = resize_bicubic(&img, oh, ow, b);
                prop_assert_eq!(out.dimensions(), (ow, oh));
                prop_assert!(out.pixels().all(|p| *p == Rgb([v, v / 2, 255 - v])), "{b:?}");
            }
        }
    }
}
