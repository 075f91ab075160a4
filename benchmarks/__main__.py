"""Every benchmark in one command: ``python -m benchmarks [--quick] [--device cuda] [--threads N]``.

Runs each script of this folder in its own process (so that one's peak memory is not another's), in
turn, and passes on the options it takes; each prints its own markdown tables:

* ``run.py``: every softmax loss against ``F.cross_entropy`` and MONAI / smp / kornia;
* ``distance.py``: distance transforms and boundary losses against scipy, ``edt`` and MONAI;
* ``adaptive.py``: the adaptive and scheduled losses against their static forms;
* ``embedding.py``: the embedding losses against pytorch-metric-learning (CPU only).

Run a script directly for its own options (``python benchmarks/run.py --help``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List

HERE = Path(__file__).resolve().parent
SCRIPTS = ("run.py", "distance.py", "adaptive.py", "embedding.py")
CPU_ONLY = {"embedding.py"}


def commands(quick: bool, device: str, threads: int) -> List[List[str]]:
    """The command line of each script for these options (CPU-only scripts are left out on a GPU)."""
    chosen = []
    for script in SCRIPTS:
        if device != "cpu" and script in CPU_ONLY:
            continue
        command = [sys.executable, str(HERE / script), "--threads", str(threads)]
        command += ["--quick"] if quick else []
        command += ["--device", device] if script not in CPU_ONLY else []
        chosen.append(command)
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, short timings (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    failed = []
    for command in commands(args.quick, args.device, args.threads):
        shown = " ".join([Path(command[1]).name, *command[2:]])
        print(f"\n<!-- {shown} -->", flush=True)
        if subprocess.run(command, cwd=HERE.parent).returncode != 0:
            failed.append(Path(command[1]).name)
    if failed:
        print(f"\nthese benchmarks stopped with an error: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
