"""The compiled verification path (``draftless/fastpath/compiled.py``): its operator, its graph rewrite, and greedy
identity of generation through it (compiling is slow: the generation tests are marked slow)."""
import zlib

import pytest
import torch
from test_greedy import prompts, reference

import draftless
from draftless.engine.cost_curve import CostCurve
from draftless.engine.generator import SpeculativeGenerator
from draftless.fastpath import VerificationPaths
from draftless.fastpath.compiled import SKINNY_MAX_ROWS, kernel_linear, linears_to_kernel
from draftless.hf.tiny_models import ARCHS

# Every size on the compiled path, trees let through generously (the hardest case for exactness).
COMPILED_CURVE = CostCurve((1, 8, 32), (1.0, 1.3, 2.0), ("compiled",) * 3)


@pytest.mark.parametrize("rows", [1, 3, SKINNY_MAX_ROWS, SKINNY_MAX_ROWS + 5])
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_linear_matches_f_linear(rows, bias):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, 40, generator=gen)
    weight = torch.randn(24, 40, generator=gen)
    b = torch.randn(24, generator=gen) if bias else None
    got = kernel_linear(x, weight, b)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    assert got.shape == (1, rows, 24)
    assert got.untyped_storage().data_ptr() not in (x.untyped_storage().data_ptr(),
                                                     weight.untyped_storage().data_ptr())


def test_kernel_linear_takes_what_the_kernel_does_not_to_aten():
    """bfloat16, and inputs autograd records, are computed by aten's linear (same result, gradients kept)."""
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    w = torch.randn(4, 8, dtype=torch.bfloat16)
    assert torch.equal(kernel_linear(x, w, None), torch.nn.functional.linear(x, w))
    xg = torch.randn(2, 8, requires_grad=True)
    torch.testing.assert_close(kernel_linear(xg, w.float(), None), torch.nn.functional.linear(xg, w.float()))


class _TwoLinears(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(12, 16)
        self.b = torch.nn.Linear(16, 8, bias=False)

    def forward(self, x):
        h = torch.nn.functional.linear(x, self.a.weight, bias=self.a.bias).relu()
        return torch.nn.functional.linear(h, self.b.weight) + 1


def test_linears_to_kernel_rewrites_every_linear_and_keeps_the_result():
    module = _TwoLinears()
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(0))
    gm = torch.fx.symbolic_trace(module)
    want = module(x)
    assert linears_to_kernel(gm) == 2
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.draftless.linear.default) == 2
    assert torch.nn.functional.linear not in targets
    torch.testing.assert_close(gm(x), want, rtol=1e-5, atol=1e-5)
    assert linears_to_kernel(gm) == 0  # nothing left to rewrite


def test_compiled_path_is_offered_on_request_and_refused_for_other_dtypes(tiny_models):
    model = tiny_models("llama")
    paths = VerificationPaths(model, compile=True)
    assert paths.available[-1] == "compiled" and paths.compiled and "skinny" in paths.available
    assert "compiled" not in VerificationPaths(model).available
    assert paths.forward("torch") is model and paths.forward("skinny") is model
    assert paths.forward("compiled") is not model
    with paths.attached(), paths.context("compiled"):  # the hooks stay, inactive: the compiled forward runs it
        assert paths._hooks.router is None
    with pytest.raises(ValueError, match="float32 models on a CPU"):
        VerificationPaths(torch.nn.Linear(2, 2).bfloat16(), compile=True)
    plain = draftless.accelerate(model, drafter="ngram", cost_curve=COMPILED_CURVE)
    with pytest.raises(ValueError, match="compile=True needs a SharedState"):
        SpeculativeGenerator(model, plain.drafter, compile=True, shared=plain.shared)


def test_compiled_path_without_a_cpp_compiler_is_a_clear_error(tiny_models, monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        VerificationPaths(tiny_models("llama"), compile=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_identical_on_the_compiled_path(tiny_models, arch):
    model = tiny_models(arch)
    fast = draftless.accelerate(model, drafter="ngram+recycle", cost_curve=COMPILED_CURVE, compile=True)
    for i, prompt in enumerate(prompts(zlib.crc32(f"compiled/{arch}".encode()) % 1000)):
        max_new = [37, 1, 24, 50][i % 4]
        got = fast.generate(torch.tensor([prompt]), max_new_tokens=max_new)
        assert torch.equal(got.sequences, reference(model, prompt, max_new)), (arch, prompt)
    compiled = fast.verification.forward("compiled")
    assert compiled.graphs >= 1 and compiled.linears >= 1  # the passes did run compiled, on the kernel
