"""The checks only a CUDA machine can run, as one script with a short report (issue #20).

Run on a CUDA machine that has torch and transformers (no vLLM, no network needed): `scripts/gpu_check.sh [OUT]`.
`--device cpu` runs the same checks where they can run on a CPU (`tests/test_gpu_check.py` does, so the script
stays working between GPU sessions); FlexAttention's backward is CUDA-only, so on a CPU that part is reported as
not run.

Checks, each on random tiny Qwen3 and Llama models with the character tokenizer and toy Memento traces (all built
here: nothing to download):
1. FlexAttention `BlockMask` forward == dense-mask SDPA forward == decoding with physical eviction (the reference
   engine teacher-forcing the same tokens), fp32, keep 0 / keep 1 / restart.
2. A training step in bf16 autocast under the Memento mask, with SDPA, `memento_sdpa` and FlexAttention: finite
   loss, within 2% of the fp32 loss, every parameter's gradient finite and not all zero.
3. The reference engine on the device: greedy generation with eviction gives the CPU's tokens (fp32).
4. vLLM's `KVMover` (no vLLM needed: the cache writes are emulated) on the device's tensors, in FlashAttention's and
   FlashInfer's page layouts (vLLM 0.32's per-layer views of one buffer in three stride orders, and the older
   kv-first / pages-first layouts stored heads-first): a compaction and a shuffle equal a reference move made through
   each layer's logical K/V views, in bf16, fp16 and fp32.
5. `KVMover` move timings: 128, 1,024 and 4,096 tokens in 36 layers (8 KV heads of 128, pages of 16, bf16).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memento.core.chat import label_trace, memento_ids  # noqa: E402
from memento.core.policy import EvictionPolicy, eviction_schedule  # noqa: E402
from memento.synthetic.sums import sums_traces  # noqa: E402
from memento.tokenizer import char_tokenizer  # noqa: E402

POLICIES = {
    "keep0": EvictionPolicy(0),
    "keep1": EvictionPolicy(1),
    "keep0 restart": EvictionPolicy(0, restart=True, mask_delimiters=True),
}
TOL = 2e-4


def tiny(arch: str, vocab: int, attention: str, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=attention,
    )
    model = (
        Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16))
        if arch == "qwen3"
        else LlamaForCausalLM(LlamaConfig(**common))
    )
    return model.to(device).eval()


QUICK = False  # --quick: one model and two policies in the mask check (the CPU test's setting)


def masks_agree(device: str, lines: list[str]) -> bool:
    from memento.engine.reference import teacher_force
    from memento.train.masks import dense_mask, flex_block_mask

    tokenizer = char_tokenizer()
    special = memento_ids(tokenizer)
    trace = sums_traces(1, seed=1, blocks=(3, 3))[0]
    encoded, spans = label_trace(trace, tokenizer)
    ids = torch.tensor([encoded.ids], device=device)
    positions = torch.arange(ids.shape[1], device=device)[None]
    ok = True
    for arch in ("qwen3",) if QUICK else ("qwen3", "llama"):
        for name, policy in list(POLICIES.items())[: 2 if QUICK else None]:
            schedule = torch.from_numpy(eviction_schedule(spans, policy))[None].to(device)
            pad = torch.zeros_like(schedule, dtype=torch.bool)
            with torch.no_grad():
                sdpa = tiny(arch, len(tokenizer), "sdpa", device)
                dense = sdpa(
                    input_ids=ids, attention_mask=dense_mask(schedule, pad, policy.restart), position_ids=positions
                )
                decoded, _ = teacher_force(sdpa, special, policy, encoded.ids, encoded.completion_start)
                flex_diff = "not run"
                try:
                    flex = tiny(arch, len(tokenizer), "flex_attention", device)
                    block = flex_block_mask(schedule, pad, policy.restart)
                    out = flex(input_ids=ids, attention_mask=block, position_ids=positions).logits[0]
                    flex_diff = float((out - dense.logits[0]).abs().max())
                except Exception as e:  # FlexAttention unavailable here: say why
                    flex_diff = f"not run ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
            decode_diff = (dense.logits[0] - decoded.to(device)).abs()
            if policy.restart:  # the memento being written was sampled while its block was visible
                from memento.core.spans import Kind

                writing = torch.from_numpy(
                    (spans.kind == Kind.SUMMARY_START) | (spans.kind == Kind.SUMMARY) | (spans.kind == Kind.BLOCK_END)
                ).to(device)
                decode_diff = decode_diff[~writing]
            decode_diff = float(decode_diff.max())
            good = decode_diff <= TOL and (isinstance(flex_diff, str) or flex_diff <= TOL)
            ok &= good and (device == "cpu" or not isinstance(flex_diff, str))
            shown = flex_diff if isinstance(flex_diff, str) else f"{flex_diff:.1e}"
            lines.append(f"| {arch} | {name} | {decode_diff:.1e} | {shown} | {'ok' if good else 'FAIL'} |")
    return ok


def training_step(device: str, lines: list[str]) -> bool:
    from memento.train.dataset import Collator, build_examples
    from memento.train.losses import token_losses

    tokenizer = char_tokenizer()
    policy = EvictionPolicy(0)
    examples, _ = build_examples(sums_traces(4, seed=2), tokenizer, 4096)
    batch = Collator(tokenizer.pad_token_id, policy)(examples)
    ok = True
    attentions = ["sdpa", "memento_sdpa"] + (["flex_attention"] if device == "cuda" else [])
    for attention in attentions:
        if attention == "memento_sdpa":
            from memento.train.attention import register

            register()
        model = tiny("qwen3", len(tokenizer), attention, device).train()
        losses = {}
        for precision in ("fp32", "bf16"):
            model.zero_grad()
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                per_token, _ = token_losses(model, batch, "memento", policy.restart, device)
            loss = per_token.sum() / (batch["labels"][:, 1:] != -100).sum().to(device)
            loss.backward()
            grads = [p.grad for p in model.parameters()]
            finite = all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
            moving = sum(bool(g.abs().sum() > 0) for g in grads if g is not None)
            losses[precision] = loss.item()
            ok &= finite and moving == len(grads) and bool(torch.isfinite(loss))
        close = abs(losses["bf16"] - losses["fp32"]) <= 0.02 * losses["fp32"]
        ok &= close
        lines.append(f"| {attention} | {losses['fp32']:.4f} | {losses['bf16']:.4f} | {'ok' if close else 'FAIL'} |")
    if device != "cuda":
        lines.append("| flex_attention | - | - | not run (its backward needs CUDA) |")
    return ok


def engine_on_device(device: str, lines: list[str]) -> bool:
    from memento.engine.generate import ReferenceEngine
    from memento.engine.sampling import Sampling

    tokenizer = char_tokenizer()
    results = {}
    for where in dict.fromkeys(["cpu", device]):
        model = tiny("llama", len(tokenizer), "sdpa", where)
        engine = ReferenceEngine(model, tokenizer, EvictionPolicy(0))
        done = engine.generate(["Add 3 and 4."] * 3, Sampling(max_new_tokens=48), batch_size=3)
        results[where] = [g.ids for g in done]
    same = results["cpu"] == results[device]
    lines.append(f"| greedy, keep 0, batch 3 | {'same tokens as the CPU' if same else 'DIFFERENT tokens'} |")
    return same


HEADS, DIM, PAGE = 8, 128, 16  # the mover checks' KV heads, head size and page size (a Qwen3-8B-like layer)


def _split(kv):
    """vLLM 0.32's FlashAttention / FlashInfer: a layer's (pages, heads, page, 2 * dim) view, split into K and V
    (pages, page, heads, dim), as `do_kv_cache_update` does before `reshape_and_cache_flash`."""
    return kv.transpose(1, 2).split(kv.shape[-1] // 2, dim=-1)


MOVER_LAYOUTS = {  # name: (a layer's logical shape for a page count, memory order of [layer, *shape], K/V views)
    "vLLM 0.32 LBNHC (the default)": (lambda p: (p, HEADS, PAGE, 2 * DIM), (0, 1, 3, 2, 4), _split),
    "vLLM 0.32 LBHNC (HND)": (lambda p: (p, HEADS, PAGE, 2 * DIM), (0, 1, 2, 3, 4), _split),
    "vLLM 0.32 BLHNC (pages outermost)": (lambda p: (p, HEADS, PAGE, 2 * DIM), (1, 0, 2, 3, 4), _split),
    "(2, pages, page, heads, dim), HND": (
        lambda p: (2, p, PAGE, HEADS, DIM),
        (0, 1, 2, 4, 3, 5),
        lambda kv: (kv[0], kv[1]),
    ),
    "(pages, 2, page, heads, dim), HND": (
        lambda p: (p, 2, PAGE, HEADS, DIM),
        (0, 1, 2, 4, 3, 5),
        lambda kv: (kv[:, 0], kv[:, 1]),
    ),
}


class _Impl:
    """An attention layer's `impl` whose cache write stores token `slot` at page `slot // PAGE`, offset
    `slot % PAGE` of the layout's K and V views (what the CUDA kernel does)."""

    num_kv_heads, head_size = HEADS, DIM

    def __init__(self, views):
        self.views = views

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        k, v = self.views(kv_cache)
        k[slot_mapping // PAGE, slot_mapping % PAGE] = key
        v[slot_mapping // PAGE, slot_mapping % PAGE] = value


def _mover_cache(name: str, layers: int, pages: int, dtype, device: str):
    """Random memory holding `layers` layers in the layout, the layers' views of it, and a model runner over them."""
    shape, order, views = MOVER_LAYOUTS[name]
    shape = (layers, *shape(pages))
    memory = torch.randn([shape[d] for d in order], device=device).to(dtype)
    logical = memory.permute(torch.tensor(order).argsort().tolist())
    context = {f"layer{i}": SimpleNamespace(kv_cache=logical[i], impl=_Impl(views)) for i in range(layers)}
    runner = SimpleNamespace(
        compilation_config=SimpleNamespace(static_forward_context=context),
        kv_cache_config=SimpleNamespace(num_blocks=pages),
    )
    return memory, [logical[i] for i in range(layers)], runner


def _moved(memory, layers, views, src: list[int], dst: list[int]):
    """`memory` after copying slots `src` to `dst` through each layer's K and V views."""
    out = memory.clone()
    s, d = (torch.tensor(x, device=memory.device) for x in (src, dst))
    for kv in layers:
        for part in views(torch.as_strided(out, kv.shape, kv.stride(), kv.storage_offset())):
            part[d // PAGE, d % PAGE] = part[s // PAGE, s % PAGE]
    return out


def mover_layouts(device: str, lines: list[str]) -> bool:
    from memento.engine.vllm.mover import KVMover

    pages = 64
    slots = pages * PAGE
    generator = torch.Generator().manual_seed(0)
    moves = [
        (list(range(37, slots)), list(range(slots - 37))),  # every token 37 slots left: overlapping, across pages
        (
            torch.randperm(slots, generator=generator)[:300].tolist(),
            torch.randperm(slots, generator=generator)[:300].tolist(),
        ),
    ]
    ok = True
    for name, (_, _, views) in MOVER_LAYOUTS.items():
        for dtype in (torch.bfloat16,) if QUICK else (torch.bfloat16, torch.float16, torch.float32):
            memory, layers, runner = _mover_cache(name, 4, pages, dtype, device)
            mover = KVMover(runner)
            good = True
            for src, dst in moves:
                expected = _moved(memory, layers, views, src, dst)
                mover.move(src, dst)
                good &= torch.equal(memory, expected)
            ok &= good
            lines.append(f"| {name} | {str(dtype).removeprefix('torch.')} | {'ok' if good else 'DIFFERENT'} |")
    return ok


def mover_timings(device: str, lines: list[str]) -> bool:
    from memento.engine.vllm.mover import KVMover

    layers, counts = (4, (128, 1024)) if QUICK else (36, (128, 1024, 4096))
    name = next(iter(MOVER_LAYOUTS))
    memory, _, runner = _mover_cache(name, layers, 2 * max(counts) // PAGE + 8, torch.bfloat16, device)
    mover = KVMover(runner)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for n in counts:
        src, dst = list(range(37, 37 + n)), list(range(n))  # a compaction
        times = []
        for _ in range(8):
            sync()
            start = time.perf_counter()
            mover.move(src, dst)
            sync()
            times.append(time.perf_counter() - start)
        ms = sorted(times[2:])[len(times[2:]) // 2] * 1e3  # the median after two warm-up moves
        moved = 2 * n * layers * 2 * HEADS * DIM * memory.element_size()  # bytes read and written
        lines.append(f"| {n:,} | {layers} | {ms:.2f} | {moved / ms / 1e6:.1f} |")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"))
    parser.add_argument("--quick", action="store_true", help="one model and two policies in the mask check")
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible; use --device cpu for the CPU part", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    lines = [
        "# GPU check",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, device {device} ({name}), torch {torch.__version__}, "
        f"python {platform.python_version()}.",
        "",
    ]
    checks = [
        (
            "FlexAttention BlockMask == dense mask == evicted decoding (fp32, max |logit difference|)",
            ["| model | policy | dense vs evicted decode | flex vs dense | |", "|---|---|---|---|---|"],
            masks_agree,
        ),
        (
            "A training step under the Memento mask: fp32 vs bf16 autocast loss",
            ["| attention | fp32 loss | bf16 loss | within 2% |", "|---|---|---|---|"],
            training_step,
        ),
        ("The reference engine on the device", ["| run | result |", "|---|---|"], engine_on_device),
        (
            "KVMover in FlashAttention / FlashInfer page layouts == a reference move (4 layers)",
            ["| layout | dtype | result |", "|---|---|---|"],
            mover_layouts,
        ),
        (
            "KVMover move timings (bf16, LBNHC, 8 KV heads of 128, pages of 16)",
            ["| tokens | layers | ms per move | GB/s moved |", "|---|---|---|---|"],
            mover_timings,
        ),
    ]
    return report(checks, lines, args.out, device)


def report(checks: list, lines: list[str], out: Path, *args) -> int:
    """Run each (title, header lines, check) with `args` and a list for its lines; write the Markdown report to `out`
    and print it; 1 if any check failed (an exception fails its check, with the traceback in the report)."""
    failed = 0
    for title, head, check in checks:
        start = time.perf_counter()
        body: list[str] = []
        try:
            ok = check(*args, body)
        except Exception:
            ok = False
            body = ["```", traceback.format_exc()[-2000:], "```"]
        failed += not ok
        lines += [f"## {title}: {'ok' if ok else 'FAILED'} ({time.perf_counter() - start:.1f} s)", "", *head, *body, ""]
    lines.append(f"{len(checks) - failed} of {len(checks)} checks passed.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
