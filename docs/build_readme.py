"""Rebuild README.md from docs/sections/*.md (in the order listed here).

    python docs/build_readme.py
"""

from pathlib import Path

ORDER = ["00-head", "sgm-organism", "sgm-core", "sgm-eval", "sgm-real", "sgm-models", "sgm-concepts-expertise",
         "fggm-victim", "fggm-attack", "fggm-knapsack", "90-results"]


def main() -> None:
    here = Path(__file__).resolve().parent
    parts = [(here / "sections" / f"{name}.md").read_text().strip() for name in ORDER]
    (here.parent / "README.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
