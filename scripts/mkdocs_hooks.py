"""MkDocs hooks (mkdocs.yml `hooks:`): the pages read files that live outside docs/, as they do on GitHub.

- `docs/benchmarks.md` takes BENCHMARKS.md (at the repository root) in place of its `<!-- BENCHMARKS.md -->` line.
- A figure under `benchmarks/results/` (`../benchmarks/results/x.png` from a page in docs/,
  `benchmarks/results/x.png` in BENCHMARKS.md; x may be under a topic folder) is published as `results/x.png`, and the link follows.
- In BENCHMARKS.md, a link to `benchmarks/README.md` becomes the path in code: the site has no such page.

Everything else is left to `mkdocs build --strict`, so a broken link still fails the build.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
INCLUDE = "<!-- BENCHMARKS.md -->"


def on_files(files: Files, config) -> Files:
    for figure in sorted(RESULTS.rglob("*.png")):
        files.append(File.generated(config, f"results/{figure.relative_to(RESULTS).as_posix()}", abs_src_path=str(figure)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if INCLUDE in markdown:
        included = re.sub(r"^#", "##", (ROOT / "BENCHMARKS.md").read_text(), flags=re.M)  # under the page's title
        included = re.sub(r"\[([^\]]*)\]\(benchmarks/README\.md\)", r"`benchmarks/README.md`", included)
        included = included.replace("](benchmarks/results/", "](../benchmarks/results/")
        markdown = markdown.replace(INCLUDE, included)
    depth = page.file.src_uri.count("/")
    return markdown.replace("](../benchmarks/results/", "](" + "../" * depth + "results/")
