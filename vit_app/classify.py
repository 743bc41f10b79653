"""`vit-app classify`: top-k predictions for image files, folders and globs, written as they are made."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import IO, Any, Literal

from vit_app.inference import InferenceModel, topk_records
from vit_app.inputs import Counts, Item, describe_skipped, expand_inputs, iter_batches, require_images, stack_ok
from vit_app.progress import bar, say
from vit_app.tta import TTA

OutputFormat = Literal["table", "jsonl", "json", "csv"]  # "json" is another name for "jsonl" (one object a line)


class Writer:
    """Writes one record an image in table, json-lines or csv form, flushing as it goes."""

    def __init__(self, out: IO[str], fmt: OutputFormat, topk: int) -> None:
        self.out, self.fmt, self.topk = out, "jsonl" if fmt == "json" else fmt, topk
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:
            cols = ["path"] + [f"{k}_{i}" for i in range(1, topk + 1) for k in ("label", "index", "prob")] + ["error"]
            self.csv.writerow(cols)

    def result(self, path: str, top: list[dict[str, Any]]) -> None:
        if self.fmt == "jsonl":
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
        if self.fmt == "jsonl":
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
    tta: TTA = "none",
) -> Counts:
    """Classify every input and write its record, errors in place; memory stays bounded by the batch. Files a folder
    scan skips are named on `err`. `tta`: test-time augmentation (vit_app.tta). UserError when the inputs hold no
    image at all."""
    inputs = list(inputs)
    found = expand_inputs(inputs)
    require_images(found, inputs)
    writer = Writer(out, fmt, topk)
    failed = 0

    def report(item: Item) -> None:
        nonlocal failed
        failed += 1
        writer.error(item.path, item.error or "unknown error")
        say(f"vit-app classify: {item.path}: {item.error}", err)

    if found.skipped:
        say(f"vit-app classify: {describe_skipped(found.skipped)}", err)
    for item in found.missing:
        report(item)
    done = 0
    with bar(len(found.paths), "classify", file=err) as progress:
        for items in iter_batches(found.paths, im.transform, batch_size):
            _, x = stack_ok(items)
            records = iter(topk_records(im.probs(x, tta), im.class_names, topk)) if x is not None else iter(())
            for item in items:  # keep the input order, errors in place
                if item.error is None:
                    writer.result(item.path, next(records))
                    done += 1
                else:
                    report(item)
            progress.update(len(items))
    return Counts(done, failed, len(found.skipped))
