"""Every measured figure in README.md and docs/*.md cites the run it came from.

A figure is a number with a unit (tok/s, req/s, ms, s, minutes, %, MB, a 1.7x ratio, ...) or a
duration in words ("about a minute"). The paragraph, list item, table row or code-fence comment
holding one must name a file in bench/results/, a commit hash or a test (whose printed output it
quotes); a table row may rely on the paragraph just above its table. Settings, limits and defaults
are not measurements: the allowlist below says which contexts mark one.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PERFORMANCE = ROOT / "docs" / "performance.md"

_NUMBER = r"(?<![\w.])[+\-−~]?\d+(?:,\d{3})*(?:\.\d+)?(?:[-–]\d+(?:,\d{3})*(?:\.\d+)?)?"
_UNIT = r"(?:\s?(?:tok/s|tokens/s|req/s|requests/s|inputs/s|pairs/s|ms|µs|%|GiB|GB|MiB|MB|KiB|KB)|\s(?:s|minutes?|hours?)|[×x])"
FIGURE = re.compile(_NUMBER + _UNIT + r"(?![\w/])")
# A duration given in words is an estimate, so a measurement: "about a minute", "a minute or two".
WORDED = re.compile(
    r"(?i)\b(?:about|around|roughly|nearly|almost)\s+(?:an?|half an?|one|two|three|four|five|ten|a few)\s+"
    r"(?:seconds?|minutes?|hours?)\b|\ban? (?:second|minute|hour) or (?:so|two)\b"
)
# A comment in a code fence: "make bench   # ~10 minutes".
FENCE_COMMENT = re.compile(r"(?:^|\s)#\s(.*)")

# Where a run is named: a results file, a commit, or a test whose output the figure quotes.
RESULT_PATH = re.compile(r"bench/results/([\w.+-]+)")
RESULT_NAME = re.compile(r"[\w.+-]+\.(?:json|txt)\b")
COMMIT = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
TEST = re.compile(r"\btests/[\w/]*|\btest_\w+\.py\b")

# Text just before a figure (inline code replaced by CODE) that makes it a setting, not a measurement.
ALLOWLIST = [
    r"default(?:s| is)?\s*$",  # "default 10 s"
    r"CODE\)?\s*(?:\(|,|=|:)?\s*$",  # a setting's value right after its name: "`model_info_ttl_s` (5 s)"
    r"\bevery\s*$",  # a period: "every 5 s"
    r"(?i)\b(?:within|at most|up to|over|at least|under|after|capped at)\s*$",  # a bound or a threshold
    r"(?i)\b(?:sets(?: it to)?|keep|set|Ray's|gRPC's)\s*$",  # a value set by hfserve or Ray: "sets 2 s", "Ray's 30 s"
    r"\bsliding\s*$",  # the rate limiter's window
    r"not sent a request for\s*$",  # the scale-to-zero check's idle time
]
# Followed by these words, a figure is a setting too: "10 s by default", "16 GiB GPU" (a test's input).
ALLOWLIST_AFTER = [
    r"^\s*by default",
    r"^\s*(?:bound|after the unload|while)\b",  # a timeout, a delay or a hold time in the code
    r"^\s*(?:GPU|for the replica's own CUDA context|is enough)\b",  # a test's input; an estimate's term; advice
]


def _blocks(text: str) -> list[tuple[int, str, str]]:
    """(line, kind, text) of each paragraph, list item, table row, heading and code-fence comment."""
    blocks: list[tuple[int, str, str]] = []
    current: list[str] = []
    start = 0
    fenced = False

    def close():
        if current:
            blocks.append((start, "text", " ".join(current)))
            current.clear()

    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            close()
            fenced = not fenced
            continue
        stripped = line.strip()
        if fenced:
            comment = FENCE_COMMENT.search(line)
            if comment:
                blocks.append((number, "comment", comment.group(1)))
            continue
        if not stripped:
            close()
        elif stripped.startswith("|") or stripped.startswith("#"):
            close()
            blocks.append((number, "row" if stripped.startswith("|") else "heading", stripped))
        elif re.match(r"(?:[-*]|\d+\.)\s", stripped):
            close()
            start, current[:] = number, [stripped]
        else:
            if not current:
                start = number
            current.append(stripped)
    close()
    return blocks


def _cites(text: str, results: set[str]) -> bool:
    names = set(RESULT_PATH.findall(text)) | set(RESULT_NAME.findall(text))
    return bool(names & results) or bool(COMMIT.search(text)) or bool(TEST.search(text))


def _is_setting(figure: str, before: str, after: str) -> bool:
    # Settings are exact single values: an approximate figure or a range ("~0.1 s", "2-3 s") is measured.
    if figure.startswith("~") or re.search(r"\d[-–]\d", figure) or re.search(r"about\s*$", before):
        return False
    return any(re.search(rule, before) for rule in ALLOWLIST) or any(re.search(rule, after) for rule in ALLOWLIST_AFTER)


def _measurements(text: str) -> list[str]:
    coded = re.sub(r"`[^`]*`", "CODE", text)
    return [
        match.group(0)
        for match in FIGURE.finditer(coded)
        if not _is_setting(match.group(0), coded[max(0, match.start() - 40) : match.start()], coded[match.end() :])
    ] + WORDED.findall(coded)


def uncited_figures(path: Path, results: set[str], performance: str) -> list[str]:
    """'file:line: figures | text' for each block with a measurement and no citation."""
    problems = []
    caption = ""  # the text block just above a table: its rows may rely on its citation
    settings_table = False  # a table with a "default" or "fires when" column lists settings, not measurements
    for line, kind, text in _blocks(path.read_text(encoding="utf-8")):
        if kind == "row" and re.match(r"\|[^|]*\|\s*(?:default|fires when)\s*\|", text):
            settings_table = True
        figures = _measurements(text)
        cited = _cites(text, results)
        if kind == "row":
            cited = cited or settings_table or _cites(caption, results)
        elif path != PERFORMANCE and "docs/performance.md" in text:
            # Another page may cite performance.md for figures that page states verbatim (and cites).
            cited = cited or all(figure in performance for figure in figures)
        if kind != "row":
            caption, settings_table = (text if kind == "text" else ""), False
        if figures and not cited:
            problems.append(f"{path.name}:{line}: {figures} | {text[:100]}")
    return problems


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_figure_in_the_docs_cites_its_run():
    results = {p.name for p in RESULTS.iterdir()}
    performance = PERFORMANCE.read_text(encoding="utf-8")
    problems = []
    for path in _documents():
        problems += uncited_figures(path, results, performance)
    assert not problems, "figures without a results file, commit or test:\n" + "\n".join(problems)


def test_every_results_file_the_docs_name_exists():
    results = {p.name for p in RESULTS.iterdir()}
    missing = [
        f"{path.name}: bench/results/{name}"
        for path in _documents()
        for name in RESULT_PATH.findall(path.read_text(encoding="utf-8"))
        if name.rstrip(".") not in results and not (RESULTS / name.rstrip(".")).is_dir()
    ]
    assert not missing, missing


def test_an_uncited_measurement_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "The server made 412 tok/s at c=16.\n\n"
        "It made 401 tok/s (`bench/results/2026-11-30.json`).\n\n"
        "Requests time out after 30 s (the default 10 s applies per chunk).\n\n"
        "| lever | effect |\n|---|---|\n| HAProxy | +12% chat |\n\n"
        "The first start takes about a minute; a conversion took 3 minutes.\n\n"
        "After 5 minutes without a scrape the gathering stops.\n\n"
        "```bash\nmake bench   # ~10 minutes\nmake soak    # 12 minutes, bench/results/2026-11-30.json\n```\n",
        encoding="utf-8",
    )
    problems = uncited_figures(page, {"2026-11-30.json"}, "")
    assert [problem.split(":")[1] for problem in problems] == ["1", "9", "11", "16"]
    assert "about a minute" in problems[2] and "3 minutes" in problems[2]
