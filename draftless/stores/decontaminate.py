"""Keep evaluation prompts out of datastore corpora: drop documents sharing a word n-gram (13 by default) with them.

Text is normalised to its lower-case alphanumeric words (``[a-z0-9]+`` after Unicode case folding; punctuation and
whitespace only separate words). Every ``n``-gram of words of every turn of the evaluation file (Spec-Bench jsonl:
``turns``; also ``prompt``/``question``/``text`` fields) goes into one Aho-Corasick automaton (pyahocorasick) as
``" w1 w2 ... wn "``; a document's normalised word stream ``" w1 w2 ... "`` is scanned once, and any hit (which the
surrounding spaces align to word boundaries) excludes the document. Prompts shorter than ``n`` words contribute no
n-gram (they are counted in the report).

``filter_pieces`` wraps the corpus reader's ``Piece`` stream (``draftless.stores.documents.iter_pieces``) lazily;
``filter_documents`` is the list form; ``write_filtered_jsonl`` writes a clean copy of a jsonl corpus.
For the later pieces of one large plain-text file only the overlapping piece is dropped (n-grams across a piece cut
are not seen).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..atomic import atomic_file
from .documents import read_jsonl

_WORD = re.compile(r"[0-9a-z]+")


def normalise_words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def eval_texts(eval_file: str | Path) -> list[tuple[str, str]]:
    """``(id, text)`` of every prompt turn in a jsonl evaluation file."""
    out = []
    with open(eval_file, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            record = json.loads(raw)
            qid = str(record.get("question_id", record.get("id", line_no)))
            texts = record.get("turns")
            if texts is None:
                texts = [record[k] for k in ("prompt", "question", "text", "instruction") if k in record]
            if isinstance(texts, str):
                texts = [texts]
            for t, text in enumerate(texts):
                out.append((f"{qid}" if len(texts) == 1 else f"{qid}/{t}", str(text)))
    return out


class NGramIndex:
    """An Aho-Corasick automaton over the word ``n``-grams of a set of texts; ``hits(text)`` names the texts hit."""

    def __init__(self, texts: Iterable[tuple[str, str]], n: int = 13):
        import ahocorasick

        self.n = int(n)
        self.automaton = ahocorasick.Automaton()
        self.short: list[str] = []
        self.n_texts = 0
        for tid, text in texts:
            self.n_texts += 1
            words = normalise_words(text)
            if len(words) < self.n:
                self.short.append(tid)
                continue
            for i in range(len(words) - self.n + 1):
                gram = " " + " ".join(words[i: i + self.n]) + " "
                owners = self.automaton.get(gram, None)
                if owners is None:
                    self.automaton.add_word(gram, [tid])
                elif owners[-1] != tid:
                    owners.append(tid)
        self.n_grams = len(self.automaton)
        if self.n_grams:
            self.automaton.make_automaton()

    def hits(self, text: str) -> list[str]:
        """Ids of the indexed texts sharing an n-gram with ``text`` (first hit order, no duplicates)."""
        if not self.n_grams:
            return []
        words = normalise_words(text)
        if len(words) < self.n:
            return []
        stream = " " + " ".join(words) + " "
        found: list[str] = []
        for _, owners in self.automaton.iter(stream):
            for tid in owners:
                if tid not in found:
                    found.append(tid)
        return found


@dataclass
class DecontaminationReport:
    eval_file: str
    n: int
    n_eval_texts: int
    n_eval_ngrams: int
    short_eval_texts: list[str]
    n_documents: int = 0
    excluded: list[dict] = field(default_factory=list)  # {"document": index, "matches": [eval ids], "preview": str}
    index: NGramIndex | None = field(default=None, repr=False, compare=False)

    @property
    def n_excluded(self) -> int:
        return len(self.excluded)

    @property
    def excluded_ids(self) -> list[int]:
        return [e["document"] for e in self.excluded]

    def summary(self) -> str:
        head = (f"[draftless] decontamination against {self.eval_file} ({self.n_eval_texts} prompts, "
                f"{self.n_eval_ngrams:,} word {self.n}-grams; {len(self.short_eval_texts)} shorter than {self.n} "
                f"words): "
                f"excluded {self.n_excluded} of {self.n_documents:,} documents")
        lines = [head]
        for e in self.excluded[:20]:
            lines.append(f"  document {e['document']}: overlaps {', '.join(e['matches'][:5])} | {e['preview']!r}")
        if self.n_excluded > 20:
            lines.append(f"  ... and {self.n_excluded - 20} more")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"eval_file": self.eval_file, "n": self.n, "n_eval_texts": self.n_eval_texts,
                "n_eval_ngrams": self.n_eval_ngrams, "short_eval_texts": self.short_eval_texts,
                "n_documents": self.n_documents, "n_excluded": self.n_excluded, "excluded": self.excluded}


def new_report(eval_file: str | Path, n: int = 13, index: NGramIndex | None = None) -> DecontaminationReport:
    """An empty report (holding the n-gram automaton of ``eval_file``, or ``index`` when one was built already) for
    ``filter_pieces`` to fill."""
    index = NGramIndex(eval_texts(eval_file), n) if index is None else index
    return DecontaminationReport(str(eval_file), n, index.n_texts, index.n_grams, index.short, index=index)


def merge_reports(parts: Sequence[Mapping]) -> DecontaminationReport:
    """One report from the ``to_json()`` reports of consecutive parts of a corpus (a parallel build's units, in
    corpus order): document indices shifted by the documents of the parts before."""
    if not parts:
        raise ValueError("no reports to merge")
    first = parts[0]
    merged = DecontaminationReport(first["eval_file"], int(first["n"]), int(first["n_eval_texts"]),
                                   int(first["n_eval_ngrams"]), list(first["short_eval_texts"]))
    for part in parts:
        for entry in part["excluded"]:
            merged.excluded.append({**entry, "document": int(entry["document"]) + merged.n_documents})
        merged.n_documents += int(part["n_documents"])
    return merged


def filter_pieces(pieces: Iterable, eval_file: str | Path, n: int = 13,
                  report: DecontaminationReport | None = None) -> Iterator:
    """Lazily yield the corpus ``Piece``s that share no word ``n``-gram with ``eval_file``'s prompts.

    Pass a ``report`` (from ``new_report``, which also builds the automaton once) to collect what was excluded;
    document indices count documents in corpus order (0-based). When the first piece of a multi-piece document is
    dropped, the next kept piece of that document starts a document instead.
    """
    if report is None:
        report = new_report(eval_file, n)
    elif report.index is None:
        report.index = NGramIndex(eval_texts(eval_file), report.n)
    index = report.index
    doc = -1
    promote = False
    for piece in pieces:
        if piece.starts_document:
            doc += 1
            promote = False
            report.n_documents += 1
        matches = index.hits(piece.text)
        if matches:
            if piece.starts_document or not report.excluded or report.excluded[-1]["document"] != doc:
                report.excluded.append({"document": doc, "matches": matches,
                                        "preview": " ".join(piece.text.split())[:80]})
            promote = promote or piece.starts_document
            continue
        if promote and not piece.starts_document:
            piece = replace(piece, starts_document=True)
            promote = False
        yield piece


def filter_documents(pieces: Sequence, eval_file: str | Path, n: int = 13) -> tuple[list, DecontaminationReport]:
    """``(kept pieces, report)``: the list form of ``filter_pieces``."""
    report = new_report(eval_file, n)
    kept = list(filter_pieces(pieces, eval_file, n, report))
    return kept, report


def write_filtered_jsonl(src: str | Path, dst: str | Path, eval_file: str | Path,
                         fields: Sequence[str] | None = None, n: int = 13) -> DecontaminationReport:
    """Copy the records of jsonl ``src`` that share no n-gram with ``eval_file`` to ``dst`` (checks the joined
    ``fields``, like the corpus reader). Record indices in the report are 0-based line records of ``src``."""
    report = new_report(eval_file, n)
    index = report.index
    src, dst = Path(src), Path(dst)
    with open(src, "rb") as f, atomic_file(dst, "wb") as out:
        lines = (raw for raw in f if raw.strip())
        for doc, (raw, piece) in enumerate(zip(lines, read_jsonl(src, fields))):
            report.n_documents += 1
            matches = index.hits(piece.text)
            if matches:
                report.excluded.append({"document": doc, "matches": matches,
                                        "preview": " ".join(piece.text.split())[:80]})
                continue
            out.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return report
