"""Several runs (model + policy) on several tasks: `summary.json`, `report.md` in the paper's Table 1 layout, plots.

Layout of an output folder: `<out>/<run>/<task>/` holds each run's resumable `results.jsonl` (`memento.eval.run`);
`<out>/summary.json`, `<out>/report.md`, `<out>/accuracy_vs_kv.png` and `<out>/distributions.png` are rewritten
at the end of every call from the runs and tasks of that call (give all of them each time: finished ones are read,
not generated again).

Design choices:
- A run is `NAME=MODEL[?policy=keep0&restart=true&...]`: a model folder and the policy it decodes under (the
  options of `EvictionPolicy`, defaulting to the command's policy flags). Every run shares the task, the sampling
  settings, the seeds and `--limit`, so all runs answer the same problems with the same seeds.
- Differences are taken against the first run, per task, paired over the problems both runs answered
  (`memento.core.intervals.paired_scores`); KV is compared as the ratio of the mean per-sample peak and AUC.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from memento.core.errors import MementoError
from memento.core.plots import pyplot, save
from memento.core.policy import EvictionPolicy
from memento.core.units import unit
from memento.eval.protocol import PROTOCOLS, settings_for
from memento.eval.run import EvalSettings, evaluate, paired, per_problem, problems_of, read_records, records_of

FLAGS = ("mask_delimiters", "keep_last_block_for_answer", "restart")
NUMBERS = ("max_block_tokens", "max_blocks")
STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class RunSpec:
    name: str
    model: str
    policy: dict


def parse_run(spec: str, default: EvictionPolicy) -> RunSpec:
    """`NAME=MODEL[?policy=keep0&restart=true&restart_mode=release&mask_delimiters=true&max_block_tokens=N&...]`."""
    name, eq, rest = spec.partition("=")
    model, _, query = rest.partition("?")
    if not eq or not re.fullmatch(r"[\w.-]+", name) or not model:
        raise MementoError(
            f"--run {spec!r}: expected NAME=MODEL_FOLDER[?policy=keep0&restart=true...], NAME of "
            "letters, digits, '.', '-' or '_'"
        )
    pairs = parse_qsl(query, keep_blank_values=True)
    options = asdict(default)
    for key, value in pairs:  # the named policy first: the options given beside it then apply to it
        if key == "policy":
            options["keep_last_n_blocks"] = EvictionPolicy.named(value).keep_last_n_blocks
            if options["keep_last_n_blocks"] < 0:  # full attention: the defaults' eviction options do not apply
                options.update(dict.fromkeys(FLAGS, False), **dict.fromkeys(NUMBERS), restart_mode="strict")
    for key, value in pairs:
        if key == "policy":
            continue
        if key in FLAGS:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise MementoError(f"--run {spec!r}: {key}={value!r} is not a yes/no value")
            options[key] = value.lower() in ("true", "1", "yes")
        elif key == "restart_mode":
            options[key] = value
        elif key in NUMBERS:
            if not value.isdigit():
                raise MementoError(f"--run {spec!r}: {key}={value!r} is not a positive integer")
            options[key] = int(value)
        else:
            known = ", ".join((*FLAGS, "restart_mode", *NUMBERS))
            raise MementoError(f"--run {spec!r}: unknown option {key!r}; use policy, {known}")
    try:
        policy = EvictionPolicy(**options)
    except MementoError as e:
        raise MementoError(f"--run {spec!r}: {e}") from None
    return RunSpec(name, str(Path(model).resolve()), asdict(policy))


def slug(task: str) -> str:
    """A folder name for a task: `gym:basic_arithmetic` -> `gym-basic_arithmetic`, `math500:/d/x.jsonl` ->
    `math500-x`, `lcb:2025-01-01..2025-03-01` -> `lcb-2025-01-01-2025-03-01`."""
    family, _, option = task.partition(":")
    path, at, rest = option.partition("@")
    if "/" in path or Path(path).suffix in (".jsonl", ".json", ".parquet", ".csv"):
        option = Path(path).stem + (f"-{rest}" if at else "")
    cleaned = re.sub(r"[^\w]+", "-", option).strip("-") or ("all" if option else "")  # `lcb:..`: all dates
    return f"{family}-{cleaned}" if cleaned else family


def describe(policy: dict) -> str:
    """A short name of a policy: `full`, `keep0`, `keep0 + restart`, ..."""
    keep = policy["keep_last_n_blocks"]
    parts = ["full" if keep < 0 else f"keep{keep}"]
    parts += [f.replace("_", " ") for f in FLAGS if policy.get(f)]
    if policy.get("restart") and policy.get("restart_mode", "strict") != "strict":
        parts[-1] += f" ({policy['restart_mode']})"
    parts += [f"{n.replace('_', ' ')} {policy[n]}" for n in NUMBERS if policy.get(n)]
    return " + ".join(parts)


def run_all(
    runs: list[RunSpec],
    tasks: list[str],
    out: Path,
    common: dict,
    limit: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    device: str | None = None,
    server: str | None = None,
) -> dict:
    """Evaluate every run on every task (each resumable), then write the comparison and the report."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise MementoError(f"--run names must differ: {', '.join(names)}")
    if len({slug(t) for t in tasks}) != len(tasks):
        raise MementoError(f"--task: the tasks {', '.join(tasks)} would share a folder; give each once")
    for r in runs:  # every input checked before hours of generation
        if not Path(r.model).is_dir():
            raise MementoError(f"run {r.name}: {r.model} is not a folder with a Hugging Face model")
    problems = {t: problems_of(t, limit)[1] for t in tasks}
    settings = {
        (r.name, t): EvalSettings(r.model, t, policy=r.policy, **settings_for(common, r.model, t))
        for r in runs
        for t in tasks
    }
    summaries, records = {}, {}
    for (name, task), st in settings.items():
        folder = out / name / slug(task)
        summaries[name, task] = evaluate(st, folder, limit, batch_size, progress, device, server=server)
        records[name, task] = records_of(read_records(folder), problems[task])
    result = {
        "tasks": tasks,
        "runs": [asdict(r) for r in runs],
        "settings": common,
        "limit": limit,
        "summaries": [{"run": n, **s} for (n, _), s in summaries.items()],
        "differences": differences(runs, tasks, summaries, records),
    }
    result["comp_math"] = {r.name: comp_math([summaries[r.name, t] for t in tasks]) for r in runs}
    result["plots"] = {
        "accuracy_vs_kv": plot_accuracy(result, out / "accuracy_vs_kv.png"),
        "distributions": plot_distributions(records, out / "distributions.png"),
    }
    if any(s.get("maj@k_curve") for s in summaries.values()):
        result["plots"]["majority"] = plot_majority(result, out / "majority.png")
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(report(result) + "\n".join(write_view(out, records)))
    return result


def write_view(out: Path, records: dict, listed: int = 5) -> list[str]:
    """Write `view.html` (every sample of the call in the trace viewer) and the report's lines that link to it: the
    first samples of each run and task whose answer is wrong or missing."""
    from memento.view import items, page

    made, wrong = [], {}
    for (name, task), group in records.items():
        for r in group:
            it = items.item({**r, "run": name, "task": task}, str(out / name / slug(task) / "results.jsonl"))
            it.entry["id"] = f"{name}/{slug(task)}/{it.entry['id']}"  # run/task/problem#sample
            made.append(it)
            if r["outcome"] != "correct":
                wrong.setdefault((name, task), []).append(it)
    page.write(items.unique(made)[: page.REPORT_LIMIT], out / "view.html", "memento eval")
    held = "" if len(made) <= page.REPORT_LIMIT else f" (the first {page.REPORT_LIMIT} of {len(made)})"
    lines = ["", "## Samples", "", f"Every sample{held} in the trace viewer: [view.html](view.html)."]
    for (name, task), its in wrong.items():
        lines += ["", f"{name}, {task}: {len(its)} sample(s) not correct; the first {min(listed, len(its))}:", ""]
        lines += [
            f"- [{it.entry['title']}]({page.link('view.html', it.entry['id'])}): {it.entry['outcome']}"
            for it in its[:listed]
        ]
    return [*lines, ""]


def differences(runs: list[RunSpec], tasks: list[str], summaries: dict, records: dict) -> list[dict]:
    """Every run but the first against the first, per task."""
    out = []
    base = runs[0].name
    for run in runs[1:]:
        for task in tasks:
            d = paired(records[run.name, task], records[base, task])
            common = [set(per_problem(records[name, task])) for name in (run.name, base)]
            if d is None:
                continue
            sa, sb = summaries[run.name, task], summaries[base, task]
            out.append(
                {
                    "run": run.name,
                    "baseline": base,
                    "task": task,
                    "problems": len(set.intersection(*common)),
                    "pass@1_delta": d.delta,
                    "pass@1_delta_ci95": list(d.ci),
                    "better": d.only_a,
                    "worse": d.only_b,
                    "peak_kv_ratio": sb["peak_kv_tokens"] / sa["peak_kv_tokens"] if sa["peak_kv_tokens"] else None,
                    "auc_kv_ratio": sb["auc_kv_ktok"] / sa["auc_kv_ktok"] if sa["auc_kv_ktok"] else None,
                }
            )
    return out


def comp_math(summaries: list[dict]) -> dict | None:
    """The paper's "Comp. Math": the unweighted mean of the competition-math tasks' pass@1, with its standard error
    (the tasks' standard errors over per-problem means, combined: sqrt(sum of squares) / tasks). None when no task
    is competition math."""
    from memento.eval.tasks import COMP_MATH, is_comp_math

    mine = [s for s in summaries if is_comp_math(s["task"])]
    if not mine:
        return None
    errors = [s.get("pass@1_se") for s in mine]
    se = None if None in errors else sum(e * e for e in errors) ** 0.5 / len(mine)
    return {
        "pass@1": sum(s["pass@1"] for s in mine) / len(mine),
        "se": se,
        "tasks": [s["task"] for s in mine],
        "of": len(COMP_MATH),
    }


def _save(fig, path: Path) -> str:
    return str(save(fig, path, dpi=120))


def plot_accuracy(result: dict, path: Path) -> str:
    """pass@1 (95% interval) against mean peak KV: one colour per run, one marker per task."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = [r["name"] for r in result["runs"]]
    markers = "osD^v<>p*h"
    for s in result["summaries"]:
        colour = f"C{names.index(s['run']) % 10}"
        marker = markers[result["tasks"].index(s["task"]) % len(markers)]
        y, (lo, hi) = 100 * s["pass@1"], s["pass@1_ci95"]
        ax.errorbar(
            s["peak_kv_tokens"],
            y,
            yerr=[[y - 100 * lo], [100 * hi - y]],
            fmt=marker,
            color=colour,
            capsize=3,
            label=f"{s['run']}, {s['task']}",
        )
    ax.set_xlabel("peak KV per sample (tokens, mean)")
    ax.set_ylabel("pass@1 (%)")
    ax.set_title("Accuracy vs peak KV")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_majority(result: dict, path: Path) -> str:
    """maj@k against k per task (the paper's Figure 7, left: how much voting would gain), one line per run, the
    first run's pass@1 as a dashed line."""
    plt = pyplot()
    tasks = [t for t in result["tasks"] if any(s.get("maj@k_curve") for s in result["summaries"] if s["task"] == t)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
    names = [r["name"] for r in result["runs"]]
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = {s["run"]: s for s in result["summaries"] if s["task"] == task}
        for i, name in enumerate(names):
            curve = mine[name].get("maj@k_curve")
            if curve:
                ks = range(1, len(curve) + 1)
                ax.plot(ks, [100 * v for v in curve], marker="o", ms=3, color=f"C{i}", label=f"{name} maj@k")
        base = mine[names[0]]
        ax.axhline(100 * base["pass@1"], color="C0", ls="--", lw=1, label=f"{names[0]} pass@1")
        ax.set(xlabel="k (samples voted)", ylabel="accuracy (%)", title=task)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_distributions(records: dict, path: Path) -> str:
    """Blocks per sample and memento lengths, per run (all tasks together)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    runs = list(dict.fromkeys(name for name, _ in records))
    top = max((t for group in records.values() for r in group for t in r.get("memento_tokens", [])), default=0)
    bins = np.arange(0, top + 2) if top < 60 else np.linspace(0, top + 1, 41)  # the same bins for every run
    for i, name in enumerate(runs):
        rs = [r for (n, _), group in records.items() if n == name for r in group]
        blocks = [r["blocks"] for r in rs]
        sizes = [t for r in rs for t in r.get("memento_tokens", [])]
        style = {"histtype": "step", "color": f"C{i}", "label": name, "linestyle": STYLES[i % len(STYLES)], "lw": 1.5}
        left.hist(blocks, bins=range(0, max(blocks, default=0) + 2), **style)  # runs that coincide stay visible
        if sizes:
            right.hist(sizes, bins=bins, **style)
    left.set(xlabel="blocks per sample", ylabel="samples", title="Blocks")
    right.set(xlabel="memento length (tokens)", ylabel="mementos", title="Memento sizes")
    for ax in (left, right):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _header(result: dict) -> list[str]:
    """The protocol and settings of the call, and every departure from the protocol, in words."""
    st, summaries = result["settings"], result["summaries"]
    name = st.get("protocol") or ""
    scope = "" if result["limit"] is None else f"; first {result['limit']} problems of each task"
    common = f"seed {st.get('seed', 0)}, {st.get('engine', 'reference')} engine{scope}"
    if name:
        lines = [f"Protocol **{name}**: {PROTOCOLS[name].about}; {common}."]
    else:
        first = summaries[0]
        sampling = "greedy"
        if first.get("temperature"):
            sampling = f"temperature {first['temperature']}, top-p {first['top_p']}, top-k {first['top_k'] or 'off'}"
        lines = [
            f"No protocol: {first['samples']} sample(s) per problem, {sampling}, at most {first['max_new_tokens']} "
            f"new tokens; {common}. Not comparable with the paper's numbers (use --protocol paper)."
        ]
    if st.get("answer_in_open_think"):
        lines[0] += " Completions cut off inside <think> were read for an answer (the paper: no answer)."
    notes = [f"- {s['run']}, {s['task']}: {note}." for s in summaries if (note := context_note(s))]
    if notes:
        lines += ["", "**Capped by the model's context:**", *notes]
    departures = [(s["run"], s["task"], d) for s in summaries for d in s.get("deviations") or []]
    if name and departures:
        lines += ["", f"**Departures from the {name} protocol** (these numbers are not comparable with the paper's):"]
        lines += [f"- {run}, {task}: {d}" for run, task, d in departures]
    elif name:
        lines += ["", f"Every run followed the {name} protocol as specified."]
    return lines


def context_note(s: dict) -> str:
    """What the model's context did to a run's samples, in words ("": nothing, it holds max_new_tokens and more)."""
    context, asked = s.get("context"), s["max_new_tokens"]
    if not context or (context > asked and not s.get("context_cut")):
        return ""
    return (
        f"the model's context is {context} tokens, so a sample gets at most {context} minus its prompt new tokens "
        f"(max new tokens: {asked}); {_pct(s.get('context_cut', 0))}% of samples stopped there (truncated)"
    )


def _cell(s: dict | None) -> str:
    if s is None:
        return "-"
    lo, hi = s["pass@1_ci95"]
    return f"{_pct(s['pass@1'])} [{_pct(lo)}, {_pct(hi)}]"


def report(result: dict) -> str:
    from memento.eval.tasks import is_comp_math

    tasks, runs = result["tasks"], result["runs"]
    by = {(s["run"], s["task"]): s for s in result["summaries"]}
    comp = [t for t in tasks if is_comp_math(t)]
    others = [t for t in tasks if t not in comp]
    aggregate = result.get("comp_math") or {}
    comp_head = [f"Comp. Math ({len(comp)} of {next(iter(aggregate.values()))['of']})"] if comp else []
    lines = [
        f"# memento eval: {', '.join(tasks)}",
        "",
        *_header(result),
        "",
        f"Written by `memento eval` on {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "## Accuracy and KV",
        "",
        "pass@1 (%) [95% interval] per task; Comp. Math is the unweighted mean of the competition-math tasks "
        "(± its standard error); peak KV and KV AUC are means per sample over all tasks (the layout of the paper's "
        "Table 1).",
        "",
        "| run | model | policy | " + " | ".join(comp_head + others) + " | peak KV (tokens) | KV AUC (k tokens) |",
        "|---|---|---|" + "---|" * len(comp_head + others) + "---|---|",
    ]
    for r in runs:
        cells = []
        if comp:
            c = aggregate[r["name"]]
            cells.append(f"{_pct(c['pass@1'])}" + ("" if c["se"] is None else f" ± {_pct(c['se'])}"))
        cells += [_cell(by[r["name"], t]) for t in others]
        mine = [by[r["name"], t] for t in tasks]
        weights = [s["problems"] * s["samples"] for s in mine]

        def mean(key, mine=mine, weights=weights):
            return sum(s[key] * w for s, w in zip(mine, weights, strict=True)) / max(sum(weights), 1)

        lines.append(
            f"| {r['name']} | {Path(r['model']).name} | {describe(r['policy'])} | {' | '.join(cells)} | "
            f"{mean('peak_kv_tokens'):.0f} | {mean('auc_kv_ktok'):.1f} |"
        )
    if comp:
        lines += [
            "",
            "### Competition math",
            "",
            "pass@1 (%) ± standard error over per-problem means, per competition.",
            "",
            "| run | " + " | ".join(comp) + " |",
            "|---|" + "---|" * len(comp),
        ]
        for r in runs:
            cells = []
            for t in comp:
                s = by[r["name"], t]
                cells.append(_pct(s["pass@1"]) + ("" if s.get("pass@1_se") is None else f" ± {_pct(s['pass@1_se'])}"))
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    unit_name, unit_bytes = unit(max(1e9 * (s.get("peak_kv_gb") or 0) for s in result["summaries"]))
    head = [
        "task",
        "run",
        "problems",
        "samples",
        "pass@1",
        "± SE",
        "pass@k",
        "maj@k",
        "no answer",
        "truncated",
        "tokens",
        "blocks",
        "memento (tokens)",
        "peak KV (tokens)",
        f"peak KV ({unit_name})",
        "KV AUC (k tokens)",
    ]
    lines += [
        "",
        "## Per task",
        "",
        "no answer: % of samples with no final answer to check; truncated: % of samples that stopped at the length "
        "limit (max new tokens, or the model's context) instead of finishing.",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for t in tasks:
        for r in runs:
            s = by[r["name"], t]
            k = s["samples"]
            cells = [
                t,
                r["name"],
                str(s["problems"]),
                str(k),
                _pct(s["pass@1"]),
                _pct(s.get("pass@1_se")),
                _pct(s[f"pass@{k}"]) if k > 1 else "-",
                _pct(s[f"maj@{k}"]) if k > 1 else "-",
                _pct(s["no_answer"]),
                _pct(s["truncated"]),
                f"{s['tokens']:.0f}",
                f"{s['blocks']:.1f}",
                "-" if s.get("memento_tokens") is None else f"{s['memento_tokens']:.1f}",
                f"{s['peak_kv_tokens']:.0f}",
                "-" if s.get("peak_kv_gb") is None else f"{s['peak_kv_gb'] * 1e9 / unit_bytes:.3g}",
                f"{s['auc_kv_ktok']:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    checks = []
    for r in runs:
        for t in tasks:
            s = by[r["name"], t]
            if s.get("checkers_disagree"):
                checks.append(
                    f"- {r['name']}, {t}: math-verify disagrees with the paper's check on {s['checkers_disagree']} "
                    "samples (their records have `math_verify`)."
                )
            if live := s.get("live_kv"):
                worst = live["max_relative_difference"]
                shown = "-" if worst is None else f"{100 * worst:.2f}%"
                checks.append(
                    f"- {r['name']}, {t}: live KV on the server's /metrics against the token replay, "
                    f"{live['requests']} requests: peaks at most {shown} apart (`kv_live_compare.json`)."
                )
    if checks:
        lines += ["", "## Checks", "", *checks]
    if result["differences"]:
        base = result["differences"][0]["baseline"]
        lines += [
            "",
            f"## Differences from {base}",
            "",
            f"Paired over the same problems and seeds: pass@1 difference in points [95% interval]; better / worse = "
            f"problems the run scores higher / lower on than {base}; KV: {base}'s mean per sample divided by the "
            "run's (above 1: the run holds less).",
            "",
            "| task | run | problems | pass@1 difference | better / worse | peak KV | KV AUC |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in result["differences"]:
            lo, hi = d["pass@1_delta_ci95"]
            peak = "-" if d["peak_kv_ratio"] is None else f"{d['peak_kv_ratio']:.2f}x"
            auc = "-" if d["auc_kv_ratio"] is None else f"{d['auc_kv_ratio']:.2f}x"
            delta = f"{100 * d['pass@1_delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            lines.append(
                f"| {d['task']} | {d['run']} | {d['problems']} | {delta} | {d['better']} / {d['worse']} | "
                f"{peak} | {auc} |"
            )
    lines += [
        "",
        "## Plots",
        "",
        "![accuracy vs peak KV](accuracy_vs_kv.png)",
        "",
        "![blocks and memento sizes](distributions.png)",
        "",
    ]
    if "majority" in result["plots"]:
        lines += [
            "maj@k by k (how much majority voting over k samples would gain; the paper's Figure 7, left), with the "
            f"pass@1 of {runs[0]['name']}:",
            "",
            "![maj@k](majority.png)",
            "",
        ]
    return "\n".join(lines)


def restart_cost(
    model: str | Path,
    mask_delimiters: bool,
    task: str,
    out: Path,
    limit: int = 64,
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> dict:
    """What restart mode (strict forgetting) costs in accuracy: `model` on `task`'s first `limit` problems, greedy,
    under eviction (keep 0) and under restart, same problems and seeds (`memento audit --eval`). The runs
    (resumable) and their report go to `out`; returns pass@1 with its interval and the mean peak KV per mode, and
    restart minus eviction (paired)."""
    base = EvictionPolicy(0, mask_delimiters=mask_delimiters)
    folder = str(Path(model).resolve())
    runs = [RunSpec("evict", folder, asdict(base)), RunSpec("restart", folder, asdict(replace(base, restart=True)))]
    summary = run_all(runs, [task], out, {"protocol": "", "max_new_tokens": max_new_tokens}, limit, progress=progress)
    by_run = {s["run"]: s for s in summary["summaries"]}
    keys = ("pass@1", "pass@1_ci95", "samples", "peak_kv_tokens")
    cost = {"task": task, "problems": by_run["evict"]["problems"], "report": str(out / "report.md")}
    cost |= {name: {k: by_run[name].get(k) for k in keys} for name in ("evict", "restart")}
    for d in summary["differences"]:
        cost["restart_minus_evict"] = {"pass@1": d["pass@1_delta"], "ci95": d["pass@1_delta_ci95"]}
    return cost
