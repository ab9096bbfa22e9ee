"""Write COCO captions in the flat, grouped input form (issue 32): one JSON line {"id", "caption", "group",
"image"} per distinct human caption, ``group`` = the image, for the images after the transfer set's.

    python bench/coco_groups.py --out FILE [--coco FILE] [--skip-images 500] [--images N]

Then ``contrastgen generate negatives --input FILE --out DIR`` with ``input.group_column: group`` makes the captions
of one image positives of each other in training, and ``bench/transfer.py --data DIR`` judges the encoder on the
first 500 images, which the data never saw (it excludes any image whose captions are in DIR).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--coco", type=Path, default=SHARED / "coco_captions" / "test.jsonl")
    ap.add_argument(
        "--skip-images", type=int, default=500, help="the transfer set's images (bench/transfer.py --images)"
    )
    ap.add_argument("--images", type=int, default=None)
    a = ap.parse_args()

    from bench.outside.rules import coco_grouped_rows

    rows = coco_grouped_rows(a.coco, a.skip_images, a.images)
    a.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(
        f"{a.out}: {len(rows)} captions in {len({r['group'] for r in rows})} groups (images {a.skip_images}+ of "
        f"{a.coco})"
    )


if __name__ == "__main__":
    main()
