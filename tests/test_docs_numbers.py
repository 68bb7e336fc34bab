"""The README's benchmark numbers are the dated ones in BENCHMARKS.md, not stale copies."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_benchmark_bullets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    return [b for b in re.split(r"\n- ", section)[1:]]


def test_every_headline_number_in_the_readme_is_in_benchmarks_md():
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    bullets = readme_benchmark_bullets()
    assert len(bullets) >= 3  # the CPU, the H200 train/decode and the generation headlines
    for bullet in bullets:
        numbers = re.findall(r"\*\*([^*]+)\*\*", bullet)
        assert numbers, f"a headline without a bold number: {bullet[:60]!r}"
        for number in numbers:
            # "7.0-10.8x" quotes two table values, each must be in BENCHMARKS.md
            unit = number[-1] if number[-1] in "x%" else ""
            for value in number.rstrip("x%").split("-"):
                assert re.search(rf"(?<![\d.]){re.escape(value)}{re.escape(unit)}", benchmarks), (
                    f"README quotes {value}{unit}, which BENCHMARKS.md does not have")


def test_every_headline_names_a_date_that_benchmarks_md_gives():
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    for bullet in readme_benchmark_bullets():
        dates = re.findall(r"\b2\d{3}-\d\d-\d\d(?:/\d\d)?\b", bullet)
        assert dates, f"a headline without its date: {bullet[:60]!r}"
        for date in dates:
            assert date in benchmarks, f"README dates a number {date}; BENCHMARKS.md does not"
