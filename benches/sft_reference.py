"""PyTorch side of the SFT throughput bench: the number `benches/sft.rs` is compared with.

A plain PyTorch eager training loop on the transformers model (Qwen3VLForConditionalGeneration,
fp32, CPU), timed exactly like prism's SFT step in benches/sft.rs:

    forward to logits [B, S, V] -> fp32 cross-entropy summed over the labelled (assistant)
    positions, shifted by one, / their count -> backward -> clip_grad_norm_(max_norm) ->
    torch.optim.AdamW step (decay / no-decay groups as prism's: no decay for biases, norms and
    rank <= 1 tensors) if the norm is finite -> zero_grad

on the very batch the Rust side wrote (`sft_batch_b{B}_s{S}.safetensors`: input_ids,
attention_mask, labels, pixel_values, image_grid_thw), with the same thread count, warm-up and
timed steps, attention implementation and optimizer settings, all read from prism's JSON line
(`--prism-json`, the saved output of `cargo bench --bench sft`), on prism's device (`cpu` or
`cuda:N`; on CUDA each part of a step ends with `torch.cuda.synchronize()`, as prism's does).
torch.optim.AdamW runs with PyTorch's default for the device (CPU: the single-tensor loop; CUDA:
the multi-tensor `foreach` one). Tokens/s = tokens in the batch / median timed step time
(`best_tokens_per_s`: / the fastest step).

Prints one JSON line, then (with --prism-json) a Markdown table of both. The first-step losses
of the two columns must agree (same weights, same batch): the table shows both.

    python benches/sft_reference.py --model-dir DIR --prism-json target/bench-results/sft_prism.txt
"""

import argparse
import json
import sys
import time

import torch


PHASES = ["forward_loss", "backward", "clip", "adamw"]


def read_prism(path):
    """The last JSON line with an "sft" key in `path`."""
    found = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                obj = json.loads(line)
                if "sft" in obj:
                    found = obj
    if found is None:
        sys.exit(f"{path}: no JSON line with an 'sft' key (run `cargo bench --bench sft` first)")
    return found


def no_decay(name, p):
    lower = name.lower()
    return p.dim() <= 1 or lower.endswith("bias") or "norm" in lower


def load_batch(path, image_token_id, device):
    from safetensors.torch import load_file

    t = {k: v.to(device) for k, v in load_file(path).items()}
    inputs = {
        "input_ids": t["input_ids"],
        "attention_mask": t["attention_mask"],
        "pixel_values": t["pixel_values"],
        "image_grid_thw": t["image_grid_thw"],
        # transformers 5 needs the modality of every token with images (1 = image)
        "mm_token_type_ids": (t["input_ids"] == image_token_id).long(),
    }
    return inputs, t["labels"]


def time_steps(args, batch_file, settings):
    from transformers import Qwen3VLForConditionalGeneration

    device = torch.device(settings["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = Qwen3VLForConditionalGeneration.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation=settings["attn"]
    ).to(device)
    model.train()
    adamw = settings["adamw"]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": adamw["weight_decay"]},
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=adamw["lr"], betas=(adamw["beta1"], adamw["beta2"]), eps=adamw["eps"])
    params = [p for _, p in named]
    inputs, labels = load_batch(batch_file, model.config.image_token_id, device)
    b, s = labels.shape
    n_labels = int((labels[:, 1:] != -100).sum())
    step_seconds, phase_seconds, first = [], [], None
    for i in range(settings["warmup"] + settings["steps"]):
        t0 = time.perf_counter()
        logits = model(**inputs).logits  # (B, S, V)
        v = logits.shape[-1]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        ) / max(n_labels, 1)
        loss_value = loss.item()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(params, settings["max_grad_norm"])
        finite = bool(torch.isfinite(norm))
        t3 = time.perf_counter()
        if finite:
            opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t4 = time.perf_counter()
        secs = t4 - t0
        if i == 0:
            first = (loss_value, norm.item())
        if i >= settings["warmup"]:
            step_seconds.append(secs)
            phase_seconds.append([t1 - t0, t2 - t1, t3 - t2, t4 - t3])
    def median(xs):
        return sorted(xs)[len(xs) // 2]  # as prism: the upper median

    tokens = int(inputs["attention_mask"].sum())
    return {
        "batch": b,
        "seq": s,
        "tokens": tokens,
        "label_tokens": n_labels,
        "batch_file": batch_file,
        "step_seconds": step_seconds,
        "tokens_per_s": tokens / median(step_seconds),
        "best_tokens_per_s": tokens / min(step_seconds),
        "phase_median_seconds": {name: median([p[k] for p in phase_seconds]) for k, name in enumerate(PHASES)},
        "first_loss": first[0],
        "first_grad_norm": first[1],
    }, sum(p.numel() for p in model.parameters())


def table(prism, torch_result):
    rows = [
        "| batch × seq | prism tokens/s | PyTorch eager tokens/s | prism / PyTorch | first loss prism / PyTorch |",
        "|---|---|---|---|---|",
    ]
    for p, t in zip(prism["sft"], torch_result["sft"]):
        rows.append(
            f"| {p['batch']} × {p['seq']} | {p['tokens_per_s']:.1f} | {t['tokens_per_s']:.1f} | "
            f"{p['tokens_per_s'] / t['tokens_per_s']:.2f} | {p['first_loss']:.5f} / {t['first_loss']:.5f} |"
        )
    rows += [
        "",
        "Median seconds per part of a step (prism / PyTorch):",
        "",
        "| batch × seq | " + " | ".join(PHASES) + " |",
        "|---|" + "---|" * len(PHASES),
    ]
    for p, t in zip(prism["sft"], torch_result["sft"]):
        pp, tp = p.get("phase_median_seconds", {}), t["phase_median_seconds"]
        cells = [f"{pp.get(n, float('nan')):.2f} / {tp[n]:.2f}" for n in PHASES]
        rows.append(f"| {p['batch']} × {p['seq']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prism-json", required=True, help="saved output of `cargo bench --bench sft`")
    ap.add_argument("--threads", type=int, help="default: prism's")
    args = ap.parse_args()
    prism = read_prism(args.prism_json)
    threads = args.threads or prism["threads"]
    if threads != prism["threads"]:
        print(f"warning: {threads} threads here, prism ran with {prism['threads']}", file=sys.stderr)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    torch.manual_seed(0)
    settings = {k: prism[k] for k in ("attn", "warmup", "steps", "adamw", "max_grad_norm")}
    settings["device"] = prism.get("device", "cpu")
    results, params = [], None
    for p in prism["sft"]:
        r, params = time_steps(args, p["batch_file"], settings)
        results.append(r)
    import transformers

    out = {
        "impl": f"transformers {transformers.__version__}, torch {torch.__version__} (eager mode, torch.optim.AdamW)",
        "model_dir": args.model_dir,
        "params": params,
        "threads": threads,
        **settings,
        "sft": results,
    }
    print(json.dumps(out))
    print()
    print(f"SFT step tokens/s on {settings['device']}, {threads} threads, {settings['attn']} attention, median of {settings['steps']} steps "
          f"after {settings['warmup']} warm-up, {params / 1e6:.1f}M parameters:")
    print(table(prism, out))


if __name__ == "__main__":
    main()
