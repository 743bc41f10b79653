"""The attention explorer (`vit-app attention --html`), driven in headless Chromium: a clicked patch draws that
patch's attention row, the layer slider moves it to that layer's, the default map is the .npy's, no console errors.

VIT_APP_EXPLORER_CKPT runs the same test on another checkpoint (the README's screenshot: a trained quickstart model);
VIT_APP_SCREENSHOT writes the page's screenshot there."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_app.cli import main
from vit_app.data.synthetic import render_sample
from vit_app.explain.explorer import quantize
from vit_app.explain.overlay import ALPHA
from vit_app.inference import load_for_inference

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("chromium and chromium-driver are not installed (CI installs Debian's packages for this test)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,720", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _canvas(driver) -> np.ndarray:
    """The map canvas's RGBA pixels, (gh, gw, 4): one pixel a patch."""
    w, h, data = driver.execute_script(
        "const c = document.getElementById('map');"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];"
    )
    return np.array(data, dtype=np.int64).reshape(h, w, 4)


def _expected(values: np.ndarray, lut: np.ndarray, opacity: float = ALPHA[1]) -> tuple[np.ndarray, np.ndarray]:
    """(alpha (G,), rgb (G, 3)) the page must draw for a raw map: 8-bit min..max, LUT colour, alpha by value."""
    q = quantize(torch.as_tensor(values, dtype=torch.float64).reshape(-1)).astype(np.int64)
    alpha = np.round(255 * (ALPHA[0] + (opacity - ALPHA[0]) * q / 255))
    return alpha, lut[q]


def _assert_drawn(pixels: np.ndarray, values: np.ndarray, lut: np.ndarray) -> None:
    alpha, rgb = _expected(values, lut)
    got = pixels.reshape(-1, 4)
    np.testing.assert_allclose(got[:, 3], alpha, atol=1)
    solid = alpha >= 96  # canvases store premultiplied colour: a faint pixel's colour comes back rounded
    np.testing.assert_allclose(got[solid, :3], rgb[solid], atol=3)


@pytest.fixture
def explorer_ckpt(tiny_ckpt: Path) -> Path:
    return Path(os.environ.get("VIT_APP_EXPLORER_CKPT") or tiny_ckpt)


def test_explorer_page_draws_the_clicked_patch_row_and_follows_the_layer_slider(
    explorer_ckpt: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    m = load_for_inference(explorer_ckpt)
    size = m.card.input.img_size
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(render_sample(7, i, size)[0]).save(imgs / f"shape{i}.png")
    out = tmp_path / "maps"
    assert main(["attention", str(imgs), "--ckpt", str(explorer_ckpt), "--out", str(out), "--html"]) == 0
    page = out / "explorer.html"
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text  # offline: no CDN
    data = json.loads(text.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    lut = np.array(data["lut"], dtype=np.int64)
    first = data["images"][0]
    stem, (gh, gw), L = first["name"], first["grid"], first["layers"]
    rows = np.load(out / first["query_file"])  # (L, G, G): patch queries -> patch keys, heads fused
    assert rows.shape == (L, gh * gw, gh * gw)

    # The .npy holds the model's own attention rows: recompute them from the checkpoint.
    x = m.load([imgs / f"{stem}.png"])
    with torch.no_grad():
        _, attns = m.model.forward_with_attention(x)
    P = m.model.num_prefix_tokens
    reference = np.stack([a[0].mean(0)[P:, P:].float().numpy() for a in attns])
    np.testing.assert_allclose(rows, reference, rtol=1e-4, atol=1e-6)

    driver = _browser()
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        # On load: the default method's map, which is the .npy `vit-app attention` wrote.
        _assert_drawn(_canvas(driver), np.load(out / f"{stem}.npy"), lut)

        # Click patch (r, c): the map becomes that patch's attention row in layer 0.
        r, c = gh // 2, gw - 1
        patch = r * gw + c
        stage = driver.find_element(By.ID, "stage")
        side = stage.size["width"]
        dx, dy = (c + 0.5) * side / gw - side / 2, (r + 0.5) * side / gh - side / 2
        ActionChains(driver).move_to_element_with_offset(stage, round(dx), round(dy)).click().perform()
        assert Select(driver.find_element(By.ID, "method")).first_selected_option.get_attribute("value") == "query"
        _assert_drawn(_canvas(driver), rows[0, patch], lut)
        assert f"patch ({r}, {c})" in driver.find_element(By.ID, "caption").text

        # Move the layer slider with the keyboard: the map follows to the last layer's row of that patch.
        slider = driver.find_element(By.ID, "layer")
        ActionChains(driver).move_to_element(slider).click_and_hold().release().perform()
        slider.send_keys(Keys.HOME)
        for layer in range(1, L):
            slider.send_keys(Keys.ARROW_RIGHT)
            assert driver.execute_script("return window.explorer.state.layer") == layer
            _assert_drawn(_canvas(driver), rows[layer, patch], lut)
        if L > 1:  # the slider changed what is drawn, not only a number
            assert not np.array_equal(
                quantize(torch.as_tensor(rows[0, patch])), quantize(torch.as_tensor(rows[-1, patch]))
            )

        shot = tmp_path / "explorer.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("VIT_APP_SCREENSHOT"):
            shutil.copy(shot, os.environ["VIT_APP_SCREENSHOT"])

        # The class-specific map for the second class, from its button.
        buttons = driver.find_elements(By.CSS_SELECTOR, "#classes button")
        assert len(buttons) == min(5, len(m.class_names))
        buttons[1].click()
        assert driver.execute_script("return window.explorer.state.method") == "class"
        assert first["topk"][1]["label"] in driver.find_element(By.ID, "caption").text

        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
    finally:
        driver.quit()


def test_report_has_a_grid_column_only_when_grids_were_drawn(tmp_path: Path) -> None:
    import json

    from vit_app.explain.report import write_report

    base = {"path": "a.png", "input": "a_input.jpg", "overlay": "a.png", "method": "rollout", "label": "cat",
            "prob": 0.5, "topk": [{"label": "cat", "index": 0, "prob": 0.5}]}  # fmt: skip
    bad = {"path": "b.png", "error": "empty file"}
    for extra, columns in (({}, 3), ({"layers": "a_layers.png"}, 4)):
        (tmp_path / "index.jsonl").write_text("\n".join(json.dumps(r) for r in ({**base, **extra}, bad)))
        page = write_report(tmp_path).read_text()
        header = page[page.index("<table><tr>") : page.index("</tr>")]
        assert header.count("<th>") == columns and ("layers / heads" in header) == (columns == 4)
        assert f"colspan='{columns}'" in page and "empty file" in page
        assert ("<img src='a_layers.png'" in page) == (columns == 4)
