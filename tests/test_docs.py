"""The documentation: the generated reference pages match the code, README's and the pages' relative links
lead somewhere, and the README stays one or two screens. (`make docs` builds the site with --strict, which
also checks links and anchors; these tests run without mkdocs.)"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
REGENERATE = "run `make reference` (or `.venv/bin/python docs/gen_reference.py`) and commit the result"


def _gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unfenced(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)


def _prose(text: str) -> str:
    """The text outside fenced code blocks and code spans, where a link is a link."""
    return re.sub(r"`[^`\n]*`", "", _unfenced(text))


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading (the site's and GitHub's agree on these)."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", _unfenced(page.read_text(encoding="utf-8")), flags=re.M)}


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading '#{anchor}' in {dest.relative_to(ROOT)})")
    return broken


def test_reference_pages_are_current(tmp_path):
    written = _gen_reference().write(tmp_path)
    assert sorted(p.name for p in written) == ["cli.md", "config.md"]
    for fresh in written:
        committed = DOCS / "reference" / fresh.name
        assert committed.exists(), f"docs/reference/{fresh.name} is missing: {REGENERATE}"
        assert committed.read_text(encoding="utf-8") == fresh.read_text(encoding="utf-8"), \
            f"docs/reference/{fresh.name} is stale (the configs or the CLI changed): {REGENERATE}"


def test_config_reference_has_every_key():
    """Each stage's section of the config page names every leaf key that stage's `--print-config` shows."""
    from tinyrlhf import config as C
    page = (DOCS / "reference" / "config.md").read_text(encoding="utf-8")
    for cls in (C.SFTConfig, C.RewardConfig, C.PreferenceConfig, C.KTOConfig, C.PPOConfig, C.GroupConfig,
                C.OnlineDPOConfig):
        yaml_keys = re.findall(r"^\s*(\w+): \S", C.render_yaml(cls()), flags=re.M)  # leaves, not sections
        missing = [k for k in yaml_keys if f"`{k}`" not in page and not re.search(rf"`[\w.]+\.{k}`", page)]
        assert not missing, f"{cls.__name__}: keys missing from docs/reference/config.md: {missing}"


def test_readme_links_lead_to_files():
    broken = _broken_links(ROOT / "README.md")
    assert not broken, "README.md links to what does not exist: " + ", ".join(broken)


def test_docs_links_lead_to_files():
    broken = [f"{page.relative_to(ROOT)}: {b}" for page in sorted(DOCS.rglob("*.md")) for b in _broken_links(page)]
    assert not broken, "broken links in docs/: " + "; ".join(broken)


def test_readme_stays_short_and_names_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.count("\n")
    assert lines <= 250, f"README.md has {lines} lines (at most 250): move the detail into a page of docs/"
    for command in ("make setup", "make demo", "make test"):
        assert command in readme, f"README.md no longer says `{command}`"
