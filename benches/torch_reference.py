"""PyTorch/transformers side of `make bench`: the numbers prism is compared with.

Builds (once, deterministically) a random Qwen3-VL of about 100M parameters in the bench cache,
then measures on CPU with the given thread count:
  - generation tokens/s of transformers' `generate()` (greedy, KV cache, eager attention) at
    batch 1 and batch 16, text-only prompts of 32 tokens, 32 new tokens, no early stop;
  - SFT training tokens/s of a plain PyTorch eager loop (forward, cross-entropy on all tokens,
    backward, torch.optim.AdamW step) at batch 4 x 256 tokens.
Prints one JSON object. Run by benches/run.sh with the libtorch venv's python.
`--device cuda:N` times on a GPU (synchronised before each clock read); `--build-only` only
writes the model directory.
"""

import argparse
import json
import os
import sys
import time

import torch


def model_config(vocab):
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=640,
            intermediate_size=1792,
            num_hidden_layers=8,
            num_attention_heads=10,
            num_key_value_heads=2,
            head_dim=64,
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
            rope_parameters=dict(rope_type="default", rope_theta=5_000_000.0,
                                 mrope_section=[12, 10, 10], mrope_interleaved=True),
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=640,
            patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
            num_position_embeddings=1024, deepstack_visual_indexes=[1, 2],
        ),
        tie_word_embeddings=True,
        image_token_id=vocab - 4, video_token_id=vocab - 3,
        vision_start_token_id=vocab - 2, vision_end_token_id=vocab - 1,
    )


def build_or_load(path, vocab):
    from transformers import Qwen3VLForConditionalGeneration

    if not os.path.exists(os.path.join(path, "config.json")):
        torch.manual_seed(0)
        model = Qwen3VLForConditionalGeneration(model_config(vocab))
        model.save_pretrained(path + ".partial")
        os.replace(path + ".partial", path)
    model = Qwen3VLForConditionalGeneration.from_pretrained(
        path, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_generate(model, vocab, batch, prompt_len, new_tokens, reps, device):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab - 8, (batch, prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, **kwargs)  # warm-up
        best = float("inf")
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    produced = (out.shape[1] - prompt_len) * batch
    return produced / best


def bench_sft(model, vocab, batch, seq, steps, device):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab - 8, (batch, seq), generator=g).to(device)
    times = []
    for step in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if step > 0:  # the first step allocates optimizer state
            times.append(time.perf_counter() - t0)
    model.eval()
    return batch * seq / (sum(times) / len(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda:N")
    ap.add_argument("--build-only", action="store_true", help="only write the model directory")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_or_load(args.model_dir, args.vocab)
    if args.build_only:
        return
    device = torch.device(args.device)
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    result = {
        "impl": "transformers " + __import__("transformers").__version__ + ", torch " + torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "params": params,
        "generate_tokens_per_s": {
            "batch1": bench_generate(model, args.vocab, 1, 32, 32, args.reps, device),
            "batch16": bench_generate(model, args.vocab, 16, 32, 32, args.reps, device),
        },
        "sft_tokens_per_s": bench_sft(model, args.vocab, 4, 256, 3, device),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
