"""The seed's training entry point, kept working: every ``qra train`` option is accepted.

    python experiments/imdb_train.py --m 128 --sigma 1.0 --layers 4,5 \
        --model bundled:all-MiniLM-L6-v2 --data-dir ../shared/data/imdb
"""

import sys

from qra.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="imdb_train.py")
