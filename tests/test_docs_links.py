"""Every link in the docs leads somewhere: relative links to files that exist (and to headings
that exist in them), and every `docs/*.md` a module or doc names is in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOC_PATH = re.compile(r"(?<![\w/.-])((?:docs|bench|systemd|scripts)/[\w./-]+\.(?:md|html|toml|sh|service|timer|env))\b")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    return [REPO / p for p in out if (REPO / p).is_file()]


def _docs() -> list[Path]:
    here = {p for p in REPO.glob("*.md")} | set(REPO.glob("docs/*.md")) | \
        set(REPO.glob("bench/**/*.md"))
    return sorted(p for p in here if ".venv" not in p.parts)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    h = re.sub(r"[`*_]", "", heading.strip().lower())
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_relative_links_resolve():
    bad = []
    for doc in _docs():
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):  # http(s):, mailto:, file: - not checked here
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f"{doc.relative_to(REPO)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{doc.relative_to(REPO)}: {target}: no heading #{anchor}")
    assert not bad, "\n".join(bad)


def test_named_doc_paths_exist():
    """`docs/x.md`, `systemd/x.service`, ... named in code, docs and units are in the repo; no
    file points to a DESIGN.md that is not shipped."""
    bad = []
    files = _tracked("*.py", "*.md", "*.toml", "*.sh", "*.service", "*.timer", "Makefile")
    for f in files:
        if "results" in f.parts or f.name == Path(__file__).name:  # recorded output; this file
            continue
        text = f.read_text(errors="replace")
        for p in set(DOC_PATH.findall(text)):
            if not (REPO / p).exists() and "*" not in p:
                bad.append(f"{f.relative_to(REPO)}: names {p}, which does not exist")
        if f.suffix in (".py", ".md") and re.search(r"\bDESIGN\.md\b", text):
            bad.append(f"{f.relative_to(REPO)}: refers to DESIGN.md, which is not in the "
                       "repository (the click contract is docs/contract.md)")
    assert not bad, "\n".join(bad)


def test_client_doc_uses_the_default_port():
    from slidr.slidrd.config import Config
    text = (REPO / "docs" / "client.md").read_text()
    ports = set(re.findall(r"[\d.]+:(\d{4,5})\b", text))
    assert ports == {str(Config().port)}, ports


def test_contract_doc_matches_the_code():
    """docs/contract.md's field table says what slidr/contract.py enforces."""
    from slidr import contract as c
    text = (REPO / "docs" / "contract.md").read_text()
    rows = {}
    for line in text.split("## Fields", 1)[1].split("##", 1)[0].splitlines():
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(c.FIELDS)
    for name, (_kind, required) in c.FIELDS.items():
        assert rows[name][2].startswith("yes") == required, name
    assert f"1..{c.MAX_ID_LEN} characters" in rows["click_id"][3]
    assert f"up to {c.MAX_UA_LEN} characters" in rows["user_agent"][3]
    assert f"{c.TZ_MIN}..{c.TZ_MAX}" in rows["tz_offset_min"][3]
    assert ", ".join(f"`{d}`" for d in c.DEVICES[:-1]) + f" or `{c.DEVICES[-1]}`" \
        in rows["device"][3]
