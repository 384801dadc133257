//! The token-level caption/CoT boundary against the original's O(L²) prefix-decode algorithm,
//! run in Python with a HuggingFace byte-level BPE (tests/fixtures/gen_reward_split.py). Both of
//! our paths are checked: the prefix-decoder search (with the same tokenizer, via the
//! `tokenizers` crate) and the per-token byte-offset search.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use prism::reward::format::{
    split_tokens_by_decode, split_tokens_by_offsets, token_ends_from_pieces,
};
use serde_json::Value;
use tokenizers::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reward")
        .join(name)
}

/// GPT-2 byte-level alphabet, inverted: the char a vocabulary entry uses → the raw byte.
fn byte_level_inverse() -> HashMap<char, u8> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.iter()
        .zip(&cs)
        .map(|(&b, &c)| (char::from_u32(c).expect("valid"), b as u8))
        .collect()
}

#[test]
fn boundary_equals_prefix_decode_reference() {
    let tok = Tokenizer::from_file(fixture("split_tokenizer.json")).expect("tokenizer");
    let inverse = byte_level_inverse();
    let text = fs::read_to_string(fixture("split_cases.jsonl")).expect("cases");
    let mut n = 0;
    let mut n_valid = 0;
    for (line_no, line) in text.lines().enumerate() {
        let rec: Value = serde_json::from_str(line).expect("json");
        let ids: Vec<u32> = serde_json::from_value(rec["ids"].clone()).expect("ids");
        let valid = rec["valid"].as_bool().expect("valid");
        let cap_end = rec["caption_end"].as_u64().expect("caption_end") as usize;
        let cot_end = rec["cot_end"].as_u64().expect("cot_end") as usize;
        let ctx = format!("line {}: {:?}", line_no + 1, rec["text"]);

        let by_decode =
            split_tokens_by_decode(&ids, |p: &[u32]| tok.decode(p, true)).expect("decode");
        assert_eq!(by_decode.format_valid, valid, "{ctx}");
        assert_eq!(by_decode.caption, 0..cap_end, "{ctx}");
        assert_eq!(by_decode.cot, cap_end..cot_end, "{ctx}");

        // Per-token raw bytes; special tokens (skipped by the decoder) contribute nothing.
        let pieces: Vec<Vec<u8>> = ids
            .iter()
            .map(|&id| {
                let piece = tok.id_to_token(id).expect("id in vocab");
                if piece.starts_with("<|") && piece.ends_with("|>") {
                    Vec::new()
                } else {
                    piece.chars().map(|c| inverse[&c]).collect()
                }
            })
            .collect();
        let full = tok.decode(&ids, true).expect("decode");
        let by_offsets =
            split_tokens_by_offsets(&full, &token_ends_from_pieces(&pieces)).expect("offsets");
        assert_eq!(by_offsets, by_decode, "{ctx}");
        n += 1;
        n_valid += usize::from(valid);
    }
    assert!(n >= 300 && n_valid >= 100, "{n} cases, {n_valid} valid");
}
