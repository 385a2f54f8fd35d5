"""Which vocabulary a tokenizer has: the identity recorded in every datastore and history, and checked on load.

A leaf module (numpy only): the stores that record an identity (``draftless.stores``, ``draftless.history``) and
the drafters that check one against the target's tokenizer (``draftless.drafters``) all read it from here.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import numpy as np


def tokenizer_identity(tokenizer) -> dict:
    """``{"name", "vocab_hash", "vocab_size"}`` identifying a tokenizer's vocabulary.

    ``vocab_hash`` is the sha256 of the vocabulary items ``(token, id)`` (added tokens included) sorted by id: the
    ids, the tokens' lengths and the tokens themselves, so two tokenizers that map text to the same ids hash alike
    whatever their folder is called. It costs about 0.3 s for a 262k vocabulary (mostly ``get_vocab``): compute it
    once per tokenizer and pass the dict around.
    """
    vocab = tokenizer.get_vocab()
    ids = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
    order = np.argsort(ids, kind="stable")  # sorting ints, not 262k strings: ~20x faster
    keys = list(vocab)
    tokens = [str(keys[i]) for i in order.tolist()]
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))  # makes the joined text unambiguous
    digest = hashlib.sha256(ids[order].tobytes())
    digest.update(lengths.tobytes())
    digest.update("".join(tokens).encode("utf-8", errors="surrogatepass"))
    name = os.path.basename(os.path.normpath(str(getattr(tokenizer, "name_or_path", "") or ""))) or "unknown"
    return {"name": name, "vocab_hash": digest.hexdigest(), "vocab_size": len(vocab)}


def same_tokenizer(a: Mapping | None, b: Mapping | None) -> bool:
    """Identities match when their vocabulary hashes (and sizes) do; names are only labels."""
    if a is None or b is None:
        return False
    return a.get("vocab_hash") == b.get("vocab_hash") and a.get("vocab_size") == b.get("vocab_size")


def describe_identity(identity: Mapping | None) -> str:
    """A tokenizer identity in words, for error messages."""
    if identity is None:
        return "an unrecorded tokenizer"
    return (f"tokenizer {identity.get('name')!r} (vocab {identity.get('vocab_size')}, "
            f"hash {str(identity.get('vocab_hash'))[:12]})")
