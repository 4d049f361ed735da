"""Crash safety of `memento data build`: kill -9 at 20 random moments of a 120-trace build, resume after each, and
compare every output file with an uninterrupted build, byte for byte.

Run: .venv/bin/python benchmarks/kill_resume.py   (~2 min; writes benchmarks/results/kill_resume.md and .json)

One kill in five lands during start-up; the others after 1-8 more traces are journaled, at a random instant up to
30 ms later (so some land in the middle of the next write); the build then resumes from its journal. The moments are
drawn with a fixed seed, so a rerun kills at the same offsets.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

TRACES, KILLS, SEED = 120, 20, 0
ARGS = ["data", "build", "champ", "--limit", str(TRACES), "--workers", "2"]
OUTPUTS = ["openmementos.jsonl", "openmementos.parquet", "openmementos-full.jsonl", "openmementos-full.parquet"]
MEMENTO = str(Path(sys.executable).parent / "memento")


def journaled(out: Path) -> int:
    journal = out / "journal.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def main() -> None:
    rng = random.Random(SEED)
    work = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    subprocess.run([MEMENTO, *ARGS, "--out", str(work / "whole")], check=True, capture_output=True)
    whole_seconds = time.perf_counter() - t0
    cut, kills = work / "cut", []
    for _ in range(KILLS):
        if journaled(cut) >= TRACES:
            break
        before = journaled(cut)
        proc = subprocess.Popen(
            [MEMENTO, *ARGS, "--out", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        started = time.perf_counter()
        if rng.random() < 0.2:  # during start-up, before any trace is written
            time.sleep(rng.uniform(0.1, 2.0))
        else:  # after a few more traces, at a random instant between two journal writes
            target = before + rng.randint(1, 8)
            while journaled(cut) < target and proc.poll() is None:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.03))
        delay = time.perf_counter() - started
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append({"after_s": round(delay, 2), "journaled_before": before, "journaled_after": journaled(cut)})
    subprocess.run([MEMENTO, *ARGS, "--out", str(cut)], check=True, capture_output=True)
    same = {name: (cut / name).read_bytes() == (work / "whole" / name).read_bytes() for name in OUTPUTS}
    indices = sorted(int(line.split(b'"index": ')[1].split(b",")[0]) for line in (cut / "journal.jsonl").open("rb"))
    shutil.rmtree(work)
    lines = header(
        "Kill -9 and resume: the data build's output is byte-identical",
        "kill_resume.py",
        f"`memento data build champ --limit {TRACES} --workers 2` (offline), killed {len(kills)} times at random "
        f"moments (seed {SEED}), resumed after each; an uninterrupted build takes {whole_seconds:.1f} s.",
    )
    lines += ["| kill | after (s) | traces journaled before | after |", "|---|---|---|---|"]
    lines += [
        f"| {i + 1} | {k['after_s']} | {k['journaled_before']} | {k['journaled_after']} |" for i, k in enumerate(kills)
    ]
    lines += ["", f"Journal: {len(indices)} records, every trace once: {indices == list(range(TRACES))}.", ""]
    lines += [f"- `{name}`: {'identical' if ok else 'DIFFERENT'}" for name, ok in same.items()]
    write("kill_resume", {"kills": kills, "identical": same, "every_trace_once": indices == list(range(TRACES))}, lines)
    if not all(same.values()) or indices != list(range(TRACES)):
        sys.exit("the resumed build differs from the uninterrupted one")


if __name__ == "__main__":
    main()
