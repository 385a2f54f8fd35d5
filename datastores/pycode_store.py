"""Recipe: ``pycode``, a sharded ``rest`` store over the Python sources of this environment (every ``*.py`` file of
its installed packages and of the standard library), decontaminated against the MBPP held-out prompts.

    python datastores/pycode_store.py [--model smollm2-135m] [--shards 8] [--ray] [--address ADDR]
        ->  datastores/pycode-rest-<model>/

On the machine the benchmarks ran on this is about 240 MB of source, 67M SmolLM2 tokens or 70M Gemma 3 tokens
(docs/datastores.md, "Corpus stores at scale"). Files under a ``tests`` or ``__pycache__`` directory are
skipped, and so is any file sharing a word 13-gram with a held-out MBPP prompt (``mbpp_split.py`` writes them), so
the store can be judged on those prompts. ``--ray`` tokenizes and builds the shards on Ray Data (a local Ray, or the
cluster at ``--address``); without it the build runs in this process, one shard in memory at a time.

    draftless generate --model smollm2-135m --datastore datastores/pycode-rest-smollm2-135m --prompt "def ..."
"""
from __future__ import annotations

import argparse
import site
import sysconfig
from pathlib import Path

from mbpp_split import DEFAULT_MBPP, split_mbpp

HERE = Path(__file__).resolve().parent
SKIP = ["tests", "__pycache__"]  # fnmatch patterns on path components


def source_roots() -> list[str]:
    """The directories whose ``*.py`` files form the corpus: the standard library and every site-packages
    directory of this interpreter (deduplicated, existing ones only)."""
    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    roots += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    paths = sorted({Path(r).resolve() for r in roots if Path(r).is_dir()}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in paths:  # a root inside another (site-packages under the stdlib) would be read twice
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return [str(p) for p in kept]


def main(argv=None):
    """Build the store; returns the ``BuildReport``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="target model (its tokenizer)")
    parser.add_argument("--shards", type=int, default=8, help="shards of the store (default 8)")
    parser.add_argument("--ray", action="store_true", help="tokenize and build on Ray Data")
    parser.add_argument("--address", default=None, help="--ray: the cluster to join (default: a local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="--ray: CPUs of the local Ray")
    parser.add_argument("--mbpp", default=str(DEFAULT_MBPP), help="MBPP train jsonl (its held-out prompts "
                        "decontaminate the corpus)")
    parser.add_argument("--roots", nargs="+", default=None, metavar="DIR",
                        help="read the *.py files under these directories instead of this environment's")
    parser.add_argument("--out", default=None, help="output directory (default: see above)")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards takes a positive number")

    from draftless.hf.loading import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    held_out, _heldin, n_out, _n_in = split_mbpp(args.mbpp)
    print(f"[pycode] decontaminating against {n_out} held-out MBPP prompts ({held_out})")
    roots = args.roots or source_roots()
    print(f"[pycode] corpus: *.py under {', '.join(roots)}")
    out = args.out or HERE / f"pycode-rest-{Path(args.model).stem}"
    if args.ray:
        from draftless.stores.ray_build import build_sharded_store_ray

        return build_sharded_store_ray(roots, tokenizer, out, shards=args.shards, glob="*.py", exclude=SKIP,
                                       address=args.address, num_cpus=args.num_cpus, exclude_overlap=held_out,
                                       provenance={"recipe": "pycode_store.py", "roots": roots})
    else:
        from draftless.stores.build import build_sharded_store

        return build_sharded_store(roots, tokenizer, out, args.shards, glob="*.py", exclude=SKIP,
                                   exclude_overlap=held_out, provenance={"recipe": "pycode_store.py", "roots": roots})


if __name__ == "__main__":
    main()
