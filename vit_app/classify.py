"""`vit-app classify`: top-k predictions for image files, folders and globs, written as they are made."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from typing import IO, Any, Literal

from tqdm import tqdm

from vit_app.inference import InferenceModel, topk_records
from vit_app.inputs import Item, expand_inputs, iter_batches, stack_ok

OutputFormat = Literal["table", "json", "csv"]
PROGRESS_MIN_IMAGES = 64  # show a progress bar (on stderr) from this many images


class Writer:
    """Writes one record an image in table, json-lines or csv form, flushing as it goes."""

    def __init__(self, out: IO[str], fmt: OutputFormat, topk: int) -> None:
        self.out, self.fmt, self.topk = out, fmt, topk
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:
            cols = ["path"] + [f"{k}_{i}" for i in range(1, topk + 1) for k in ("label", "index", "prob")] + ["error"]
            self.csv.writerow(cols)

    def result(self, path: str, top: list[dict[str, Any]]) -> None:
        if self.fmt == "json":
            self.out.write(json.dumps({"path": path, "topk": top}) + "\n")
        elif self.csv is not None:
            cells: list[Any] = [path]
            for i in range(self.topk):
                cells += [top[i]["label"], top[i]["index"], f"{top[i]['prob']:.6f}"] if i < len(top) else ["", "", ""]
            self.csv.writerow([*cells, ""])
        else:
            preds = "  ".join(f"{t['label']} {t['prob']:6.1%}" for t in top)
            self.out.write(f"{path}\t{preds}\n")
        self.out.flush()

    def error(self, path: str, reason: str) -> None:
        if self.fmt == "json":
            self.out.write(json.dumps({"path": path, "error": reason}) + "\n")
        elif self.csv is not None:
            self.csv.writerow([path] + [""] * (3 * self.topk) + [reason])
        else:
            self.out.write(f"{path}\tERROR: {reason}\n")
        self.out.flush()


def classify(
    im: InferenceModel,
    inputs: Iterable[str],
    out: IO[str],
    fmt: OutputFormat = "table",
    topk: int = 5,
    batch_size: int = 32,
    err: IO[str] | None = None,
) -> tuple[int, int]:
    """Classify every input and write its record; returns (classified, failed). Memory stays bounded by the batch."""
    err = err if err is not None else sys.stderr
    paths, missing = expand_inputs(inputs)
    writer = Writer(out, fmt, topk)
    failed = 0

    def report(item: Item) -> None:
        nonlocal failed
        failed += 1
        writer.error(item.path, item.error or "unknown error")
        err.write(f"vit-app classify: {item.path}: {item.error}\n")

    for item in missing:
        report(item)
    done = 0
    bar = tqdm(total=len(paths), unit="img", disable=len(paths) < PROGRESS_MIN_IMAGES, file=err, leave=False)
    for items in iter_batches(paths, im.transform, batch_size):
        _, x = stack_ok(items)
        records = iter(topk_records(im.probs(x), im.class_names, topk)) if x is not None else iter(())
        for item in items:  # keep the input order, errors in place
            if item.error is None:
                writer.result(item.path, next(records))
                done += 1
            else:
                report(item)
        bar.update(len(items))
    bar.close()
    return done, failed
