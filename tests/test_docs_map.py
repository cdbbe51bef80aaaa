"""The maps users read stay true: every ordering option is in the ordering group's table, and
every module of the package is on the README's layout map (#24 item 5)."""

from __future__ import annotations

import re

from conftest import ROOT


def ordering_options() -> set[str]:
    from hydra.core.config_store import ConfigStore

    import phasedsft.train.orderings  # noqa: F401  (registers the group)

    group = ConfigStore.instance().repo["ordering"]
    return {name.removesuffix(".yaml") for name in group}


def test_every_ordering_option_is_in_the_groups_table():
    from phasedsft.config import named_stages

    table = (ROOT / "conf" / "ordering" / "README.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = set(re.findall(r"`([^`\s]+)`", "\n".join(rows)))
    options = ordering_options()
    # options that spell their stages (1-2-3, only-3, ...) are one row: every permutation/subset
    missing = sorted(o for o in options if named_stages(o) is None and o not in named)
    assert not missing, f"conf/ordering/README.md's table lacks {missing}"
    assert {"1-2-3", "3-2-1", "only-3"} <= named


def layout_map() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Layout")
    return readme[start : readme.index("\n## ", start + 1)]


def test_every_module_is_on_the_readme_layout_map():
    """Each ``phasedsft/<pkg>/<module>.py`` is named on its package's lines of the map, and
    each top-level module on the ``phasedsft/`` lines."""
    text = layout_map()
    entries = re.split(r"\n(?=\S)", text)  # one entry per line starting at column 0
    by_folder = {e.split()[0]: e for e in entries if e.strip()}
    package = ROOT / "phasedsft"
    missing = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if path.stem in {"__init__", "__main__"} or "chat_templates" in rel.parts:
            continue
        folder = "phasedsft/" if len(rel.parts) == 1 else f"phasedsft/{rel.parts[0]}/"
        entry = by_folder.get(
            folder, by_folder.get("phasedsft/", "")
        )  # data/ (...) is listed there
        if not re.search(rf"(?<![\w/]){re.escape(path.stem)}(?![\w])", entry):
            missing.append(str(rel))
    assert not missing, f"README's layout map does not name {missing}"
