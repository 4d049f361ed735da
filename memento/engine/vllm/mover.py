"""`KVMover`: moves tokens' K/V between slots of vLLM's paged KV cache (plain torch: importable without vLLM).

Moving a token needs to know where its K and V live inside a page, and that layout belongs to the attention backend
(the CPU kernels store keys transposed, per ISA). `KVMover` learns it once per layer by asking the backend's own
cache-write op to store numbered values into a scratch page, so any backend that writes through
`do_kv_cache_update` works without layout code here.
"""

from __future__ import annotations

import torch

from memento.core.errors import MementoError

BASE = 8  # digits 1..8 are exact in every float type a KV cache uses


class KVMover:
    """Moves tokens between slots (`page * page_size + offset`) in every attention layer's paged KV cache."""

    def __init__(self, runner):
        context = runner.compilation_config.static_forward_context
        num_pages = runner.kv_cache_config.num_blocks
        # one entry per distinct layout: offsets (page_size, elements), page stride, and the layers stored that way,
        # each as a 1-D view of its storage starting at the layer's first element
        layouts: dict[tuple, tuple[torch.Tensor, int, list[torch.Tensor]]] = {}
        seen: set[tuple] = set()  # layers sharing one KV tensor are moved once
        for name, layer in context.items():
            kv = getattr(layer, "kv_cache", None)
            if not isinstance(kv, torch.Tensor) or kv.numel() == 0 or not hasattr(layer, "impl"):
                continue
            dims = [d for d, n in enumerate(kv.shape) if n == num_pages]
            if not dims:
                raise MementoError(
                    f"memento: cannot find the page dimension of {name}'s KV cache {tuple(kv.shape)}: "
                    f"no dimension has the engine's {num_pages} pages"
                )
            page_dim = dims[0]
            where = (kv.untyped_storage().data_ptr(), kv.storage_offset(), tuple(kv.shape), kv.stride())
            if where in seen:
                continue
            seen.add(where)
            key = (tuple(kv.shape), kv.stride(), kv.dtype, type(layer.impl), page_dim)
            if key not in layouts:
                layouts[key] = (self._calibrate(layer, kv, page_dim), kv.stride(page_dim), [])
            storage = kv.untyped_storage()
            size = storage.nbytes() // kv.element_size() - kv.storage_offset()
            layouts[key][2].append(kv.new_empty(0).set_(storage, kv.storage_offset(), (size,), (1,)))
        if not layouts:
            raise MementoError("memento: the model runner has no attention layer with a KV cache")
        self.layouts = list(layouts.values())

    @staticmethod
    def _calibrate(layer, kv: torch.Tensor, page_dim: int) -> torch.Tensor:
        """(page_size, elements) storage offsets, relative to the page's start, of each token's K/V elements, in one
        order shared by all tokens (element e of token a corresponds to element e of token b)."""
        impl = layer.impl
        heads, dim = impl.num_kv_heads, impl.head_size
        shape = list(kv.shape)
        shape[page_dim] = 1
        scratch = torch.zeros(shape, dtype=kv.dtype, device=kv.device)
        page = scratch.numel() // (2 * heads * dim)
        ids = torch.arange(page * 2 * heads * dim, device=kv.device).view(page, 2, heads, dim)
        code = torch.zeros(scratch.numel(), dtype=torch.long, device=kv.device)
        slots = torch.arange(page, device=kv.device)
        digits = 1
        while BASE**digits < ids.numel():
            digits += 1
        written = None
        for d in range(digits):
            values = ((ids // BASE**d) % BASE + 1).to(kv.dtype)
            scratch.zero_()
            impl.do_kv_cache_update(layer, values[:, 0].contiguous(), values[:, 1].contiguous(), scratch, slots)
            got = scratch.reshape(-1).round().long()
            written = got > 0 if written is None else written
            code += (got - 1).clamp(min=0) * BASE**d
        where = torch.nonzero(written).flatten()
        if len(where) != ids.numel() or not torch.equal(code[where].sort().values, ids.reshape(-1)):
            raise MementoError(
                f"memento: could not learn the KV layout of {type(impl).__name__} ({tuple(kv.shape)}): its cache "
                f"write of one page did not store each of the {ids.numel()} K/V elements exactly once"
            )
        index = torch.stack(torch.unravel_index(where, tuple(shape)))  # (ndim, elements) scratch coordinates
        stride = torch.tensor(kv.stride(), device=kv.device)[:, None]
        offsets = torch.empty(ids.numel(), dtype=torch.long, device=kv.device)
        offsets[code[where]] = (index * stride).sum(0)  # page coordinate is 0: relative to the page
        return offsets.view(page, 2 * heads * dim)

    def move(self, src: list[int], dst: list[int]) -> None:
        """Copy the K/V of slots `src` to slots `dst` in every layer (in each layer, all reads happen before any
        write). The storage indices are computed once per layout, not once per layer."""
        device = self.layouts[0][0].device
        src_t, dst_t = (torch.tensor(x, dtype=torch.long, device=device) for x in (src, dst))
        for offsets, page_stride, layers in self.layouts:
            page = offsets.shape[0]
            at_src = (src_t // page * page_stride)[:, None] + offsets[src_t % page]
            at_dst = (dst_t // page * page_stride)[:, None] + offsets[dst_t % page]
            for flat in layers:
                flat[at_dst] = flat[at_src]
