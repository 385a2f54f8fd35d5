"""Decontamination: documents sharing a word 13-gram with an evaluation prompt are excluded, others kept."""
from __future__ import annotations

import json

import pytest

from draftless.stores.decontaminate import (
    NGramIndex,
    filter_documents,
    filter_pieces,
    new_report,
    normalise_words,
    write_filtered_jsonl,
)
from draftless.stores.documents import Piece, iter_pieces

PROMPT = ("Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences "
          "and must-see attractions.")


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    rows = [{"question_id": 81, "category": "writing", "turns": [PROMPT, "Rewrite it in rhymes."]},
            {"question_id": 82, "category": "math", "turns": ["What is 2 + 2?"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pieces(*texts, starts=None):
    starts = starts or [True] * len(texts)
    return [Piece(t, s, len(t)) for t, s in zip(texts, starts)]


def test_normalisation():
    assert normalise_words("Must-see  ATTRACTIONS, (Hawaii)!\n2+2") == ["must", "see", "attractions", "hawaii", "2",
                                                                         "2"]


def test_overlapping_documents_are_excluded(eval_file):
    # 13 words of the prompt inside other text, with different case and punctuation: excluded
    copy = "Intro text. About A RECENT trip to hawaii -- highlighting cultural experiences and must see attractions!!"
    twelve = "blog post about a recent trip to Hawaii, highlighting cultural experiences and"  # 12 words + "and"
    docs = pieces("unrelated document about cooking pasta", copy, " ".join(twelve.split()[:12]), "What is 2 + 2?")
    kept, report = filter_documents(docs, eval_file)
    assert [p.text for p in kept] == [docs[0].text, docs[2].text, docs[3].text]
    assert report.n_documents == 4 and report.n_excluded == 1 and report.excluded_ids == [1]
    assert report.excluded[0]["matches"] == ["81/0"]
    assert report.short_eval_texts == ["81/1", "82"]  # too short to have a 13-gram
    assert "excluded 1 of 4 documents" in report.summary()
    assert report.to_json()["n_excluded"] == 1


def test_word_boundaries_are_respected(eval_file):
    index = NGramIndex([("p", "a b c d e f g h i j k l m")], n=13)
    assert index.hits("x a b c d e f g h i j k l m y") == ["p"]
    assert index.hits("xa b c d e f g h i j k l m") == []  # "xa" is another word
    assert index.hits("a b c d e f g h i j k l mm") == []


def test_later_piece_is_promoted_when_a_document_start_is_dropped(eval_file):
    docs = pieces(PROMPT, "second piece of the same file", "next file", starts=[True, False, True])
    report = new_report(eval_file)
    kept = list(filter_pieces(docs, eval_file, report=report))
    assert [p.starts_document for p in kept] == [True, True]
    assert [p.text for p in kept] == [docs[1].text, docs[2].text]
    assert report.n_documents == 2 and report.excluded_ids == [0]


def test_write_filtered_jsonl(tmp_path, eval_file):
    src = tmp_path / "corpus.jsonl"
    rows = [{"question": "Q1", "answer": "A1"}, {"question": PROMPT, "answer": "A2"},
            {"question": "Q3", "answer": "A3"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    report = write_filtered_jsonl(src, tmp_path / "clean.jsonl", eval_file, fields=["question", "answer"])
    assert report.excluded_ids == [1]
    kept = [p.text for p in iter_pieces([tmp_path / "clean.jsonl"], ["question", "answer"])]
    assert kept == ["Q1\nA1", "Q3\nA3"]
