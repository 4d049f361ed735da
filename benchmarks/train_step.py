"""Training step time on CPU: a stage-2 step (Memento mask) vs a stage-1 step (causal) on the same batch, and peak RSS.

Run: .venv/bin/python benchmarks/train_step.py   (writes benchmarks/results/train_step.md and .json; ~7 min)

A step is what the trainer runs per micro-batch: `token_losses` under the stage's mask, `losses.sum() / tokens`,
backward, gradient clipping, AdamW. Four variants on the same tokens:

- causal: stage 1 as trained (the model builds its own mask; the batch has no padding, so SDPA gets `is_causal`);
- explicit: the stage-2 code path (`model_mask` -> dense boolean (B, 1, T, T)) with a schedule that evicts nothing,
  i.e. a plain causal mask passed explicitly, through plain `sdpa`;
- memento-sdpa: stage 2 with `EvictionPolicy(0)` (the paper's default) through plain `sdpa`;
- memento: the same through `memento_sdpa` (memento/train/attention.py), the trainer's default.

Per (model, precision), one process (`--timing`) times the variants interleaved round by round, so load from
elsewhere on the machine hits them alike, and times the attention kernel alone (forward + backward at the model's
shapes); fresh processes (`--memory`) read the peak RSS (ru_maxrss) of two steps under each variant. Sequences
are complete synthetic traces of up to the length, blocks ~length/8 tokens with mementos ~1/7 of a block (about
the OpenMementos ratio); every row of a batch is the same trace, so there is no padding (the causal step's best
case: with padding it too gets an explicit mask).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

THREADS = 2
TINY = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
SMALL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
MID = dict(hidden_size=320, intermediate_size=864, num_hidden_layers=6, num_attention_heads=5, num_key_value_heads=1)
CONFIGS = {  # name: tokenizer, Llama config, batch, length, warm-up steps, timed steps
    "tiny-chars-512": ("chars", TINY, 8, 512, 3, 10),
    "tiny-chars-2048": ("chars", TINY, 4, 2048, 2, 6),
    "small-chars-2048": ("chars", SMALL, 4, 2048, 2, 5),
    "llama22m-smollm2-1024": ("smollm2", MID, 1, 1024, 2, 7),
}
MASKS = ("causal", "explicit", "memento-sdpa", "memento")
RSS_MASKS = ("causal", "memento-sdpa", "memento")
PRECISIONS = ("fp32", "bf16")


def synthetic_trace(tokenizer, length: int):
    """A complete trace of at most `length` tokens (close to it): blocks of ~length/8 tokens, mementos ~1/7 of that,
    the last block shortened to fill the length."""
    from memento.core.chat import label_trace
    from memento.core.format import Block, Trace

    sentence = "We add the next term to the running total and check the carry. "
    memento = "Total so far: 49. "
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    reps = max(1, round(length / 8 / count(sentence)))
    summary = memento * max(1, round(count(sentence * reps) / 7 / count(memento)))
    trace = Trace("Add the numbers.", [], "The sum is \\boxed{42}.")
    size = lambda: len(label_trace(trace, tokenizer)[0].ids)  # noqa: E731
    while True:
        trace.blocks.append(Block(sentence * reps, summary))
        if size() > length:
            break
    for r in range(reps - 1, -1, -1):
        trace.blocks[-1] = Block(sentence * r, summary)
        if r == 0:
            trace.blocks.pop()
        if size() <= length:
            return trace
    raise AssertionError("unreachable")


class Setup:
    """Tokenizer, model, optimizer and the batches of one configuration, in this process."""

    def __init__(self, name: str, precision: str):
        from transformers import AutoConfig, AutoModelForCausalLM

        from memento.core.policy import EvictionPolicy
        from memento.tokenizer import load_tokenizer
        from memento.train.attention import register
        from memento.train.dataset import IGNORE, Collator, build_examples

        torch.set_num_threads(THREADS)
        torch.manual_seed(0)
        spec, values, batch_size, length, self.warmup, self.timed = CONFIGS[name]
        tokenizer = load_tokenizer(spec)
        examples, _ = build_examples([synthetic_trace(tokenizer, length)], tokenizer, length)
        self.examples = examples * batch_size
        self.policy = EvictionPolicy(0)
        pad = tokenizer.pad_token_id or 0
        self.collate = {"causal": Collator(pad, None), "memento": Collator(pad, self.policy)}
        self.batch = {kind: collate(self.examples) for kind, collate in self.collate.items()}
        config = AutoConfig.for_model(
            "llama", vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True, **values
        )
        register()
        self.model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        self.model.config.pad_token_id = tokenizer.pad_token_id
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.precision = precision
        self.tokens = int((self.batch["causal"]["labels"] != IGNORE).sum())
        self.info = {
            "config": name,
            "precision": precision,
            "tokenizer": spec,
            "model_config": values,
            "params": sum(p.numel() for p in self.model.parameters()),
            "batch": batch_size,
            "length": self.batch["causal"]["input_ids"].shape[1],
            "padding": int(self.batch["causal"]["pad"].sum()),
        }

    def step(self, mask: str) -> float:
        """One trainer micro-step of a variant (causal | explicit | memento-sdpa | memento); wall ms."""
        from memento.train.losses import token_losses

        self.model.set_attn_implementation("memento_sdpa" if mask == "memento" else "sdpa")
        batch = self.batch["memento" if mask.startswith("memento") else "causal"]
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()
        t0 = time.perf_counter()
        with autocast:
            losses, _ = token_losses(self.model, batch, "causal" if mask == "causal" else "memento", False, "cpu")
            loss = losses.sum() / self.tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return 1e3 * (time.perf_counter() - t0)


def median_ms(fn, reps: int = 7) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(out)


def timing(name: str, precision: str) -> dict:
    """Step times of the variants, interleaved round by round (the order rotating) so that load from elsewhere
    on the machine hits them alike; plus the mask and collate costs and the attention kernel alone."""
    from memento.train.masks import dense_mask, model_mask

    s = Setup(name, precision)
    for _ in range(s.warmup):
        for mask in MASKS:
            s.step(mask)
    times = {mask: [] for mask in MASKS}
    for r in range(s.timed):
        for mask in MASKS[r % len(MASKS) :] + MASKS[: r % len(MASKS)]:
            times[mask].append(s.step(mask))
    batch = s.batch["memento"]
    n = s.info["length"]
    out = dict(s.info)
    for mask in MASKS:
        out[f"{mask}_ms"] = statistics.median(times[mask])
        out[f"{mask}_ms_all"] = times[mask]
    out["mask_ms"] = median_ms(lambda: model_mask(s.model, batch["schedule"], batch["pad"]))
    out["collate_ms"] = {kind: median_ms(lambda c=c: c(s.examples)) for kind, c in s.collate.items()}
    out["mask_density"] = int(dense_mask(batch["schedule"], batch["pad"]).sum()) / (s.info["batch"] * n * (n + 1) / 2)
    out["attention"] = attention(s)
    return out


def attention(s: Setup) -> dict:
    """The attention kernel alone, forward + backward at one layer's shapes: SDPA with is_causal, with a causal
    boolean mask, with the Memento mask, and `chunked_sdpa` (what `memento_sdpa` runs) with the Memento mask."""
    from memento.train.attention import chunked_sdpa
    from memento.train.masks import dense_mask

    values = s.info["model_config"]
    b, n = s.batch["memento"]["schedule"].shape
    heads, dim = values["num_attention_heads"], values["hidden_size"] // values["num_attention_heads"]
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32
    q, k, v = (torch.randn(b, heads, n, dim, dtype=dtype, requires_grad=True) for _ in range(3))
    causal = dense_mask(s.batch["causal"]["schedule"], s.batch["causal"]["pad"])
    memento = dense_mask(s.batch["memento"]["schedule"], s.batch["memento"]["pad"])
    sdpa = torch.nn.functional.scaled_dot_product_attention
    kernels = {
        "causal": lambda: sdpa(q, k, v, is_causal=True),
        "explicit": lambda: sdpa(q, k, v, attn_mask=causal),
        "memento-sdpa": lambda: sdpa(q, k, v, attn_mask=memento),
        "memento": lambda: chunked_sdpa(q, k, v, memento),
    }
    tolerance = 5e-2 if dtype == torch.bfloat16 else 1e-4
    assert torch.allclose(kernels["memento"]().float(), kernels["memento-sdpa"]().float(), atol=tolerance)

    def run(kernel):
        kernel().sum().backward()
        q.grad = k.grad = v.grad = None

    for _ in range(2):
        for kernel in kernels.values():
            run(kernel)
    return {"shape": [b, heads, n, dim]} | {f"{name}_ms": median_ms(lambda f=f: run(f)) for name, f in kernels.items()}


def memory(name: str, precision: str, mask: str) -> dict:
    """Peak RSS of a fresh process that sets up and runs two steps of a variant (the optimizer state included)."""
    s = Setup(name, precision)
    setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(2):
        s.step(mask)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": name, "precision": precision, "mask": mask, "rss_setup_mb": setup, "rss_peak_mb": peak}


def spawn(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(runs: list[dict], seconds: float) -> None:
    from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

    lines = header(
        "Training step: Memento mask (stage 2) vs causal (stage 1) on CPU",
        "train_step.py",
        f"torch {torch.__version__}, {THREADS} threads, AdamW. Total run {seconds / 60:.1f} min.",
        "",
        "Step = forward + loss + backward + clip + AdamW, the trainer's micro-step. *causal*: stage 1 (the model's "
        "own mask; no padding, so SDPA runs `is_causal`); *explicit*: the stage-2 code path with a schedule that "
        "evicts nothing, i.e. a dense causal boolean mask, through plain `sdpa`; *memento, sdpa*: stage 2 with "
        "`EvictionPolicy(0)` through plain `sdpa`; *memento*: the same through `memento_sdpa` (chunked SDPA over the "
        "keys each chunk of 256 queries sees; the trainer's default). Times are medians over rounds that interleave "
        "the variants in one process (the order rotating), after warm-up. ratio = memento / causal (target <= 1.3). "
        "Mask build = `model_mask` (dense (B, 1, T, T) bool from schedule + pad; part of the stage-2 steps). "
        "Density = attended pairs / causal pairs. Peak RSS = ru_maxrss of a fresh process that builds the model and "
        "runs two steps of that variant.",
    )
    for precision in PRECISIONS:
        lines += [
            "",
            f"## {precision}" + (" (torch.autocast cpu bfloat16, fp32 weights)" if precision == "bf16" else ""),
            "",
            "| model | params | batch x length | causal ms | explicit ms | memento, sdpa ms | memento ms | ratio "
            "| mask build ms | density | peak RSS MB (causal, memento sdpa, memento) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in runs if r["precision"] == precision):
            v = r["model_config"]
            model = f"Llama h{v['hidden_size']} x{v['num_hidden_layers']}, {r['tokenizer']} vocab"
            rss = ", ".join(f"{r['rss'][m]:.0f}" for m in RSS_MASKS)
            lines.append(
                f"| {model} | {r['params'] / 1e6:.2f}M | {r['batch']} x {r['length']} | {r['causal_ms']:.0f} "
                f"| {r['explicit_ms']:.0f} | {r['memento-sdpa_ms']:.0f} | {r['memento_ms']:.0f} "
                f"| {r['memento_ms'] / r['causal_ms']:.2f} | {r['mask_ms']:.1f} | {r['mask_density']:.2f} "
                f"| {rss} |"
            )
    lines += [
        "",
        "## Attention alone (forward + backward, ms)",
        "",
        "| model | precision | B, H, T, D | SDPA is_causal | SDPA causal bool mask | SDPA Memento mask "
        "| chunked_sdpa, Memento mask |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        a = r["attention"]
        lines.append(
            f"| h{r['model_config']['hidden_size']}, {r['batch']} x {r['length']} | {r['precision']} "
            f"| {', '.join(map(str, a['shape']))} | {a['causal_ms']:.1f} | {a['explicit_ms']:.1f} "
            f"| {a['memento-sdpa_ms']:.1f} | {a['memento_ms']:.1f} |"
        )
    lines += ["", "## Findings", "", *findings(runs)]
    write("train_step", {"runs": runs}, lines)


def findings(runs: list[dict]) -> list[str]:
    """The summary sentences, from the numbers."""

    def span(values, fmt="{:.2f}"):
        return f"{fmt.format(min(values))}-{fmt.format(max(values))}"

    ratio = {p: [r["memento_ms"] / r["causal_ms"] for r in runs if r["precision"] == p] for p in PRECISIONS}
    plain = [r["memento-sdpa_ms"] / r["causal_ms"] for r in runs]
    missed = [f"{r['config']} {r['precision']}" for r in runs if r["memento_ms"] / r["causal_ms"] > 1.3]
    kernel = [r["attention"]["memento-sdpa_ms"] / r["attention"]["causal_ms"] for r in runs]
    chunked = [r["attention"]["memento_ms"] / r["attention"]["causal_ms"] for r in runs]
    mask = [100 * r["mask_ms"] / r["memento_ms"] for r in runs]
    big = max(runs, key=lambda r: r["rss"]["memento-sdpa"] - r["rss"]["causal"])
    copy = big["batch"] * big["length"] ** 2 * (4 if big["precision"] == "fp32" else 2) / 2**20
    return [
        f"Memento / causal step time is {span(ratio['fp32'])}x in fp32 and {span(ratio['bf16'])}x in bf16 with "
        "`memento_sdpa`: the 1.3x target "
        + (f"is missed for {', '.join(missed)}" if missed else "holds everywhere measured")
        + f". Through plain `sdpa` the same step costs {span(plain)}x the causal one.",
        f"Why: alone, SDPA under the Memento boolean mask takes {span(kernel)}x its is_causal time, because with a "
        "mask PyTorch's CPU kernel computes every query-key block (the causal upper triangle included) and skips "
        f"nothing evicted; `chunked_sdpa` computes only what the mask lets through and takes {span(chunked)}x.",
        f"Building the mask is {span(mask, '{:.1f}')}% of the Memento step. Through plain `sdpa`, peak RSS grows by "
        f"up to {big['rss']['memento-sdpa'] - big['rss']['causal']:.0f} MB ({big['config']} {big['precision']}): "
        f"SDPA turns the boolean mask into a {copy:.0f} MB float copy in each of the "
        f"{big['model_config']['num_hidden_layers']} layers and keeps it for backward; `memento_sdpa` "
        f"{big['rss']['memento'] - big['rss']['causal']:+.0f} MB.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timing", nargs=2, metavar=("CONFIG", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=3, metavar=("CONFIG", "PRECISION", "MASK"), help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS), help="configurations")
    args = parser.parse_args()
    if args.timing or args.memory:
        print(json.dumps(timing(*args.timing) if args.timing else memory(*args.memory)))
        return
    t0 = time.perf_counter()
    runs = []
    for precision in PRECISIONS:
        for name in args.only:
            r = spawn("--timing", name, precision)
            r["rss"] = {mask: spawn("--memory", name, precision, mask)["rss_peak_mb"] for mask in RSS_MASKS}
            runs.append(r)
            print(
                f"{name} {precision}: "
                + ", ".join(f"{m} {r[f'{m}_ms']:.0f} ms" for m in MASKS)
                + f", attention {r['attention']}, rss {r['rss']}",
                flush=True,
            )
    report(runs, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
