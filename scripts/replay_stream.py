"""Judge drafter settings on a recorded stream without running the target: ``draftless.app.replay`` (see its
docstring), kept here as the script it used to be.

    python scripts/replay_stream.py record --model smollm2-135m --chat --workload mbpp-tests --requests 32 \\
        --out streams/smollm2-mbpp-tests.json
    python scripts/replay_stream.py replay --model smollm2-135m streams/smollm2-mbpp-tests.json \\
        ngram+sam ngram+sam+history --history-option min_match=2
    python scripts/replay_stream.py coverage streams/smollm2-mbpp-tests.json
"""
from draftless.app.replay import main

if __name__ == "__main__":
    main()
