// The serving page's script: plain JavaScript, no framework, no build step.
// It uses only the endpoints every client uses, so it exercises them too:
//   POST /v2/repository/index        the models (and versions) being served
//   GET  /v2/models/NAME             a model's metadata (input shape, platform)
//   POST /v2/models/NAME/classify    an image -> top-k classes; preview=true adds
//                                    the model's input image, as the model sees it
"use strict";

const TOP_K = 5;
const state = { models: [], current: null };
const $ = (id) => document.getElementById(id);

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

async function errorText(response) {
  // The server answers every error as {"error": "..."}; anything else is shown raw.
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (ignored) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

async function request(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error("the server is not answering (stopped, or unreachable): " + error.message);
  }
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// --- models -------------------------------------------------------------------

async function loadModels() {
  const index = await request("/v2/repository/index", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ready: true }),
  });
  const names = [...new Set(index.map((entry) => entry.name))];
  state.models = await Promise.all(names.map((name) => request(`/v2/models/${encodeURIComponent(name)}`)));
  const list = $("models");
  list.replaceChildren();
  if (!state.models.length) {
    list.innerHTML = '<li class="muted">this server serves no model</li>';
    return;
  }
  for (const model of state.models) {
    const item = document.createElement("li");
    item.dataset.name = model.name;
    const input = model.inputs[0];
    item.innerHTML = `<strong></strong> <span class="muted">v${model.versions.join(", v")}</span><br>` +
      `<span class="shape"></span>`;
    item.querySelector("strong").textContent = model.name;
    item.querySelector(".shape").textContent =
      `${input.name} ${input.datatype} [${input.shape.join(", ")}] · ${model.platform}`;
    item.addEventListener("click", () => selectModel(model.name, true));
    list.appendChild(item);
  }
  // /models/NAME selects NAME; / the first model.
  const match = window.location.pathname.match(/^\/models\/([^/]+)/);
  const wanted = match ? decodeURIComponent(match[1]) : state.models[0].name;
  if (!state.models.some((model) => model.name === wanted)) {
    showMessage(`unknown model '${wanted}'; this server serves ${names.join(", ")}`);
    selectModel(state.models[0].name, false);
    return;
  }
  selectModel(wanted, false);
}

function selectModel(name, push) {
  state.current = state.models.find((model) => model.name === name);
  for (const item of $("models").children) item.setAttribute("aria-current", String(item.dataset.name === name));
  $("model-name").textContent = name;
  if (push) {
    history.pushState(null, "", `/models/${encodeURIComponent(name)}`);
    showMessage("");
  }
}

// --- images in ------------------------------------------------------------------

async function loadSamples() {
  const samples = await request("/ui/samples/samples.json");
  const box = $("samples");
  for (const sample of samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = `test image ${sample.test_index}: ${sample.label}`;
    button.dataset.file = sample.file;
    const image = document.createElement("img");
    image.src = `/ui/samples/${sample.file}`;
    image.alt = sample.label;
    button.appendChild(image);
    button.addEventListener("click", async () => {
      const response = await fetch(image.src);
      classify(await response.blob(), `test image ${sample.test_index} (${sample.label})`);
    });
    box.appendChild(button);
  }
}

function wireInputs() {
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) classify(file, file.name);
    else showMessage("the drop held no file; drop an image file");
  });
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) classify(file, file.name);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData ? event.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
    if (item) classify(item.getAsFile(), "pasted image");
  });
}

// --- classify and show ------------------------------------------------------------

async function classify(blob, description) {
  if (!state.current) {
    showMessage("no model to classify with");
    return;
  }
  const name = state.current.name;
  const started = performance.now();
  let answer;
  try {
    answer = await request(`/v2/models/${encodeURIComponent(name)}/classify?top_k=${TOP_K}&preview=true`, {
      method: "POST", headers: { "content-type": blob.type || "application/octet-stream" }, body: blob,
    });
  } catch (error) {
    showMessage(`${description}: ${error.message}`);
    $("predictions").replaceChildren();
    $("latency").textContent = "";
    return;
  }
  const milliseconds = performance.now() - started;
  showMessage("");
  showPreview(answer.input, description);
  showPredictions(answer.predictions);
  $("latency").textContent = `${name}: ${milliseconds.toFixed(1)} ms for the request (upload, preprocessing, inference)`;
}

function showPreview(input, description) {
  const canvas = $("preview");
  const image = new Image();
  image.onload = () => {
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;  // the pixels the model sees, drawn large
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(image, 0, 0, canvas.width, canvas.height);
  };
  image.src = `data:image/png;base64,${input.png}`;
  $("preview-caption").textContent = `${description}, as the model sees it: ${input.width}×${input.height} grey`;
}

function showPredictions(predictions) {
  const list = $("predictions");
  list.replaceChildren();
  for (const prediction of predictions) {
    const item = document.createElement("li");
    const label = prediction.label === null ? `class ${prediction.index}` : prediction.label;
    item.dataset.label = label;
    item.dataset.index = prediction.index;
    item.dataset.probability = prediction.probability;
    item.innerHTML = '<div class="row"><span class="label"></span><span class="probability"></span></div>' +
      '<div class="bar"></div>';
    item.querySelector(".label").textContent = label;
    item.querySelector(".probability").textContent = `${(100 * prediction.probability).toFixed(2)}%`;
    item.querySelector(".bar").style.width = `${Math.max(0.5, 100 * prediction.probability)}%`;
    list.appendChild(item);
  }
}

async function start() {
  wireInputs();
  try {
    await Promise.all([loadModels(), loadSamples()]);
  } catch (error) {
    showMessage(error.message);
  }
  document.body.dataset.ready = "true";  // for tests and scripts: the page has loaded
}

start();
