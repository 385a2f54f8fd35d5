"""Per-run statistics of a speculative generation."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .tree import DraftTree


@dataclass
class SourceStats:
    """Nodes a source proposed in verified trees, and how many of them the target accepted."""

    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@dataclass
class GenerationStats:
    """``mean_accepted`` is tokens committed per target forward pass (accepted drafts + the bonus token), so plain
    decoding scores 1.0. Times are wall-clock milliseconds summed over the run."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0
    prefill_ms: float = 0.0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    accept_ms: float = 0.0
    feedback_ms: float = 0.0
    total_ms: float = 0.0
    tree_nodes: int = 0
    per_source: dict[str, SourceStats] = field(default_factory=dict)

    @property
    def mean_accepted(self) -> float:
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def mean_tree_size(self) -> float:
        return self.tree_nodes / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return 1000.0 * self.new_tokens / self.total_ms if self.total_ms else 0.0

    def record_tree(self, tree: DraftTree, accepted: np.ndarray) -> None:
        """Count proposals and acceptances per source for one verified tree (root excluded)."""
        self.tree_nodes += len(tree)
        if not tree.source_names:
            return
        accepted_mask = np.zeros(len(tree), dtype=bool)
        accepted_mask[accepted[1:]] = True
        for bit, name in enumerate(tree.source_names):
            has = (tree.source_mask >> np.uint32(bit)) & np.uint32(1) == 1
            entry = self.per_source.setdefault(name, SourceStats())
            entry.proposed += int(has.sum())
            entry.accepted += int((has & accepted_mask).sum())

    @staticmethod
    def combined(rows: list[GenerationStats]) -> GenerationStats:
        """One run's stats over the rows of a batch (run one after another): counts and times summed."""
        if len(rows) == 1:
            return rows[0]
        total = GenerationStats()
        for row in rows:
            for name in ("prompt_tokens", "new_tokens", "steps", "prefill_ms", "draft_ms", "verify_ms", "accept_ms",
                         "feedback_ms", "total_ms", "tree_nodes"):
                setattr(total, name, getattr(total, name) + getattr(row, name))
            for source, counts in row.per_source.items():
                entry = total.per_source.setdefault(source, SourceStats())
                entry.proposed += counts.proposed
                entry.accepted += counts.accepted
        return total

    def as_dict(self) -> dict:
        out = asdict(self)
        out["per_source"] = {
            k: {"proposed": v.proposed, "accepted": v.accepted, "acceptance": round(v.acceptance, 4)}
            for k, v in self.per_source.items()
        }
        out.update(mean_accepted=self.mean_accepted, mean_tree_size=self.mean_tree_size, tokens_per_s=self.tokens_per_s)
        return out

    def summary(self) -> str:
        sources = ", ".join(f"{k} {v.accepted}/{v.proposed}" for k, v in self.per_source.items())
        return (
            f"{self.new_tokens} tokens in {self.steps} steps, {self.mean_accepted:.2f} tokens/step, "
            f"{self.tokens_per_s:.1f} tok/s (draft {self.draft_ms:.0f} ms, verify {self.verify_ms:.0f} ms, "
            f"accept {self.accept_ms:.0f} ms, feedback {self.feedback_ms:.0f} ms, "
            f"mean tree {self.mean_tree_size:.1f} nodes)"
            + (f"; accepted/proposed per source: {sources}" if sources else "")
        )
