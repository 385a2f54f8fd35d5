"""How the fast paths reach a pass's linear calls, measured: hooks on the model's ``nn.Linear`` modules (what the
engine does, ``draftless/fastpath/routing.py``) against a ``TorchFunctionMode`` that routes ``F.linear`` to the
same kernel (what it did before; a mode's Python dispatch sees every torch call of the pass, not only the linear
ones). Interleaved passes over a chain of n nodes after a 512-token cache; prints the median ms of each and the
ratio, and checks the logits are the same bit for bit.

    python scripts/routing_ab.py --model smollm2-135m --sizes 1,2,4,8,16,32 --rounds 12
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from draftless.fastpath import VerificationPaths
from draftless.hf.attention import inspect_model, tree_attention_mask
from draftless.hf.compat import cache_keyword
from draftless.hf.kv_cache import keep_prefix_and, new_cache
from draftless.hf.loading import load_model


class ModeRouting(TorchFunctionMode):
    """The old mechanism: every torch call of the forward passes through here; ``F.linear`` calls the router
    takes go to it."""

    def __init__(self, router):
        super().__init__()
        self.router = router

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2:
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if self.router.route(args[0], args[1], bias):
                return self.router.linear(args[0], args[1], bias)
        return func(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--cache-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    model, _ = load_model(args.model)
    paths = VerificationPaths(model)
    if "skinny" not in paths.available:
        raise SystemExit("the fast paths apply to CPU float32 models only")
    from draftless.fastpath.packed_linear import PackedRouter, PackedWeights
    from draftless.fastpath.skinny_linear import SkinnyRouter

    routers = {"skinny": SkinnyRouter()}
    if "packed" in paths.available:
        routers["packed"] = PackedRouter(PackedWeights())
    layout = inspect_model(model)
    vocab = model.config.get_text_config(decoder=True).vocab_size
    keyword, prefix_len = cache_keyword(model), args.cache_length
    cache = new_cache()
    print(f"{args.model}: median ms per pass over {args.rounds - 2} rounds (2 warm-up), {prefix_len}-token cache")
    with torch.inference_mode(), paths.attached():
        model(input_ids=torch.randint(0, vocab, (1, prefix_len)), **{keyword: cache}, use_cache=True,
              logits_to_keep=1)
        for n in [int(s) for s in args.sizes.split(",")]:
            mask = tree_attention_mask(layout, np.tril(np.ones((n, n), dtype=bool)), np.arange(n), prefix_len,
                                       torch.float32, "cpu")
            ids = torch.randint(0, vocab, (1, n))
            pos = torch.arange(prefix_len, prefix_len + n)[None]
            contexts = {}
            for name, router in routers.items():
                router.prepare()
                contexts[f"{name}/mode"] = lambda r=router: ModeRouting(r)
                contexts[f"{name}/hooks"] = lambda name=name: paths.context(name)
            times = {k: [] for k in contexts}
            logits = {}
            for _ in range(args.rounds):
                for key, context in contexts.items():
                    t0 = time.perf_counter()
                    with context():
                        out = model(input_ids=ids, position_ids=pos, attention_mask=mask, **{keyword: cache},
                                    use_cache=True).logits
                    times[key].append((time.perf_counter() - t0) * 1000)
                    logits[key] = out
                    keep_prefix_and(cache, prefix_len, torch.zeros(0, dtype=torch.long))
            cells = []
            for name in routers:
                mode_ms = float(np.median(times[f"{name}/mode"][2:]))
                hooks_ms = float(np.median(times[f"{name}/hooks"][2:]))
                same = torch.equal(logits[f"{name}/mode"], logits[f"{name}/hooks"])
                cells.append(f"{name}: mode {mode_ms:6.1f} hooks {hooks_ms:6.1f} ({mode_ms / hooks_ms:.3f}x"
                             f"{', same logits' if same else ', LOGITS DIFFER'})")
            print(f"n={n:3d}  " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
