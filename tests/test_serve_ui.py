"""The serving page (export/serve/ui) in a real headless browser: Debian's
chromium driven by Playwright (no browser download), against the real server
on a loopback port. The page loads without a console error, lists the models,
a sample gives exactly the top-1 class and probability of a direct classify
call, a dropped PNG and a broken file each show what they should, an unknown
model and a stopped server give visible messages, and --no-ui turns it off.
A screenshot is written as a test artefact (PYCNN_ARTIFACTS, default the test's
temporary folder)."""
import base64
import io
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
Image = pytest.importorskip("PIL.Image")

from test_serve import ROOT, Server, onnx_files, png_bytes  # noqa: E402,F401  (onnx_files: a fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
SAMPLES = os.path.join(ROOT, "export", "serve", "ui", "samples")


@pytest.fixture(scope="module")
def server(onnx_files, tmp_path_factory):
    server = Server(str(tmp_path_factory.mktemp("ui-logs")), onnx_files["lenet_bn"], onnx_files["lenet_fixed"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


class Page:
    """A browser page on the server, recording console errors and page errors."""

    def __init__(self, browser, url):
        self.page = browser.new_page(viewport={"width": 1200, "height": 800})
        self.errors = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready=true]", timeout=20000)

    def message(self) -> str:
        box = self.page.locator("#message")
        return box.inner_text() if box.is_visible() else ""

    def predictions(self):
        self.page.wait_for_selector("#predictions li", timeout=20000)
        return self.page.eval_on_selector_all(
            "#predictions li", "items => items.map(i => [i.dataset.label, Number(i.dataset.probability)])")

    def drop(self, data: bytes, name: str, mime: str):
        """Drop a file on the drop zone, as a person dragging it from their desktop."""
        self.page.evaluate("""([data, name, mime]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: mime}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
        }""", [base64.b64encode(data).decode(), name, mime])

    def close(self):
        self.page.close()


def artefacts(tmp_path):
    folder = os.environ.get("PYCNN_ARTIFACTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    return folder


def test_samples_are_the_test_images():
    data = pytest.importorskip("pycnn.data")
    try:
        images, labels = data.load_split("test")
    except data.DataNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    with open(os.path.join(SAMPLES, "samples.json")) as f:
        samples = json.load(f)
    assert sorted(sample["label"] for sample in samples) == sorted(data.CLASSES)
    for sample in samples:
        pixels = np.asarray(Image.open(os.path.join(SAMPLES, sample["file"])))
        np.testing.assert_array_equal(pixels, images[sample["test_index"]])
        assert data.CLASSES[labels[sample["test_index"]]] == sample["label"]


def test_page_classifies_a_sample_as_a_direct_call_does(server, browser, tmp_path):
    page = Page(browser, server.url + "/")
    try:
        names = page.page.eval_on_selector_all("#models li", "items => items.map(i => i.dataset.name)")
        assert names == ["lenet_bn", "lenet_fixed"]
        assert "[-1, 1, 28, 28]" in page.page.inner_text("#models") and "onnxruntime_onnx" in page.page.inner_text(
            "#models")
        button = page.page.locator("#samples button").first
        sample = button.get_attribute("data-file")
        button.click()
        shown = page.predictions()
        with open(os.path.join(SAMPLES, sample), "rb") as f:
            direct = server.client.post("/v2/models/lenet_bn/classify?top_k=5", content=f.read()).json()
        assert shown == [[p["label"], p["probability"]] for p in direct["predictions"]]
        assert "28×28 grey" in page.page.inner_text("#preview-caption")
        assert "ms for the request" in page.page.inner_text("#latency")
        page.page.screenshot(path=os.path.join(artefacts(tmp_path), "serve-ui.png"), full_page=True)
        assert page.errors == [] and page.message() == ""
    finally:
        page.close()


def test_dropped_png_and_broken_file(server, browser):
    page = Page(browser, server.url + "/models/lenet_fixed")
    try:
        assert page.page.inner_text("#model-name") == "lenet_fixed"
        image = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
        data = png_bytes(image)
        page.drop(data, "photo.png", "image/png")
        shown = page.predictions()
        direct = server.client.post("/v2/models/lenet_fixed/classify?top_k=5", content=data).json()
        assert shown == [[p["label"], p["probability"]] for p in direct["predictions"]]
        # The preview is the model's input, 28x28, drawn large.
        preview = page.page.evaluate("document.getElementById('preview').toDataURL()")
        assert Image.open(io.BytesIO(base64.b64decode(preview.split(",")[1]))).size == (224, 224)

        page.drop(b"this is not an image", "notes.png", "image/png")
        page.page.wait_for_selector("#message:not([hidden])", timeout=20000)
        assert "notes.png" in page.message() and "not an image" in page.message()
        assert page.page.locator("#predictions li").count() == 0
        # A failed request is the server's answer (400), not a page error.
        assert all("400" in error for error in page.errors), page.errors
    finally:
        page.close()


def test_unknown_model_and_stopped_server_are_visible(onnx_files, browser, tmp_path):
    own = Server(str(tmp_path), onnx_files["lenet_bn"])
    page = Page(browser, own.url + "/models/vgg99")
    try:
        assert "unknown model 'vgg99'" in page.message() and "lenet_bn" in page.message()
        own.stop()
        page.page.locator("#samples button").first.click()
        page.page.wait_for_function("document.getElementById('message').innerText.includes('not answering')",
                                    timeout=20000)
    finally:
        page.close()
        own.stop()


def test_no_ui_serves_only_the_protocol(onnx_files, tmp_path):
    own = Server(str(tmp_path), onnx_files["lenet_bn"], "--no-ui")
    try:
        assert own.client.get("/").status_code == 404
        assert own.client.get("/ui/app.js").status_code == 404
        assert own.client.get("/v2/health/ready").status_code == 200
    finally:
        own.stop()
