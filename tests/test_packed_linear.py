"""The packed-weight (oneDNN) fast path against the obvious oracles: ``F.linear`` and the model's own forward, and
the per-engine ``VerificationPaths`` that owns its packed weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from draftless.fastpath import VerificationPaths
from draftless.fastpath.packed_linear import PackedRouter, PackedWeights, packed_linear_supported
from draftless.fastpath.routing import route_linears

pytestmark = pytest.mark.skipif(not packed_linear_supported(), reason="this torch build has no oneDNN linear")


@pytest.mark.parametrize("shape", [(1, 7), (5, 7), (2, 5, 7), (1, 16, 7), (1, 64, 7), (3, 1, 2, 7)])
@pytest.mark.parametrize("n_out", [11, 130])
def test_packed_linear_matches_f_linear(shape, n_out):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(n_out, 7, generator=gen)
    b = torch.randn(n_out, generator=gen)
    packs = PackedWeights()
    torch.testing.assert_close(packs.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packs.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    assert len(packs) == 1  # one pack per weight, whatever the row count or bias


def test_pack_is_reused_and_renewed_when_the_weight_changes():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(9, 6, generator=gen)
    x = torch.randn(4, 6, generator=gen)
    packs = PackedWeights()
    first = packs.get(w)
    assert packs.get(w) is first and packs.nbytes == w.numel() * 4
    w.mul_(2)  # an in-place change: the old pack is stale
    assert packs.get(w) is not first
    torch.testing.assert_close(packs.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    packs.clear()
    assert len(packs) == 0


def test_router_routes_only_eligible_calls():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(9, 6, generator=gen)
    small = torch.randn(1, 3, 6, generator=gen)
    packs = PackedWeights()
    router = PackedRouter(packs, max_rows=16)
    assert router.route(small, w, None)
    assert not router.route(torch.randn(1, 40, 6, generator=gen), w, None)             # too many rows: aten
    assert not router.route(small.bfloat16(), w.bfloat16(), None)                       # not fp32: aten
    assert not router.route(small, torch.randn(6, 9, generator=gen).t(), None)          # non-contiguous weight
    assert not router.route(small, w, torch.randn(4, generator=gen))                    # bias of the wrong size
    with torch.enable_grad():  # a weight that needs grad: autograd must see aten's linear
        assert not router.route(small, torch.nn.Parameter(w.clone()), None)
    layer = torch.nn.Linear(6, 9)
    with torch.no_grad():
        expected = layer(small)
        with route_linears(layer, router):
            got = layer(small)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(packs) == 1  # the layer's weight, nothing else


def test_verification_paths_owns_the_packs_and_falls_back_off_cpu_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 8, bias=False))
    paths = VerificationPaths(model)
    assert paths.available == ("torch", "skinny", "packed")  # "compiled" only when asked for
    with torch.no_grad(), paths.context("packed"):
        y = model(torch.ones(3, 6))
    with torch.no_grad():
        torch.testing.assert_close(y, model(torch.ones(3, 6)), rtol=1e-5, atol=1e-5)
    assert paths.packed_bytes == (6 * 8 + 8 * 8) * 4
    assert not any(hasattr(p, "_packed") for p in model.parameters())  # nothing stored on the model
    paths.release(keep=("torch", "skinny"))
    assert paths.packed_bytes == 0
    bf16 = VerificationPaths(torch.nn.Linear(2, 2).bfloat16())
    assert bf16.available == ("torch",)
    with bf16.context("packed"):  # a curve naming it still runs, as torch
        pass
    with pytest.raises(ValueError):
        paths.context("fast")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_tree_pass_under_mode_matches_plain_forward(tiny_models, arch):
    """A whole forward of a tiny model (fp32; qwen2 has biased projections, gemma3 a tied embedding/head) gives
    the same logits (to fp32 rounding) and argmaxes on the packed path."""
    model = tiny_models(arch)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    paths = VerificationPaths(model)
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with paths.context("packed"):
            fast = model(input_ids=ids).logits
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(fast.argmax(-1), plain.argmax(-1))
    linears = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert len(paths._packed) == len(linears)  # a tied head is the embedding's tensor: packed once


def test_routing_hooks_live_only_while_a_request_or_measurement_runs(tiny_models):
    """The engine attaches its routing hooks for one request (and its cost-curve measurement) and leaves the
    model without them, whatever path the passes took; while attached and between passes they compute nothing."""
    import draftless

    model = tiny_models("llama")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    engine = draftless.accelerate(model, "ngram")
    paths = engine.verification
    with paths.attached():
        assert all(m._forward_pre_hooks and not m._forward_hooks for m in linears)  # a pre-hook only
        with paths.attached():  # nested scopes share one set
            assert all(len(m._forward_pre_hooks) == 1 for m in linears)
        ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in linears)
    out = engine.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(out.sequences, model.generate(ids, max_new_tokens=12, do_sample=False))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in linears)


def test_the_stand_in_input_answers_one_linear_call_and_refuses_anything_else():
    """The pre-hook's stand-in hands its carried result to the module's F.linear exactly once; any other use of it
    (or a second F.linear) raises, naming the operation, instead of computing on an empty tensor."""
    from draftless.fastpath.routing import ComputedInput

    stand_in = torch.empty((0, 3)).as_subclass(ComputedInput)
    result = torch.arange(8.0).reshape(1, 2, 4)
    stand_in.result = result
    assert torch.nn.Linear(3, 4)(stand_in) is result
    with pytest.raises(RuntimeError, match="linear"):
        torch.nn.functional.linear(stand_in, torch.ones(4, 3))
    stand_in.result = result
    with pytest.raises(RuntimeError, match="add"):
        torch.add(stand_in, 1)


def test_hooked_linears_give_the_routers_result_in_every_thread(tiny_models):
    """Through the hooks, a routed pass equals the unhooked pass; threads routing at once each get their own
    results (each thread has its own stand-ins)."""
    import threading

    from draftless.fastpath.routing import LinearHooks
    from draftless.fastpath.skinny_linear import SkinnyRouter

    model = tiny_models("llama")
    hooks = LinearHooks(model)
    inputs = [torch.randint(0, model.config.vocab_size, (1, 3), generator=torch.Generator().manual_seed(s))
              for s in range(4)]
    with torch.no_grad():
        expected = [model(input_ids=i).logits for i in inputs]
    got = [None] * len(inputs)

    def run(k):
        with torch.no_grad(), hooks.routing(SkinnyRouter()):
            for _ in range(5):
                got[k] = model(input_ids=inputs[k]).logits

    with hooks.attached():
        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_an_engine_packs_its_weights_when_it_learns_a_curve_that_runs_packed(tiny_models):
    """A curve read from the cache or passed in has packed nothing: the engine packs every routed weight when it
    takes the curve (before its first pass), not in whichever request first verifies a big tree; a curve without
    the packed path leaves nothing packed."""
    import draftless
    from draftless.engine.cost_curve import CostCurve
    from draftless.fastpath.routing import hookable_linears

    model = tiny_models("llama")
    linears = {id(m.weight) for m in hookable_linears(model)}
    packed = CostCurve(sizes=(1, 4, 16), ms=(10.0, 11.0, 12.0), paths=("torch", "skinny", "packed"))
    engine = draftless.accelerate(model, "ngram", cost_curve=packed)
    assert engine.verification.packed_bytes == 0  # nothing is made before the engine reads its curve
    with engine.verification.attached():  # as in a request, where the engine first reads its curve
        _ = engine.cost_curve  # reading the property prepares the curve's paths (packs the weights)
    assert len(engine.verification._packed) == len(linears)
    outside = draftless.accelerate(model, "ngram", cost_curve=packed)
    _ = outside.cost_curve  # read outside a request (a caller inspecting it)
    assert len(outside.verification._packed) == len(linears)
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(5))
    out = engine.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(out.sequences, model.generate(ids, max_new_tokens=12, do_sample=False))
    assert len(engine.verification._packed) == len(linears)
    plain = draftless.accelerate(model, "ngram", cost_curve=CostCurve(sizes=(1, 4), ms=(10.0, 11.0)))
    _ = plain.cost_curve  # reading the curve prepares its paths: here none that packs
    assert plain.verification.packed_bytes == 0
