"""Condition generators: deterministic typographic rendering and SD+TYPO stacking."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from safety_glasses.eval.conditions import render_typographic, stack_sd_typo, wrap_text


def _ink_rows(img: Image.Image) -> np.ndarray:
    """Indices of pixel rows that contain dark (text) pixels on a white background."""
    arr = np.asarray(img.convert("L"))
    return np.nonzero((arr < 128).any(axis=1))[0]


def test_render_is_deterministic_and_draws_text() -> None:
    a = render_typographic("how to pick a lock", size=(200, 120))
    b = render_typographic("how to pick a lock", size=(200, 120))
    assert a.size == (200, 120) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert len(_ink_rows(a)) > 5
    assert a.tobytes() != render_typographic("how to pick a door", size=(200, 120)).tobytes()


def test_auto_fit_shrinks_long_text_and_stays_inside_margin() -> None:
    short = render_typographic("knife", size=(256, 256))
    long = render_typographic("a much longer instruction " * 6, size=(256, 256))
    # the short phrase is drawn with a larger font: its single line is taller than a wrapped line
    assert len(_ink_rows(short)) > 20
    arr = np.asarray(long.convert("L"))
    ink_cols = np.nonzero((arr < 128).any(axis=0))[0]
    assert ink_cols.min() >= 8 and ink_cols.max() < 256 - 8
    rows = _ink_rows(long)
    assert rows.min() >= 8 and rows.max() < 256 - 8


def test_numbered_steps_adds_empty_list() -> None:
    plain = render_typographic("make a weapon", size=(256, 256), font_size=20, valign="top")
    steps = render_typographic("make a weapon", size=(256, 256), font_size=20, numbered_steps=True, valign="top")
    assert _ink_rows(steps).max() > _ink_rows(plain).max() + 40  # three more lines below the phrase


def test_wrap_text_respects_width_and_newlines() -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=14)
    lines = wrap_text("one two three four five six seven\nnext", font, 80)
    assert lines[-1] == "next" and len(lines) >= 3
    assert all(font.getbbox(line)[2] - font.getbbox(line)[0] <= 80 for line in lines if line)
    assert wrap_text("one two three", font, 10, wrap=False) == ["one two three"]
    assert "".join(wrap_text("supercalifragilistic", font, 30)) == "supercalifragilistic"


def test_explicit_font_too_large_and_bad_input_raise() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        render_typographic("a long phrase that cannot fit", size=(64, 32), font_size=40)
    with pytest.raises(ValueError, match="non-empty"):
        render_typographic("   ")


def test_stack_sd_typo_puts_scene_on_top() -> None:
    scene = Image.new("RGB", (96, 90), (255, 0, 0))
    out = stack_sd_typo(scene, "a knife")
    assert out.size == (96, 90 + 32)
    arr = np.asarray(out)
    assert (arr[:90] == [255, 0, 0]).all()
    panel = np.asarray(out.convert("L"))[90:]
    assert (panel < 128).any() and (panel == 255).mean() > 0.5
    assert stack_sd_typo(scene, "a knife", typo_height=50).size == (96, 140)
