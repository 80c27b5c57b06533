"""Every code block of the guides in docs/ runs here, so a guide cannot drift from the code.

How a guide marks its blocks (an HTML comment on the line before a fence; blank lines may
separate them):

- ```python            runs alone in a fresh interpreter with no launcher environment, so
                       `rd.init()` is the world of one; it must exit 0.
- ```pycon             a doctest (`>>>` lines), run the same way (ELLIPSIS, NORMALIZE_WHITESPACE).
- <!-- file: NAME -->  the next block is saved as NAME (a script, a hostfile) for the console
                       blocks after it in the same guide; it does not run by itself.
- ```console           `$ ringdist-launch ...` or `$ python ...` on the first line: the command
                       runs in a temporary directory holding the guide's files defined so far.
                       Every other non-empty line is output that must match some line of the
                       real output (stdout and stderr). In an expected line, `...` matches any
                       text (ports, pids, paths, which rank noticed first); a line that is only
                       `...` stands for output left out. Whitespace runs compare equal.
- <!-- exit: N -->     the console command must exit with N (default 0). Such a failure demo
                       may run twice: which rank notices a failure first can vary, and the
                       guides quote the usual case.
- <!-- no-run -->      the next block is not run (torch or MLX code, sketches).

Other fences (text, json, shell, ...) are prose. Every command has a timeout, and a command
that overruns is killed with its whole process group.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import ROOT, run_launcher

DOCS = ROOT / "docs"
GUIDES = ["coming-from-pytorch.md", "coming-from-mlx.md", "coming-from-mpi.md", "numpy.md", "pitfalls.md"]
RUN_TIMEOUT = 45  # seconds for any one block; the slowest pitfall takes about 4 s
RUNNABLE = {"python", "pycon", "console"}
MARKER = re.compile(r"^<!--\s*(no-run|file:\s*(\S+)|exit:\s*(\d+))\s*-->\s*$")

# Launched examples get bounded waits even where the guide does not set them, so a guide
# whose example hangs fails in seconds, not at the library's 300 s default.
LAUNCH_ENV = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10", "RINGDIST_INIT_TIMEOUT": "20"}
# Variables that would make a lone interpreter believe it was launched.
JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "MLX_RANK", "MLX_HOSTFILE")
JOB_PREFIXES = ("RINGDIST_", "SLURM_", "OMPI_", "PMI_", "PMIX_")


@dataclass
class Block:
    guide: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    no_run: bool = False
    file: str | None = None
    exit: int = 0
    files: dict[str, str] = field(default_factory=dict)  # the guide's files defined before this block

    @property
    def id(self) -> str:
        return f"{self.guide}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and not self.no_run and self.file is None


def parse_guide(name: str) -> list[Block]:
    """The fenced blocks of a guide, with the markers that precede them."""
    lines = (DOCS / name).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    files: dict[str, str] = {}
    pending: dict = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line.strip())
        if marker:
            if marker.group(1) == "no-run":
                pending["no_run"] = True
            elif marker.group(2):
                pending["file"] = marker.group(2)
            else:
                pending["exit"] = int(marker.group(3))
        elif line.startswith("```"):
            fence = re.match(r"^(`{3,})", line).group(1)
            lang = line[len(fence):].strip().split(" ")[0]
            end = i + 1
            while end < len(lines) and not lines[end].startswith(fence):
                end += 1
            assert end < len(lines), f"{name}:{i + 1}: unclosed code fence"
            block = Block(name, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n", files=dict(files), **pending)
            if block.file:
                files[block.file] = block.text
            blocks.append(block)
            pending = {}
            i = end
        elif line.strip() and not line.lstrip().startswith("<!--"):
            assert not pending, f"{name}:{i + 1}: a marker must come right before a code block"
        i += 1
    assert not pending, f"{name}: a marker at the end of the guide marks no block"
    return blocks


def _all_blocks() -> list[Block]:
    return [b for name in GUIDES if (DOCS / name).exists() for b in parse_guide(name)]


RUNNABLE_BLOCKS = [b for b in _all_blocks() if b.runs]


# ---- running -----------------------------------------------------------------------------------


def lone_env() -> dict[str, str]:
    """This process's environment without anything that says "you were launched"."""
    return {k: v for k, v in os.environ.items() if k not in JOB_VARIABLES and not k.startswith(JOB_PREFIXES)}


def run_alone(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion with a timeout; on overrun kill its process group and fail."""
    proc = subprocess.Popen(argv, cwd=cwd, env=lone_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"{argv} did not finish in {RUN_TIMEOUT}s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_console(block: Block, tmp: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a console block's command; return the result and the expected output lines."""
    first, *expected = block.text.splitlines()
    assert first.startswith("$ "), f"{block.id}: a console block starts with `$ command`"
    argv = shlex.split(first[2:])
    for name, text in block.files.items():
        (tmp / name).write_text(text, encoding="utf-8")
    if argv[0] == "ringdist-launch":
        res = run_launcher(argv[1:], timeout=RUN_TIMEOUT, env=LAUNCH_ENV, cwd=tmp)
    elif argv[0] == "python":
        res = run_alone([sys.executable, *argv[1:]], tmp)
    else:
        raise AssertionError(f"{block.id}: console blocks run `ringdist-launch` or `python`, not {argv[0]!r}")
    return res, expected


def squash(text: str) -> str:
    return " ".join(text.split())


def line_pattern(expected: str) -> re.Pattern[str]:
    """An expected line as a regex: `...` matches any text; whitespace runs are one space."""
    return re.compile(".*?".join(re.escape(part) for part in squash(expected).split("...")))


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The expected lines that match no line of `output`."""
    actual = [squash(line) for line in output.splitlines()]
    wanted = [e for e in expected if e.strip() and e.strip() != "..."]
    return [e for e in wanted if not any(line_pattern(e).fullmatch(a) for a in actual)]


@pytest.mark.parametrize("block", RUNNABLE_BLOCKS, ids=[b.id for b in RUNNABLE_BLOCKS])
def test_guide_block(block: Block, tmp_path: Path) -> None:
    if block.lang == "python":
        (tmp_path / "example.py").write_text(block.text, encoding="utf-8")
        res = run_alone([sys.executable, "example.py"], tmp_path)
        assert res.returncode == 0, f"{block.id} failed:\n{res.stdout}\n{res.stderr}"
    elif block.lang == "pycon":
        (tmp_path / "example.txt").write_text(block.text, encoding="utf-8")
        res = run_alone([sys.executable, "-m", "doctest", "-o", "ELLIPSIS", "-o", "NORMALIZE_WHITESPACE",
                         "example.txt"], tmp_path)
        assert res.returncode == 0, f"{block.id}: doctest failed:\n{res.stdout}\n{res.stderr}"
    else:
        res, expected = run_console(block, tmp_path)
        output = res.stdout + res.stderr
        if block.exit and res.returncode == block.exit and missing_lines(expected, output):
            # A failing job's messages can depend on which rank noticed first; the guides
            # quote the usual case, so one rerun is allowed before calling the quote wrong.
            res, expected = run_console(block, tmp_path)
            output = res.stdout + res.stderr
        assert res.returncode == block.exit, (
            f"{block.id}: exit status {res.returncode}, the guide says {block.exit}\n{output}")
        missing = missing_lines(expected, output)
        assert not missing, f"{block.id}: these lines are not in the output:\n" + "\n".join(
            missing) + f"\n--- output ---\n{output}"


# ---- the guides as a whole --------------------------------------------------------------------


def test_the_four_guides_exist_and_readme_links_them() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    learn = readme.split("## Learn", 1)
    assert len(learn) == 2, "README.md has no Learn section"
    section = learn[1].split("\n## ", 1)[0]
    for name in GUIDES:
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
        assert f"(docs/{name})" in section, f"README's Learn section does not link docs/{name}"


def test_every_guide_has_runnable_examples() -> None:
    for name in GUIDES:
        kinds = {b.lang for b in RUNNABLE_BLOCKS if b.guide == name}
        assert "console" in kinds, f"{name} runs nothing under ringdist-launch"


def test_markers_mark_blocks_they_can_apply_to() -> None:
    for block in _all_blocks():
        if block.exit:
            assert block.lang == "console", f"{block.id}: exit: marks a console block"
        if block.lang == "console" and not block.no_run:
            assert block.text.startswith("$ "), f"{block.id}: a console block starts with `$ command`"


def test_error_names_in_the_guides_exist() -> None:
    import ringdist as rd

    for name in GUIDES:
        text = (DOCS / name).read_text(encoding="utf-8")
        for err in set(re.findall(r"\b([A-Z][A-Za-z]*Error)\b", text)):
            if err in {"RuntimeError", "TimeoutError", "ValueError", "TypeError", "OSError",
                       "BrokenPipeError", "ConnectionResetError", "KeyError"}:
                continue
            assert hasattr(rd, err), f"{name} names {err}, which ringdist does not have"


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings."""
    heads = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_links_between_guides_resolve() -> None:
    for name in GUIDES:
        text = (DOCS / name).read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        for target, anchor in re.findall(r"\]\(([\w.-]+\.md)?(?:#([\w-]+))?\)", text):
            page = DOCS / (target or name)
            assert page.is_file(), f"{name} links to {target}, which does not exist"
            if anchor:
                assert anchor in _anchors(page.read_text(encoding="utf-8")), f"{name}: no #{anchor} in {page.name}"


def test_expected_line_matching() -> None:
    out = "[0] ringdist.errors.ConnectError: rank 0: cannot listen on 192.0.2.7: Cannot assign\n[1] ok"
    assert not missing_lines(["[0] ringdist.errors.ConnectError: rank 0: cannot listen on 192.0.2.7: ...",
                              "...", "[1]   ok"], out)
    assert missing_lines(["[1] ok!"], out) == ["[1] ok!"]
    assert missing_lines(["rank 0"], out) == ["rank 0"]  # whole lines, not substrings
