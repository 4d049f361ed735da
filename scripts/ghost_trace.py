"""The ghost trace on the paper's toy (Figure 13): writes docs/results/ghost-trace.{json,png}.

    memento train --recipe recipes/toy-digits.yaml      # ~55 min on one core; a checkpoint every 100 steps
    python scripts/ghost_trace.py --run runs/toy-digits --final STEP [--along STEP,STEP,...]
    python scripts/ghost_trace.py --by-size 2000,8000,20000,50000   # last layer, the paper's 50K traces at most

`--final` names the checkpoint Figure 13's first two panels probe (the first past 90% task accuracy); `--along`
the checkpoints of the third (leakage vs task accuracy). Without `--run`, the checkpoints shipped in
memento/toy/checkpoints/digits* are used. See memento/toy/ghost.py for the protocol.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch

from memento.toy import ghost

SHIPPED = ghost.SHIPPED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a `memento train` run folder of recipes/toy-digits.yaml")
    parser.add_argument("--final", type=int, help="the step of the checkpoint probed in full")
    parser.add_argument("--along", default="", help="steps of the checkpoints for leakage along training, a,b,c")
    parser.add_argument("--n", type=int, default=8_000, help="probe traces (the paper: 50K)")
    parser.add_argument("--n-along", type=int, default=3_000, help="probe traces per checkpoint along training")
    parser.add_argument("--epochs", type=int, default=20, help="probe training epochs")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--by-size", default="", help="only the probe at the last layer on a,b,c traces")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        folder = args.run / "checkpoints"
        final = folder / f"{args.final:07d}-stage2"
        along = [folder / f"{int(s):07d}-stage2" for s in args.along.split(",") if s]
    else:
        final = SHIPPED / "digits"
        along = sorted(SHIPPED.glob("digits-step*"))
    config = replace(ghost.PAPER_PROBE, epochs=args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.by_size:
        results = ghost.by_size(final, [int(n) for n in args.by_size.split(",")], config)
        (args.out / "ghost-trace-by-size.json").write_text(json.dumps(results, indent=1))
        return
    results = ghost.run(final, along, n=args.n, n_along=args.n_along, config=config)
    (args.out / "ghost-trace.json").write_text(json.dumps(results, indent=1))
    print(ghost.plot(results, args.out / "ghost-trace.png"))


if __name__ == "__main__":
    main()
