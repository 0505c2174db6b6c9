"""Import time of ``x2ctclip`` and ``x2ctclip.processors`` (lazy package) vs the old eager package, in fresh
interpreters.

The package used to import every model module in ``x2ctclip/__init__.py`` (hence ``transformers.modeling_utils``,
the CT tower, the classifier) before anything else, also for ``import x2ctclip.processors``. Now the model modules
load on first use. The baseline is that old behaviour, simulated in the same run by importing the model modules
explicitly: ``import x2ctclip.processors, x2ctclip.modeling_classification`` (which imports ``modeling_x2ctclip``
and ``modeling_ct``), which is what the old ``import x2ctclip.processors`` executed.

Each statement runs in a new ``python -c`` (nothing cached in the interpreter; the OS file cache is warm after the
first run, so the first run of each is dropped); the median of ``--repeats`` runs is printed with the ratios. Run:
``python benchmarks/bench_import_time.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "import x2ctclip.processors (lazy)": "import x2ctclip.processors",
    "import x2ctclip (lazy)": "import x2ctclip",
    "old behaviour (processors + every model module)": "import x2ctclip.processors, x2ctclip.modeling_classification",
    "first model use (from x2ctclip import X2CTCLIPModel)": "from x2ctclip import X2CTCLIPModel",
    "reference: import transformers, torch": "import transformers, torch",
}


def time_statement(statement: str) -> float:
    """Seconds of a fresh interpreter running ``statement`` (wall clock, interpreter start included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    medians = {}
    for name, statement in CASES.items():
        time_statement(statement)  # warm the file cache
        runs = [time_statement(statement) for _ in range(args.repeats)]
        medians[name] = statistics.median(runs)
        print(f"{name:55s} median {medians[name]:6.2f} s  (runs {', '.join(f'{r:.2f}' for r in runs)})")
    old = medians["old behaviour (processors + every model module)"]
    for name in ("import x2ctclip.processors (lazy)", "import x2ctclip (lazy)"):
        print(f"old / {name}: {old / medians[name]:.2f}x")


if __name__ == "__main__":
    main()
