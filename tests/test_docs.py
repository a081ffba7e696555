"""README.md and docs/*.md cannot go stale unnoticed.

* every relative link points at a file that exists;
* every ``sgm ...`` / ``fggm ...`` command line shown in a code block names real subcommands and only
  options those commands accept (checked against the CLIs themselves, nothing is run);
* code blocks marked with ``<!-- docs-check: run -->`` on the line before them run as printed: ``>>>``
  lines as doctests, ``$ ...`` lines as commands that must exit 0 (keep those cheap).
"""

from __future__ import annotations

import doctest
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_MARK = "<!-- docs-check: run -->"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CLI_MODULES = {"sgm": "safety_glasses.cli", "fggm": "fggm.cli"}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: str
    marked: bool


def _blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(.*)$", lines[i])
        if not m:
            i += 1
            continue
        start, info = i, m.group(2).strip()
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i])
            i += 1
        prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        out.append(Block(page, start + 1, info, "\n".join(body), prev == RUN_MARK))
        i += 1
    return out


def _prose(page: Path) -> str:
    """The page without its code blocks (links inside code are not links)."""
    return re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)


def _command_lines(block: Block) -> list[tuple[int, str]]:
    """(line, command) for every sgm/fggm invocation in a block (continuations joined)."""
    out: list[tuple[int, str]] = []
    lines = block.text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)  # then only `$ ` lines are commands
    i = 0
    while i < len(lines):
        first = i
        text = lines[i]
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        text = text.strip()
        if text.startswith("$ "):
            text = text[2:]
        elif prompted or not _looks_like_command(text):
            continue  # printed output (a table row that starts with a method name, say)
        for part in re.split(r"\s(?:&&|;)\s", text):
            part = re.split(r"\s\|\s|\s\d?>\s?|\s#\s", " " + part.strip() + " ")[0].strip()
            if part.split(" ", 1)[0] in CLI_MODULES:
                out.append((block.line + first + 1, part))
    return out


def _looks_like_command(text: str) -> bool:
    """A line of an unprompted block is a command when its second word is a subcommand or an option."""
    words = text.split()
    if len(words) < 2 or words[0] not in CLI_MODULES:
        return False
    return words[1].startswith("--") or words[1] in _click_root(words[0]).commands


def _click_root(name: str):
    module = __import__(CLI_MODULES[name], fromlist=["app"])
    return typer.main.get_command(module.app)


def _option_names(command) -> set[str]:
    names = {"--help"}
    for p in command.params:
        if getattr(p, "param_type_name", "") == "option":
            names.update(p.opts)
            names.update(getattr(p, "secondary_opts", []) or [])
    return names


def _check_command(text: str) -> str | None:
    """None when the command line fits the CLI, else what is wrong."""
    try:
        tokens = shlex.split(text.replace("[", " ").replace("]", " "))
    except ValueError as exc:
        return f"cannot split: {exc}"
    command = _click_root(tokens[0])
    path = [tokens[0]]
    rest = tokens[1:]
    while rest and hasattr(command, "commands") and not rest[0].startswith("-"):
        if rest[0] not in command.commands:
            return f"{' '.join(path)} has no subcommand {rest[0]!r} (has: {', '.join(sorted(command.commands))})"
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    known = _option_names(command)
    for token in rest:
        if token.startswith("--") and len(token) > 2:
            name = token.split("=", 1)[0]
            if name not in known:
                return f"{' '.join(path)} has no option {name}"
    return None


def _all_blocks() -> list[Block]:
    return [b for page in PAGES for b in _blocks(page)]


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(_prose(page)):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_every_command_line_shown_fits_the_cli() -> None:
    wrong = []
    for block in _all_blocks():
        for line, text in _command_lines(block):
            problem = _check_command(text)
            if problem:
                wrong.append(f"{block.page.relative_to(ROOT)}:{line}: {text}\n    -> {problem}")
    assert wrong == [], "\n".join(wrong)


def test_the_checker_catches_stale_commands() -> None:
    assert _check_command("sgm fit --model m --concepts c --out o") is None
    assert "no option --nope" in _check_command("sgm fit --model m --nope 3")
    assert "no subcommand 'fitt'" in _check_command("sgm fitt --model m")
    assert _check_command("fggm knapsack attack --help") is None


_RUN = [b for b in _all_blocks() if b.marked]
SHARED_FOLDERS = ("data", "configs", "tests", "benchmarks")


def _scratch_checkout(tmp_path: Path) -> Path:
    """A folder that looks like the repository root to a command (its read-only inputs linked in), so
    the relative ``--out runs/...`` paths the pages print land in ``tmp_path``, not in the checkout."""
    for name in SHARED_FOLDERS:
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    return tmp_path


def test_some_examples_are_run() -> None:
    assert len(_RUN) >= 2, "mark the cheap README/docs examples with <!-- docs-check: run -->"


@pytest.mark.parametrize("block", _RUN, ids=[f"{b.page.name}:{b.line}" for b in _RUN])
def test_marked_examples_run_as_printed(block: Block, tmp_path: Path) -> None:
    if ">>>" in block.text:
        parser = doctest.DocTestParser()
        test = parser.get_doctest(block.text, {}, f"{block.page.name}:{block.line}", str(block.page), block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert runner.failures == 0, f"{block.page.name}:{block.line}: doctest failed"
        return
    commands = [line[2:] for line in block.text.splitlines() if line.startswith("$ ")]
    assert commands, f"{block.page.name}:{block.line}: a marked block shows no `$ command`"
    scratch = _scratch_checkout(tmp_path)
    for text in commands:
        tokens = shlex.split(text)
        module = CLI_MODULES.get(tokens[0])
        argv = ([sys.executable, "-c", f"import sys; from {module} import main; sys.argv[0] = {tokens[0]!r}; main()",
                 *tokens[1:]] if module else tokens)
        done = subprocess.run(argv, cwd=scratch, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{block.page.name}:{block.line}: `{text}` exited {done.returncode}\n{done.stderr[-2000:]}"
