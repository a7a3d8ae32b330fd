"""Log-likelihood scoring and stop-string generation through the legacy backend, against
transformers' plain batched forward (what lm-eval's ``hf`` model runs).

    python benchmarks/legacy_scoring.py [--model smollm2-135m|tiny|DIR] [--requests 520]
        [--modes eager,compiled,hf] [--choices 4] [--max-model-len 512] [--max-num-seqs 8]

The requests look like a few-shot multiple-choice task: contexts of 40 to 400 tokens,
four continuations of 1 to 8 tokens per context (``--choices``; 1 gives every request its
own context), random token ids (fixed seed), so the numbers depend only on the model's
shape (a ``--shape`` preset's placeholder weights cost what its real weights cost). Each
mode prints requests/s and scored tokens/s for one ``score`` call over all requests, after
a warm-up call on a few of them; ``hf`` runs ``LlamaForCausalLM`` on the same config in
batches of 16 sorted by length, log-softmax over every position, as lm-eval's ``hf`` model
does. ``--generate`` adds a generation run on the built-in tiny model (its
byte tokenizer) with and without stop strings: tokens generated and seconds.

One torch thread (the shared 2-core machine); numbers are indicative, not asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def requests_for(
    n: int, vocab: int, max_len: int, choices: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """``n`` (context, continuation) pairs, ``choices`` continuations per context."""
    rng = random.Random(seed)
    out: list[tuple[list[int], list[int]]] = []
    while len(out) < n:
        ctx = [rng.randrange(vocab) for _ in range(rng.randint(40, min(400, max_len - 16)))]
        for _ in range(choices):
            cont = [rng.randrange(vocab) for _ in range(rng.randint(1, 8))]
            out.append((ctx, cont))
    return out[:n]


def model_dir(name: str, tmp: Path) -> Path:
    if name == "tiny":
        from aot_core.models.tiny import write_tiny_llama

        return write_tiny_llama(tmp / "tiny")
    if Path(name).is_dir():
        return Path(name)
    from aot_core.models.shape_presets import ensure_shape_dir, get_shape

    return ensure_shape_dir(get_shape(name), tmp)


def vocab_of(path: Path) -> int:
    return int(json.loads((path / "config.json").read_text())["vocab_size"])


def bench_legacy(mode: str, path: Path, reqs: list[Any], args: argparse.Namespace) -> float:
    from aot_core import CompileSpec
    from aot_legacy import LegacyBackend

    spec = CompileSpec(
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        compile_mode="none" if mode == "eager" else "default",
        cache_dir=str(args.cache),
        backend_options={"aoti": mode == "package"},
    )
    compiler = LegacyBackend(spec)
    t0 = time.perf_counter()
    if mode == "package":
        model = compiler.compile_model_aot(path, [[1, 2, 3]])
    else:
        model = compiler.compile_model(path)
    ready = time.perf_counter() - t0
    with model:
        model.score(reqs[:4])
        t0 = time.perf_counter()
        model.score(reqs)
        wall = time.perf_counter() - t0
    print(f"  {mode}: ready in {ready:.1f} s [{model.stats.compile_mode}]", flush=True)
    return wall


def bench_hf(path: Path, reqs: list[Any], args: argparse.Namespace) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if (path / "model.safetensors").exists():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()

    def run(batch: list[Any]) -> None:
        seqs = [c + x for c, x in batch]
        longest = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (longest - len(s)) for s in seqs])
        with torch.no_grad():
            logits = torch.log_softmax(model(ids).logits, dim=-1)
        for row, (c, x) in zip(logits, batch, strict=True):
            row[len(c) - 1 : len(c) + len(x) - 1].gather(-1, torch.tensor(x).view(-1, 1)).sum()

    run(reqs[:4])
    order = sorted(reqs, key=lambda r: -(len(r[0]) + len(r[1])))
    t0 = time.perf_counter()
    for lo in range(0, len(order), 16):
        run(order[lo : lo + 16])
    return time.perf_counter() - t0


def bench_generate(tmp: Path, args: argparse.Namespace) -> None:
    """16 greedy generations of up to 128 tokens on the tiny model (byte tokenizer, random
    weights), then the same with a stop string: the commonest printable byte it generated."""
    from collections import Counter

    from aot_core import CompileSpec, GenerationParams
    from aot_legacy import LegacyBackend

    path = model_dir("tiny", tmp)
    spec = CompileSpec(
        max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs, compile_mode="none"
    )
    prompts = [f"Question {i}: what is {i} plus {i}?\nAnswer:" for i in range(16)]
    with LegacyBackend(spec).compile_model(path) as model:
        params = GenerationParams(max_new_tokens=128, stop_on_eos=False)
        model.generate(prompts[:2], params)  # warm-up
        stop: tuple[str, ...] = ()
        for _ in range(2):
            t0 = time.perf_counter()
            gens = model.generate(prompts, replace(params, stop=stop))
            wall = time.perf_counter() - t0
            tokens = sum(len(g.token_ids) for g in gens)
            print(f"generate 16 prompts, stop={list(stop)}: {tokens} tokens in {wall:.2f} s")
            counts = Counter(t for g in gens for t in g.token_ids if 33 <= t < 127)
            stop = (chr(counts.most_common(1)[0][0]),)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=520)
    parser.add_argument("--modes", default="eager,compiled,hf")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--choices", type=int, default=4, help="continuations per context")
    parser.add_argument("--generate", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="legacy-scoring-") as t:
        tmp = Path(t)
        args.cache = tmp / "cache"
        path = model_dir(args.model, tmp)
        reqs = requests_for(args.requests, vocab_of(path), args.max_model_len, args.choices)
        tokens = sum(len(c) + len(x) for c, x in reqs)
        print(
            f"model {args.model}: {len(reqs)} requests ({args.choices} per context), "
            f"{tokens} tokens, "
            f"max_model_len {args.max_model_len}, max_num_seqs {args.max_num_seqs}, "
            f"torch {torch.__version__}, 1 thread",
            flush=True,
        )
        walls: dict[str, float] = {}
        for mode in args.modes.split(","):
            if mode == "hf":
                walls[mode] = bench_hf(path, reqs, args)
            else:
                walls[mode] = bench_legacy(mode, path, reqs, args)
            print(
                f"{mode:>9}: {walls[mode]:7.2f} s  {len(reqs) / walls[mode]:7.1f} requests/s  "
                f"{tokens / walls[mode]:8.0f} tokens/s",
                flush=True,
            )
        if "hf" in walls:
            for mode, wall in walls.items():
                if mode != "hf":
                    print(f"{mode} / hf: {wall / walls['hf']:.2f}x")
        if args.generate:
            bench_generate(tmp, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
