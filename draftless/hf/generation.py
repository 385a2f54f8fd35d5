"""Every contact with transformers' generation internals lives here.

``model.generate`` resolves its arguments with private ``GenerationMixin`` methods (``_prepare_generation_config``,
``_prepare_special_tokens``, ``_prepare_generated_length``, ``_get_logits_processor``, ``_get_stopping_criteria``).
draftless calls the same methods, so a keyword means here exactly what it means there (precedence: keyword >
passed ``generation_config`` > ``model.generation_config`` > transformers' defaults; ``do_sample=True`` without
``top_k`` gets top-k 50 unless the model's config says otherwise; ``top_k=0`` is off). When a transformers release
renames one of them, this file is the one to change.

Two entry points feed the engine a ``DecodingPlan``:

- ``plan_from_arguments``: ``SpeculativeGenerator.generate``'s keywords, resolved as ``model.generate`` does;
- ``plan_from_prepared``: what transformers hands a ``custom_generate`` callable (already resolved).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.generation.logits_process import (
    LogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria


class UnsupportedGenerationOption(ValueError):
    """An option of ``model.generate`` that changes the search itself (or that draftless cannot honour exactly)."""


@dataclass
class DecodingPlan:
    """What one request decodes with, in transformers' own objects.

    - ``config``: the resolved ``GenerationConfig`` (special tokens as tensors, ``max_length`` set);
    - ``processors``: the ``LogitsProcessorList`` ``model.generate`` would apply (warpers included when sampling),
      built for the whole batch; ``processors_for_row`` gives one row's;
    - ``criteria``: the ``StoppingCriteriaList`` (max length, max time, stop strings, EOS, the user's);
    - ``pad_token_id``: int or None; ``has_eos_criteria``: finished rows are filled with ``pad_token_id``.
    """

    config: GenerationConfig
    processors: LogitsProcessorList
    criteria: StoppingCriteriaList
    pad_token_id: int | None
    has_eos_criteria: bool

    @property
    def do_sample(self) -> bool:
        return bool(self.config.do_sample)

    @property
    def max_length(self) -> int:
        return int(self.config.max_length)

    @property
    def return_dict(self) -> bool:
        return bool(self.config.return_dict_in_generate)

    @property
    def output_scores(self) -> bool:
        return self.return_dict and bool(self.config.output_scores)

    @property
    def output_logits(self) -> bool:
        return self.return_dict and bool(self.config.output_logits)


# (option, is it set?, why it is refused), the most specific first (group beams also set num_beams). Checked on
# the resolved config, before any model work.
_SEARCH_CHANGES = (
    ("constraints", lambda c: c.constraints is not None, "constrained beam search"),
    ("force_words_ids", lambda c: c.force_words_ids is not None, "constrained beam search"),
    ("num_beam_groups", lambda c: (c.num_beam_groups or 1) > 1, "group (diverse) beam search is a beam search"),
    ("diversity_penalty", lambda c: bool(c.diversity_penalty), "it only applies to group beam search"),
    ("num_beams", lambda c: (c.num_beams or 1) > 1, "beam search keeps several hypotheses per row; draftless "
                                                     "verifies one sequence"),
    ("penalty_alpha", lambda c: bool(c.penalty_alpha) and not c.do_sample and (c.top_k or 0) > 1,
     "contrastive search re-ranks candidates with hidden states, a different search"),
    ("num_return_sequences", lambda c: (c.num_return_sequences or 1) > 1, "several samples per prompt: repeat the "
                                                                           "prompt in the batch instead"),
    ("prompt_lookup_num_tokens", lambda c: c.prompt_lookup_num_tokens is not None,
     "another speculative decoder (draftless drafts itself: drafter='ngram')"),
    ("assistant_early_exit", lambda c: c.assistant_early_exit is not None, "another speculative decoder "
                                                                           "(draftless: drafter='self')"),
    ("use_mtp", lambda c: bool(getattr(c, "use_mtp", False)), "another speculative decoder"),
    ("dola_layers", lambda c: c.dola_layers is not None, "DoLa contrasts layers, a different search"),
    ("guidance_scale", lambda c: c.guidance_scale is not None and c.guidance_scale != 1,
     "classifier-free guidance runs a second, unconditional model pass"),
    ("encoder_repetition_penalty", lambda c: c.encoder_repetition_penalty not in (None, 1.0),
     "its processor holds per-batch-row prompt ids; untested on trees"),
    ("encoder_no_repeat_ngram_size", lambda c: bool(c.encoder_no_repeat_ngram_size),
     "its processor holds per-batch-row prompt ids; untested on trees"),
    ("token_healing", lambda c: bool(c.token_healing), "it rewrites the prompt before decoding"),
    ("watermarking_config", lambda c: c.watermarking_config is not None, "untested on trees"),
    ("output_attentions", lambda c: c.return_dict_in_generate and bool(c.output_attentions),
     "tree passes have tree-shaped attentions, not one-token ones"),
    ("output_hidden_states", lambda c: c.return_dict_in_generate and bool(c.output_hidden_states),
     "tree passes compute hidden states per tree node, not per decoding step"),
)


def refuse_search_changes(config: GenerationConfig, **arguments) -> None:
    """Raise ``UnsupportedGenerationOption`` naming the first option of ``config`` (or of the ``model.generate``
    ``arguments`` that are not config fields: ``assistant_model``, ``prefix_allowed_tokens_fn``,
    ``negative_prompt_ids``, ...) that changes the search or that draftless cannot reproduce exactly."""
    for name, value in arguments.items():
        if value is not None:
            raise UnsupportedGenerationOption(f"{name} is not supported by draftless: " + {
                "assistant_model": "another speculative decoder (draftless: drafter='model:...')",
                "prefix_allowed_tokens_fn": "its batch_id would name tree nodes, not rows",
                "negative_prompt_ids": "classifier-free guidance runs a second, unconditional model pass",
                "negative_prompt_attention_mask": "classifier-free guidance runs a second model pass",
                "synced_gpus": "multi-GPU synchronisation is not implemented",
            }.get(name, "it changes the search"))
    for name, is_set, why in _SEARCH_CHANGES:
        if is_set(config):
            raise UnsupportedGenerationOption(f"{name}={getattr(config, name, None)!r} is not supported by "
                                              f"draftless: {why}")
    mode = config.get_generation_mode()
    if str(getattr(mode, "value", mode)) not in ("greedy_search", "sample"):
        raise UnsupportedGenerationOption(f"generation mode {mode} is not supported by draftless (greedy decoding "
                                          "and multinomial sampling are)")


def refuse_inputs_embeds(model_kwargs: dict) -> None:
    """``UnsupportedGenerationOption`` when a call passes ``inputs_embeds`` (drafters work on token ids)."""
    if model_kwargs.get("inputs_embeds") is not None:
        raise UnsupportedGenerationOption(
            "inputs_embeds is not supported by draftless: drafters guess token ids from the ids they have seen, "
            "so pass the prompt as input_ids")


def plan_from_arguments(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        generation_config: GenerationConfig | None, logits_processor, stopping_criteria,
                        tokenizer, kwargs: dict) -> DecodingPlan:
    """Resolve ``model.generate``-style arguments into a plan, with the private methods ``model.generate`` uses.

    ``input_ids``: int64 [B, P] on the model's device; ``attention_mask``: [B, P] or None (already checked);
    ``kwargs``: GenerationConfig fields. A keyword that is neither a config field nor one of draftless' is refused
    by name (``model.generate`` would forward it to the model; the engine does not)."""
    kwargs = dict(kwargs)
    model_args = {k: kwargs.pop(k) for k in ("assistant_model", "prefix_allowed_tokens_fn", "negative_prompt_ids",
                                             "negative_prompt_attention_mask", "synced_gpus") if k in kwargs}
    has_default_max_length = (kwargs.get("max_length") is None
                              and (generation_config is None or generation_config.max_length is None)
                              and model.generation_config.max_length is None)
    has_default_min_length = (kwargs.get("min_length") is None
                              and (generation_config is None or generation_config.min_length is None)
                              and model.generation_config.min_length is None)
    config, leftovers = model._prepare_generation_config(generation_config, **kwargs)
    leftovers.pop("use_cache", None)
    if leftovers:
        raise TypeError(f"generate() got keyword(s) that are neither GenerationConfig fields nor draftless options: "
                        f"{sorted(leftovers)} (draftless does not forward model kwargs to the forward pass)")
    refuse_search_changes(config, **model_args)
    batch, length = input_ids.shape
    model._prepare_special_tokens(config, attention_mask is not None, device=input_ids.device, batch_size=batch)
    config = model._prepare_generated_length(
        generation_config=config, has_default_max_length=has_default_max_length,
        has_default_min_length=has_default_min_length, model_input_name="input_ids", inputs_tensor=input_ids,
        input_ids_length=length)
    model._validate_generated_length(config, length, has_default_max_length)
    # model.generate drops an all-ones mask before building processors (repetition penalty then ignores nothing)
    mask = None if attention_mask is None or bool((attention_mask == 1).all()) else attention_mask
    processors = model._get_logits_processor(
        generation_config=config, input_ids_seq_length=length, encoder_input_ids=input_ids,
        logits_processor=logits_processor if logits_processor is not None else LogitsProcessorList(),
        device=input_ids.device, model_kwargs={"attention_mask": mask})
    criteria = model._get_stopping_criteria(
        generation_config=config,
        stopping_criteria=stopping_criteria if stopping_criteria is not None else StoppingCriteriaList(),
        tokenizer=tokenizer)
    return plan_from_prepared(config, processors, criteria)


def plan_from_prepared(config: GenerationConfig, processors: LogitsProcessorList,
                       criteria: StoppingCriteriaList) -> DecodingPlan:
    """The plan for objects ``model.generate`` already prepared (what a ``custom_generate`` callable receives)."""
    refuse_search_changes(config)
    pad = config._pad_token_tensor
    pad_id = None if pad is None else int(torch.as_tensor(pad).flatten()[0])
    # model.generate pads finished rows exactly when some criterion carries EOS ids
    has_eos = any(hasattr(c, "eos_token_id") for c in criteria)
    return DecodingPlan(config, processors, criteria, pad_id, has_eos)


class TopPOnSupport(LogitsProcessor):
    """transformers' ``TopPLogitsWarper`` (``warper``, called as it is) on the entries of a one-row score vector
    that an earlier warper left above ``-inf``, for the same result as on the whole row.

    The warper sorts the whole vocabulary on every call: 0.8 ms a row for SmolLM2's 49k tokens here, paid for every
    node the sampling walk reads, while after ``model.generate``'s top-k warper (top-k 50 by default) 50 entries
    are left. On the whole row, the ``-inf`` entries sort first with probability 0, so their cumulative probability
    is 0, at most ``1 - top_p``: the warper sets them to its ``filter_value`` (unless fewer than
    ``min_tokens_to_keep`` entries are finite, where this falls back to the whole row); the finite entries get the
    same sort, softmax and cumulative sums, whose zeros add nothing, so the same ones are kept. (The softmax's sum
    over the finite entries may be added in another order than over the whole row, a difference in the last bit.)
    Rows with NaN, with tied finite scores (the warper's sort is not stable: which tied entry it keeps depends on
    the row it sorts), with no ``-inf`` entry, or a batch of several rows are passed to the warper whole."""

    def __init__(self, warper: TopPLogitsWarper):
        self.warper = warper

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores``: float [B, V]; returns the warped float [B, V]."""
        if scores.shape[0] != 1:
            return self.warper(input_ids, scores)
        support = torch.nonzero(scores[0] > float("-inf")).flatten()
        n = support.numel()
        if n == scores.shape[1] or n < max(1, self.warper.min_tokens_to_keep) or bool(torch.isnan(scores).any()):
            return self.warper(input_ids, scores)
        kept = scores[:, support]
        if torch.unique(kept).numel() != n:
            # tied scores: the warper's sort is not stable, so which of them it keeps depends on the row it sorts
            return self.warper(input_ids, scores)
        out = torch.full_like(scores, self.warper.filter_value)
        out[:, support] = self.warper(input_ids, kept)
        return out


def processors_for_row(processors: LogitsProcessorList, row: int) -> LogitsProcessorList:
    """The processors of batch row ``row``, fit to be called on a batch of that row's tree nodes.

    Processors are batch-aware functions of ``(input_ids, scores)``; the one built-in exception is the repetition
    penalty, which holds the batch's left-padding lengths as an int64[B] tensor (``prompt_ignore_length``) and
    would refuse a batch of tree nodes. Its row's copy holds that row's length as an int, which means the same
    for every node of the row. A processor that keeps state per row (a grammar's matcher) says which row it
    serves through a ``for_row(row)`` method, which returns that row's processor. transformers' top-p warper is
    wrapped so that it runs on the tokens an earlier warper left (``TopPOnSupport``)."""
    out = LogitsProcessorList()
    for proc in processors:
        for_row = getattr(proc, "for_row", None)
        if callable(for_row):
            out.append(for_row(row))
            continue
        if type(proc) is TopPLogitsWarper:
            out.append(TopPOnSupport(proc))
            continue
        ignore = getattr(proc, "prompt_ignore_length", None)
        if isinstance(proc, RepetitionPenaltyLogitsProcessor) and isinstance(ignore, torch.Tensor):
            proc = copy.copy(proc)
            proc.prompt_ignore_length = int(ignore.flatten()[row]) if ignore.numel() > 1 else int(ignore.flatten()[0])
        out.append(proc)
    return out


def decoder_only_output(sequences: torch.Tensor, scores: tuple | None, logits: tuple | None):
    """transformers' own ``GenerateDecoderOnlyOutput`` (``sequences`` int64 [B, L]; ``scores`` / ``logits``:
    tuples of float32 [B, V], one per generated position, or None)."""
    # the cache field was renamed across versions (past_key_values -> cache): leave it at its default, None
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores, logits=logits)


def split_criteria(criteria: StoppingCriteriaList) -> tuple[int | None, set[int], StoppingCriteriaList]:
    """``(max_length, eos_ids, others)``: the two criteria every request carries, read as plain values so the
    engine checks them without a tensor call per token, and the rest (max time, stop strings, the user's), which
    it calls as they are. ``max_length`` is the smallest of the ``MaxLengthCriteria`` (None without one)."""
    max_length, eos, others = None, set(), StoppingCriteriaList()
    for criterion in criteria:
        if type(criterion) is MaxLengthCriteria:
            max_length = criterion.max_length if max_length is None else min(max_length, criterion.max_length)
        elif type(criterion) is EosTokenCriteria:
            eos.update(int(t) for t in torch.as_tensor(criterion.eos_token_id).flatten().tolist())
        else:
            others.append(criterion)
    return max_length, eos, others
