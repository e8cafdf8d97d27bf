"""The labelled corpus (``corpus/*.py``): each site's line ends with ``# expect: KIND SERVICE``
(several separated by ``;``); a line without one must yield no site. Shared by the scan tests and
benchmarks/bench_migrate.py, which quotes the precision and recall it measures."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from isolated_env.migrate import scan

CORPUS = Path(__file__).resolve().parent / "corpus"
_EXPECT = re.compile(r"#\s*expect:\s*(?P<labels>.+)$")

Label = tuple[str, int, str, str]  # file name, line, kind, service


def expected(path: Path) -> set[Label]:
    labels: set[Label] = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = _EXPECT.search(line)
        if match:
            for label in match["labels"].split(";"):
                kind, service = label.split()
                labels.add((path.name, number, kind, service))
    return labels


@dataclasses.dataclass(frozen=True)
class Evaluation:
    expected: set[Label]
    reported: set[Label]

    @property
    def correct(self) -> set[Label]:
        return self.expected & self.reported

    @property
    def precision(self) -> float:
        return len(self.correct) / len(self.reported) if self.reported else 0.0

    @property
    def recall(self) -> float:
        return len(self.correct) / len(self.expected) if self.expected else 0.0


def evaluate(files: list[Path] | None = None) -> Evaluation:
    files = files or sorted(CORPUS.glob("*.py"))
    want = set().union(*(expected(f) for f in files))
    report = scan(files, jobs=1)
    got = {(Path(s.path).name, s.line, s.kind, s.service) for s in report.sites}
    return Evaluation(want, got)
