"""The skinny-GEMM fast path against the obvious oracles: float64 matmul and the model's own forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from draftless.fastpath.kernels.skinny_gemm import skinny_matmul_t, streaming_matmul_t
from draftless.fastpath.routing import route_linears
from draftless.fastpath.skinny_linear import SkinnyRouter, skinny_linear

# every few-row kernel of the skinny path, each against the same oracles
KERNELS = [skinny_matmul_t, streaming_matmul_t]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 19), n_in=st.integers(1, 70), n_out=st.integers(1, 130), seed=st.integers(0, 2**31 - 1))
def test_kernel_matches_float64_matmul(kernel, rows, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    out = np.full((rows, n_out), np.nan, dtype=np.float32)
    kernel(x, w, out)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    # fp32 accumulation of n_in products: error bound ~ n_in * eps * sum|x_i w_i|
    bound = 4 * n_in * np.finfo(np.float32).eps * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T)
    assert np.all(np.abs(out - exact) <= bound + 1e-30)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
def test_kernel_keeps_nan_and_inf(kernel):
    x = np.ones((2, 8), dtype=np.float32)
    w = np.ones((3, 8), dtype=np.float32)
    w[1, 3] = np.nan
    w[2, 0] = np.inf
    out = np.zeros((2, 3), dtype=np.float32)
    kernel(x, w, out)
    assert np.all(out[:, 0] == 8) and np.all(np.isnan(out[:, 1])) and np.all(np.isposinf(out[:, 2]))


def test_prefetch_row_takes_2d_arrays_only():
    import numba as nb
    from numba.core.errors import TypingError

    from draftless.fastpath.kernels.prefetch import prefetch_row

    @nb.njit
    def touch_every_row(a):
        for r in range(a.shape[0]):
            prefetch_row(a, r)
        return a.sum()

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert touch_every_row(a) == a.sum()  # a hint only: nothing read or written changes
    with pytest.raises(TypingError):
        touch_every_row(np.zeros(4, dtype=np.float32))


@pytest.mark.parametrize("shape", [(1, 7), (3, 7), (2, 5, 7), (1, 16, 7)])
def test_skinny_linear_matches_f_linear(shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(11, 7, generator=gen)
    b = torch.randn(11, generator=gen)
    torch.testing.assert_close(skinny_linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(skinny_linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_router_routes_only_eligible_calls_of_plain_linear_modules():
    gen = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(6, 9)
    small = torch.randn(1, 3, 6, generator=gen)
    big = torch.randn(1, 40, 6, generator=gen)
    calls = []
    router = SkinnyRouter(max_rows=16)
    original = router.compute

    def spy(*args):
        result = original(*args)
        calls.append(result is not None)
        return result

    router.compute = spy
    model = torch.nn.Sequential(layer)
    with torch.no_grad():
        expected = layer(small)
        with route_linears(model, router):
            a = layer(small)
            b = layer(big)                        # too many rows: MKL
            c = torch.nn.functional.linear(small, layer.weight)  # not a module's call: not seen
        d = layer(small)                          # hooks gone with the context
    assert calls == [True, False]
    torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-5)
    assert b.shape == (1, 40, 9) and c.shape == d.shape == (1, 3, 9)
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_hooks_leave_other_peoples_modules_alone():
    """A linear with someone else's hooks, or a subclass with its own forward, runs as it is."""

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    hooked, scaled, plain = torch.nn.Linear(4, 4), Scaled(4, 4), torch.nn.Linear(4, 4)
    seen = []
    hooked.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    router = SkinnyRouter()
    routed = []
    original = router.compute
    router.compute = lambda *args: routed.append(1) or original(*args)
    x = torch.randn(2, 4)
    with torch.no_grad(), route_linears(torch.nn.ModuleList([hooked, scaled, plain]), router):
        hooked(x), scaled(x), plain(x)
    assert len(routed) == 1 and seen == [torch.Size([2, 4])]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_tree_pass_under_mode_matches_plain_forward(tiny_models, arch):
    """A whole forward of a tiny model (fp32) gives the same logits (to fp32 rounding) and argmaxes with the mode."""
    model = tiny_models(arch)
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with route_linears(model, SkinnyRouter()):
            fast = model(input_ids=ids).logits
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(fast.argmax(-1), plain.argmax(-1))


@pytest.mark.parametrize("case", ["contiguous", "strided", "bias", "too_many_rows", "float64", "wrong_width",
                                  "needs_grad", "zero_rows"])
def test_compute_agrees_with_route_and_linear(case):
    """``compute`` (the hooks' one-pass call) takes exactly the calls ``route`` takes, with ``linear``'s result."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(13, 8, generator=gen)
    b = torch.randn(13, generator=gen) if case == "bias" else None
    inputs = {"strided": torch.randn(3, 16, generator=gen)[:, ::2],
              "too_many_rows": torch.randn(20, 8, generator=gen),
              "float64": torch.randn(2, 8, generator=gen, dtype=torch.float64),
              "wrong_width": torch.randn(2, 9, generator=gen),
              "zero_rows": torch.randn(0, 8, generator=gen)}
    x = inputs.get(case, torch.randn(1, 2, 8, generator=gen))
    router = SkinnyRouter(max_rows=16)
    with torch.set_grad_enabled(case == "needs_grad"):
        if case == "needs_grad":
            w.requires_grad_(True)
        result = router.compute(x, w, b)
        takes = router.route(x, w, b)
    assert (result is not None) == takes == (case in ("contiguous", "strided", "bias"))
    if takes:
        torch.testing.assert_close(result, F.linear(x, w.detach(), b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result, router.linear(x, w.detach(), b), rtol=0, atol=0)
