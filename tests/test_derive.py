"""Draft models derived from a target (first N layers + its norm and head): the saved folder reloads to the same
logits as the target's own first-N-layer view, keeps Gemma 3's per-layer attention types, and drafts losslessly."""
import pytest
import torch
from conftest import SUBSET_IDS, make_tiny_model, subset_logits
from test_greedy import prompts, reference

import draftless
from draftless.drafters.model_drafter import ModelDrafter
from draftless.hf.derive import derive_shallow_model, save_shallow_model


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_derived_model_equals_the_first_layers_of_the_target(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    target = make_tiny_model(arch)
    n = len(target.model.layers) - 1
    out = save_shallow_model(target, None, n, tmp_path / "draft")
    derived = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="sdpa").eval()
    assert len(derived.model.layers) == n
    if getattr(target.config, "layer_types", None) is not None:
        assert list(derived.config.layer_types) == list(target.config.layer_types)[:n]
    ids = torch.tensor([SUBSET_IDS])
    view = subset_logits(target, range(n))
    with torch.no_grad():
        got = derived(ids).logits
        full = target(ids).logits
    assert torch.allclose(got, view, atol=1e-5)
    assert not torch.allclose(got, full, atol=1e-3)


def test_derived_model_drafts_losslessly_and_bad_sizes_are_refused(tmp_path):
    target = make_tiny_model("llama")
    draft = derive_shallow_model(target, 1)
    fast = draftless.accelerate(target, drafter=ModelDrafter(draft, target=target, topk=3, max_depth=4,
                                                             max_nodes=16), adaptive=False, max_nodes=16)
    for prompt in prompts(5, n=3):
        got = fast.generate(torch.tensor([prompt]), max_new_tokens=20)
        assert torch.equal(got.sequences, reference(target, prompt, 20))
    for bad in (0, len(target.model.layers)):
        with pytest.raises(ValueError, match="n_layers"):
            derive_shallow_model(target, bad)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        save_shallow_model(target, None, 1, tmp_path / "taken")
