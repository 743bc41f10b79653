"""`vit-app serve`: the model over HTTP on LitServe (FastAPI underneath), with request batching.

    POST /predict   image bytes (any image Content-Type or application/octet-stream) or multipart (a file field)
                    -> {"label", "prob", "topk": [...]}, as `vit-app classify --format json` prints
    POST /explain   the same upload -> the map: {"topk", "method", "explained_class", "grid", "map", "overlay_png"}
                    (query: ?method=..., ?class=NAME for the class-specific methods)
    GET  /health    "ok" once the model is loaded
    GET  /          a page: drop an image, see the prediction and its map

Uploads are checked before they reach the model (UploadGate): an empty body, a body over the size limit, bytes that
are not an image, a truncated image or one over the pixel limit get a 4xx with a message, and never reach a batch,
so one bad upload cannot fail the good requests batched with it.
"""

from __future__ import annotations

import base64
import io
import json
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import litserve as ls
import torch
from fastapi import HTTPException

from vit_app.data.images import ImageLoadError, load_image_bytes
from vit_app.inference import load_for_inference, topk_records

ROUTES = ("/predict", "/explain")
DRAIN_FACTOR = 16  # an oversized upload is read (and dropped) up to this many times the limit before the 413


class UploadGate:
    """ASGI middleware for POST /predict and /explain: reads the upload (raw bytes or a multipart file) within
    `max_bytes`, checks that it is a whole image of at most `max_pixels`, and hands LitServe JSON instead:
    {"image": base64, "query": {...}}. A bad upload is answered here, with a 4xx and a one-line reason."""

    def __init__(self, app: Any, max_bytes: int, max_pixels: int, class_names: list[str]) -> None:
        self.app, self.max_bytes, self.max_pixels, self.class_names = app, max_bytes, max_pixels, class_names

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in ROUTES or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, seen = bytearray(), 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen <= self.max_bytes:
                body += chunk
            more = message.get("more_body", False)
            # An upload over the limit is read to its end and thrown away (up to DRAIN_FACTOR times the limit)
            # before the 413 goes out: closing on unread bytes resets the connection, and the client would see
            # "connection reset" instead of the reason.
            if seen > self.max_bytes and (not more or seen > DRAIN_FACTOR * self.max_bytes):
                await _reply(send, 413, f"upload over the {self.max_bytes / 2**20:g} MiB limit (--max-upload-mb)")
                return
            if not more:
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            data = await _upload_bytes(bytes(body), headers.get("content-type", ""), scope)
            load_image_bytes(data, "upload", self.max_pixels)  # the whole image decodes, within the limits
        except ImageLoadError as e:
            await _reply(send, _status(str(e)), str(e))
            return
        except HTTPException as e:
            await _reply(send, e.status_code, str(e.detail))
            return
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        problem = check_query(query, self.class_names, explain=scope["path"] == "/explain")
        if problem:  # refused here: a bad request inside a batch would fail the requests batched with it
            await _reply(send, 400, problem)
            return
        payload = json.dumps({"image": base64.b64encode(data).decode("ascii"), "query": query}).encode()
        rest = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
        new_scope = {**scope, "headers": [*rest, (b"content-type", b"application/json"),
                                          (b"content-length", str(len(payload)).encode())]}  # fmt: skip
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        await self.app(new_scope, replay, send)


async def _upload_bytes(body: bytes, content_type: str, scope: dict) -> bytes:
    """The image bytes of a raw or multipart upload."""
    if not body:
        raise HTTPException(400, "empty body: send the image's bytes, or multipart form data with a file field")
    if content_type.startswith("multipart/form-data"):
        from starlette.requests import Request

        async def once() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, once).form()
        except Exception as e:  # malformed multipart
            raise HTTPException(400, f"unreadable multipart body ({e})") from None
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise HTTPException(400, "multipart body without a file field")
        data = await files[0].read()
        if not data:
            raise HTTPException(400, "empty file in the multipart body")
        return data
    if content_type.startswith(("application/json", "text/")):
        raise HTTPException(415, f"Content-Type {content_type}: send image bytes (e.g. image/jpeg) or multipart")
    return body


def check_query(query: dict[str, str], class_names: list[str], explain: bool) -> str | None:
    """What is wrong with a request's ?topk=, ?method= and ?class= (None: nothing)."""
    from vit_app.explain.engine import resolve_method
    from vit_app.explain.render import resolve_class

    if "topk" in query and not (query["topk"].isdigit() and int(query["topk"]) >= 1):
        return f"topk={query['topk']}: give a whole number >= 1"
    if not explain:
        return None
    try:
        if "method" in query:
            resolve_method(query["method"])
        resolve_class(query.get("class"), class_names)
    except Exception as e:  # ValueError / ConfigError with the reason and the choices
        return str(e)
    return None


def _status(reason: str) -> int:
    """The HTTP status of an image that cannot be used: 413 too large, 415 not an image we take, 400 broken."""
    if "pixel limit" in reason or "decompression bomb" in reason:
        return 413
    if "not an image" in reason or "is not allowed" in reason:
        return 415
    return 400


async def _reply(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})  # fmt: skip


class PredictAPI(ls.LitAPI):
    """POST /predict: top-k classes of a batch of uploads."""

    def __init__(self, ckpt: str, topk: int = 5, max_pixels: int = 40_000_000, **kw: Any) -> None:
        super().__init__(**kw)
        self.ckpt, self.topk, self.max_pixels = ckpt, topk, max_pixels

    def setup(self, device: str) -> None:
        self.im = load_for_inference(self.ckpt, device)

    def decode_request(self, request: dict) -> tuple[torch.Tensor, dict[str, str], Any]:
        img = load_image_bytes(base64.b64decode(request["image"]), "upload", self.max_pixels)  # checked by the gate
        return self.im.transform(img), dict(request.get("query") or {}), img

    def batch(self, inputs: list) -> list:
        return inputs

    def unbatch(self, outputs: list) -> list:
        return outputs

    def _topk(self, query: dict[str, str]) -> int:
        try:
            return max(1, int(query.get("topk", self.topk)))
        except ValueError:
            return self.topk

    def predict(self, inputs: Any) -> Any:
        """A batch (a list of decoded requests; --max-batch-size > 1) or, unbatched, one decoded request."""
        if isinstance(inputs, list):
            return self.predict_batch(inputs)
        return self.predict_batch([inputs])[0]

    @torch.no_grad()
    def predict_batch(self, inputs: list) -> list[dict[str, Any]]:
        x = torch.stack([t for t, _, _ in inputs]).to(self.im.device)
        probs = self.im.probs(x)
        out = []
        for (_, query, _), row in zip(inputs, probs):
            top = topk_records(row[None], self.im.class_names, self._topk(query))[0]
            out.append({"label": top[0]["label"], "prob": top[0]["prob"], "topk": top})
        return out

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


class ExplainAPI(PredictAPI):
    """POST /explain: the map of each upload (the requests of a batch that ask for the same map run together)."""

    def predict_batch(self, inputs: list) -> list[dict[str, Any]]:
        from vit_app.explain.engine import CLASS_SPECIFIC, DEFAULT_METHOD, explain, resolve_method
        from vit_app.explain.overlay import overlay
        from vit_app.explain.render import describe_map, resolve_class

        groups: dict[tuple[str, int | None], list[int]] = {}
        for i, (_, query, _) in enumerate(inputs):  # queries were checked by the gate (check_query)
            method = resolve_method(query.get("method") or DEFAULT_METHOD)
            target = resolve_class(query.get("class"), self.im.class_names) if method in CLASS_SPECIFIC else None
            groups.setdefault((method, target), []).append(i)
        out: list[dict[str, Any]] = [{} for _ in inputs]
        for (method, target), idx in groups.items():
            x = torch.stack([inputs[i][0] for i in idx]).to(self.im.device)
            ex = explain(self.im.model, x, method, target=target, temperature=self.im.temperature)
            for j, i in enumerate(idx):
                probs, m = ex.probs[j].cpu(), ex.maps[j].float().cpu()
                top = topk_records(probs[None], self.im.class_names, self._topk(inputs[i][1]))[0]
                explained = self.im.class_names[int(ex.target[j])]
                lines = [f"{top[0]['label']} {top[0]['prob']:.1%}",
                         describe_map(method, None, explained if method in CLASS_SPECIFIC else None)]  # fmt: skip
                png = io.BytesIO()
                overlay(inputs[i][2], m.numpy(), lines, self.im.card.input).save(png, "PNG")
                out[i] = {"label": top[0]["label"], "prob": top[0]["prob"], "topk": top, "method": method,
                          "explained_class": explained if method in CLASS_SPECIFIC else None,
                          "grid": list(m.shape), "map": [[round(float(v), 6) for v in row] for row in m],
                          "overlay_png": base64.b64encode(png.getvalue()).decode("ascii")}  # fmt: skip
        return out


def page() -> str:
    return resources.files("vit_app").joinpath("serve.html").read_text(encoding="utf-8")


def build_server(
    ckpt: str,
    device: str = "cpu",
    max_batch_size: int = 16,
    batch_timeout: float = 0.01,
    max_upload_mb: float = 20.0,
    max_pixels: int = 40_000_000,
    topk: int = 5,
    timeout: float = 60.0,
) -> ls.LitServer:
    """The LitServer for `ckpt` (the model is loaded in its worker, at start)."""
    from fastapi.responses import HTMLResponse

    batching = {"max_batch_size": max_batch_size, "batch_timeout": batch_timeout if max_batch_size > 1 else 0.0}
    apis = [PredictAPI(ckpt, topk, max_pixels, api_path="/predict", **batching),
            ExplainAPI(ckpt, topk, max_pixels, api_path="/explain", **batching)]  # fmt: skip
    from vit_app.card import read_card_file

    names = read_card_file(ckpt).class_names
    gate = (UploadGate, {"max_bytes": int(max_upload_mb * 2**20), "max_pixels": max_pixels, "class_names": names})
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    server = ls.LitServer(apis, accelerator=accelerator, devices=1, workers_per_device=1, timeout=timeout,
                          middlewares=[gate], track_requests=False)  # fmt: skip
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    server.app.add_api_route("/", lambda: HTMLResponse(page()), methods=["GET"], include_in_schema=False)
    return server
