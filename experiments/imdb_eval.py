"""Evaluate a finished run again, with robustness settings: every ``qra eval`` option is accepted.

python experiments/imdb_eval.py runs/rff-... --robustness word-dropout=0.1,0.2 --robustness synonym-swap=0.1,0.2
"""

import sys

from qra.cli import app

if __name__ == "__main__":
    app(["eval", *sys.argv[1:]], prog_name="imdb_eval.py")
