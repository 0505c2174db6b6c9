"""Import time of ``x2ctclip`` and ``x2ctclip.processors`` (lazy package) vs the old eager package, in fresh
interpreters.

The package used to import every model module in ``x2ctclip/__init__.py`` (hence ``transformers.modeling_utils``,
the CT tower, the classifier) before anything else, also for ``import x2ctclip.processors``. Now the model modules
load on first use. The baseline is that old behaviour, simulated in the same run by importing the model modules
explicitly: ``import x2ctclip.processors, x2ctclip.modeling_classification`` (which imports ``modeling_x2ctclip``
and ``modeling_ct``), which is what the old ``import x2ctclip.processors`` executed.

Each statement runs in a new ``python -c`` (nothing cached in the interpreter; the OS file cache is warm after the
first run, so the first run of each is dropped); the medians of ``--repeats`` runs (wall and CPU time) are printed
with the ratios, and what the model modules add in an interpreter that imported the processors. Run:
``python benchmarks/bench_import_time.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import resource
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


def time_statement(statement: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds (user + system), modules loaded) of a fresh interpreter running ``statement``
    (interpreter start included). CPU time is reported too because wall time on a shared machine mostly measures
    the other processes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", statement + "; import sys; print(len(sys.modules))"], check=True,
                         capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, int(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    wall, cpu = {}, {}
    for name, statement in CASES.items():
        time_statement(statement)  # warm the file cache
        runs = [time_statement(statement) for _ in range(args.repeats)]
        wall[name] = statistics.median(r[0] for r in runs)
        cpu[name] = statistics.median(r[1] for r in runs)
        print(f"{name:53s} wall {wall[name]:6.2f} s  cpu {cpu[name]:6.2f} s  modules {runs[0][2]:5d}  "
              f"(wall runs {', '.join(f'{r[0]:.2f}' for r in runs)})")
    # what the model modules themselves cost once the processors (and with them transformers.modeling_utils) are in
    code = ("import time, sys, x2ctclip.processors; n = len(sys.modules); t = time.perf_counter(); "
            "import x2ctclip.modeling_classification; print(time.perf_counter() - t, len(sys.modules) - n)")
    extra = [subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
             for _ in range(args.repeats)]  # fmt: skip
    print(f"model modules after the processors, same interpreter: median "
          f"{statistics.median(float(e[0]) for e in extra):.3f} s, {extra[0][1]} modules")
    old = "old behaviour (processors + every model module)"
    for name in ("import x2ctclip.processors (lazy)", "import x2ctclip (lazy)"):
        print(f"old / {name}: wall {wall[old] / wall[name]:.2f}x, cpu {cpu[old] / cpu[name]:.2f}x")


if __name__ == "__main__":
    main()
