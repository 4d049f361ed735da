"""The paper's eleven competition-math benchmarks (its "Comp. Math" column, the unweighted mean of their pass@1s).

| task         | competition          | problems | source on the Hugging Face Hub |
|--------------|----------------------|----------|--------------------------------|
| `aime24`     | AIME 2024 (I and II) | 30       | HuggingFaceH4/aime_2024 (id, problem, solution, answer, url, year) |
| `aime25`     | AIME 2025 (I and II) | 30       | MathArena/aime_2025 |
| `aime26`     | AIME 2026 (I and II) | 30       | MathArena/aime_2026 |
| `hmmt_feb23` | HMMT February 2023   | 30       | MathArena/hmmt_feb_2023 |
| `hmmt_feb24` | HMMT February 2024   | 30       | MathArena/hmmt_feb_2024 |
| `hmmt_feb25` | HMMT February 2025   | 30       | MathArena/hmmt_feb_2025 |
| `hmmt_feb26` | HMMT February 2026   | 33       | MathArena/hmmt_feb_2026 |
| `hmmt_nov25` | HMMT November 2025   | 30       | MathArena/hmmt_nov_2025 |
| `brumo25`    | BrUMO 2025           | 30       | MathArena/brumo_2025 |
| `smt25`      | SMT 2025             | 53       | MathArena/smt_2025 |
| `cmimc25`    | CMIMC 2025           | 40       | MathArena/cmimc_2025 |

Every source is split train, Parquet `data/train-*`; the MathArena ones have the fields problem_idx (int), problem,
answer (a string, often LaTeX: `\\frac{9}{4}`, `2\\sqrt{3}`) and problem_type (a list of topics, kept in
`Problem.data` when present). `hmmt_feb25:/data/hmmt.jsonl` reads a local file instead (JSONL, JSON, Parquet or CSV)
whose rows have `problem` and `answer`; a problem's id is `FAMILY/` and its `id` or `problem_idx` field, else its row
number (from 1).

The prompt is the problem and the paper's instruction (`MATH_INSTRUCTION`). The last `\\boxed{}` of the answer
section is compared with the reference by value (math-verify, `check_math`): `\\boxed{2.25}` is right for
`\\frac{9}{4}`, and a zero-padded `\\boxed{033}`, as AIME answer sheets write it, for 33.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, partial

from memento.eval.check import Verdict, check_math
from memento.eval.tasks import MATH_INSTRUCTION, Problem, Task, register
from memento.eval.tasks.source import HubSource, rows

FIELDS = ("problem", "answer")


@dataclass(frozen=True)
class Competition:
    title: str  # the competition, as the `about` text names it
    problems: int  # how many problems it has on the Hub
    repo: str  # its dataset repository on the Hub (split train, Parquet `data/train-*`)


COMPETITIONS = {  # the paper's order (Table 5)
    "aime24": Competition("AIME 2024", 30, "HuggingFaceH4/aime_2024"),
    "aime25": Competition("AIME 2025", 30, "MathArena/aime_2025"),
    "aime26": Competition("AIME 2026", 30, "MathArena/aime_2026"),
    "hmmt_feb23": Competition("HMMT February 2023", 30, "MathArena/hmmt_feb_2023"),
    "hmmt_feb24": Competition("HMMT February 2024", 30, "MathArena/hmmt_feb_2024"),
    "hmmt_feb25": Competition("HMMT February 2025", 30, "MathArena/hmmt_feb_2025"),
    "hmmt_feb26": Competition("HMMT February 2026", 33, "MathArena/hmmt_feb_2026"),
    "hmmt_nov25": Competition("HMMT November 2025", 30, "MathArena/hmmt_nov_2025"),
    "brumo25": Competition("BrUMO 2025", 30, "MathArena/brumo_2025"),
    "smt25": Competition("SMT 2025", 53, "MathArena/smt_2025"),
    "cmimc25": Competition("CMIMC 2025", 40, "MathArena/cmimc_2025"),
}
SOURCES = {family: HubSource(family, c.repo, ("data/train-*",), FIELDS) for family, c in COMPETITIONS.items()}


@cache
def _problems(family: str, path: str) -> tuple[Problem, ...]:
    found = []
    for number, row in enumerate(rows(path, SOURCES[family]), 1):
        key = next((row[k] for k in ("id", "problem_idx") if row.get(k) is not None), number)
        data = {"problem_type": row["problem_type"]} if row.get("problem_type") is not None else {}
        prompt = f"{row['problem']}\n\n{MATH_INSTRUCTION}"
        found.append(Problem(f"{family}/{key}", prompt, str(row["answer"]).strip(), data))
    return tuple(found)


class CompetitionMath(Task):
    def __init__(self, family: str, path: str = ""):
        self.family, self.path = family, path
        self.name = f"{family}:{path}" if path else family
        competition = COMPETITIONS[family]
        self.about = f"{competition.title}: {competition.problems} problems ({path or competition.repo})"

    def problems(self) -> list[Problem]:
        return list(_problems(self.family, self.path))

    def check(self, problem: Problem, completion: str) -> Verdict:
        return check_math(completion, problem.reference)


for _family in COMPETITIONS:
    register(_family)(partial(CompetitionMath, _family))
