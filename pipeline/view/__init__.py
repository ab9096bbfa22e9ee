"""``contrastgen view DIR``: a local web page to browse a dataset of any kind (FastAPI + Jinja2, no JavaScript,
no CDN: it works offline).

- ``/``: the card's facts: splits, the funnel (generation, then each filter), per-type yields, the filter plots,
  the releases.
- ``/rows?split=train&type=swap_obj&q=dog&page=2``: rows in the training layout (every kind has one), each with
  a word-level diff of anchor vs negative and anchor vs positive (moved words of a swap marked apart from
  changed ones), its filter scores and weight.
- ``/rejected?stage=filter&reason=false_negative``: rejected rows by stage and reason, with their raw text.

Every filter lives in the URL, so a link shows the same page to a colleague. Texts are data: Jinja2
autoescapes every value and no value reaches a template's control flow.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException
from fastapi import Query as Q
from fastapi.responses import FileResponse, HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from pipeline import __version__
from pipeline.records import meaning
from pipeline.shards.card import COST_COLUMNS, cost_rows
from pipeline.view.data import SCORES, Dataset, Query  # noqa: F401 (Dataset re-exported)
from pipeline.view.diff import word_diff

TEMPLATES = Path(__file__).parent / "templates"


def build_app(root: Path) -> FastAPI:
    ds = Dataset(root)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["meaning"] = meaning  # a rejection reason's meaning, from the registry the card reads too
    app = FastAPI(title=f"contrastgen view {ds.root.name}", docs_url=None, redoc_url=None, openapi_url=None)

    def render(name: str, **ctx) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(ds=ds, root=ds.root, version=__version__, **ctx))

    def link(query: Query, path: str, **change) -> str:
        q = replace(query, **change)
        args = {k: v for k, v in asdict(q).items() if v not in ("", None) and not (k == "size" and v == 25)}
        return f"{path}?{urlencode(args)}"

    @app.get("/", response_class=HTMLResponse)
    def overview() -> HTMLResponse:
        m = ds.manifest
        return render(
            "overview.html",
            splits=ds.splits(),
            counts=m.get("counts", {}),
            per_type=m.get("per_type", []),
            funnel=m.get("filters", {}).get("funnel", []),
            plots=m.get("filters", {}).get("plots", []),
            releases=m.get("publish", {}).get("releases", []),
            cost=m.get("cost", {}),
            cost_columns=COST_COLUMNS,
            cost_rows=cost_rows(m.get("cost", {})),
        )

    @app.get("/rows", response_class=HTMLResponse)
    def rows(
        split: str = "train", type: str = "", q: str = "", page: int = Q(0, ge=0), size: int = Q(25, ge=1, le=200)
    ) -> HTMLResponse:
        if split not in ds.splits() or split == "rejected":
            raise HTTPException(404, f"split {split!r}: expected one of {[s for s in ds.splits() if s != 'rejected']}")
        query = Query(split=split, type=type, q=q, page=page, size=size)
        pg = ds.page(query)
        shown = [
            {
                **r,
                "neg_diff": word_diff(r.get("anchor"), r.get("negative")),
                "pos_diff": word_diff(r.get("anchor"), r.get("positive")) if r.get("positive") else None,
                "scores": {s: r[s] for s in SCORES if r.get(s) is not None},
            }
            for r in pg.rows
        ]
        return render(
            "rows.html",
            page=pg,
            rows=shown,
            types=ds.values(split, "type"),
            link=link,
            splits=[s for s in ds.splits() if s != "rejected"],
        )

    @app.get("/rejected", response_class=HTMLResponse)
    def rejected(
        stage: str = "",
        reason: str = "",
        type: str = "",
        q: str = "",
        page: int = Q(0, ge=0),
        size: int = Q(25, ge=1, le=200),
    ) -> HTMLResponse:
        query = Query(split="rejected", type=type, stage=stage, reason=reason, q=q, page=page, size=size)
        pg = ds.page(query)
        return render(
            "rejected.html",
            page=pg,
            rows=pg.rows,
            stages=ds.values("rejected", "stage"),
            reasons=ds.values("rejected", "reason"),
            types=ds.values("rejected", "task"),
            link=link,
        )

    @app.get("/plots/{name}")
    def plot(name: str) -> FileResponse:
        allowed = {Path(p).name: p for p in ds.manifest.get("filters", {}).get("plots", [])}
        if name not in allowed:
            raise HTTPException(404, f"plot {name!r}: expected one of {sorted(allowed)}")
        return FileResponse(ds.root / allowed[name], media_type="image/png")

    return app


def serve_view(root: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    uvicorn.run(build_app(root), host=host, port=port, log_level="warning")
