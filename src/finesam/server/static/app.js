// finesam serve: the page. Plain JavaScript and a canvas; every prompt goes to the server, which
// runs the model (the encoder once per image, the decoder per click) and answers with masks as
// row-major run lengths.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

const state = {
  info: null,
  image: null,        // {id, name, width, height}
  picture: null,      // the decoded image (HTMLImageElement)
  scale: 1,           // canvas pixels per image pixel
  objects: [],        // committed: {id, score, area, colour, layer, edge}
  current: null,      // the object being drawn: {box, clicks, mask, score, colour, layer, edge}
  selected: null,
  drag: null,         // {x0, y0, x1, y1, button, shift, moved}
};

// --- requests: one at a time, in order ------------------------------------------------------
let queue = Promise.resolve();
let pending = 0;

function setPending(delta) {
  pending += delta;
  document.body.dataset.pending = String(pending);
}

function enqueue(task) {
  setPending(1);
  queue = queue.then(task).catch((error) => showError(error)).finally(() => setPending(-1));
  return queue;
}

async function api(method, path, body, raw) {
  const options = { method, headers: {} };
  if (raw !== undefined) {
    options.body = raw;
  } else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, options);
  const answer = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    const error = new Error(answer.detail || `HTTP ${response.status}`);
    error.answer = answer;
    throw error;
  }
  return answer;
}

// A commit or deletion the server kept but could not write to the images folder answers 409 with
// `saved: false` and the step's answer: show the change, marked unsaved, and say why.
async function keptIfUnsaved(request) {
  try {
    return [await request, null];
  } catch (error) {
    if (error.answer && error.answer.saved === false) return [error.answer, error.message];
    throw error;
  }
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function showError(error) {
  setStatus(String(error.message || error), true);
}

// --- masks ------------------------------------------------------------------------------------
// A mask's layers: `layer` filled with its colour, `edge` its outline (pixels next to the background).
function maskLayers(runs, colour) {
  const { width, height } = state.image;
  const bits = new Uint8Array(width * height);
  let position = 0;
  let on = false;
  for (const run of runs) {
    if (on) bits.fill(1, position, position + run);
    position += run;
    on = !on;
  }
  const make = () => {
    const layer = document.createElement("canvas");
    layer.width = width;
    layer.height = height;
    const context = layer.getContext("2d");
    return [layer, context, context.createImageData(width, height)];
  };
  const [layer, layerContext, fill] = make();
  const [edge, edgeContext, line] = make();
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      if (!bits[i]) continue;
      const k = 4 * i;
      fill.data[k] = colour[0]; fill.data[k + 1] = colour[1]; fill.data[k + 2] = colour[2]; fill.data[k + 3] = 255;
      const border = x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
        !bits[i - 1] || !bits[i + 1] || !bits[i - width] || !bits[i + width];
      if (border) {
        line.data[k] = colour[0]; line.data[k + 1] = colour[1]; line.data[k + 2] = colour[2]; line.data[k + 3] = 255;
      }
    }
  }
  layerContext.putImageData(fill, 0, 0);
  edgeContext.putImageData(line, 0, 0);
  return { layer, edge };
}

function withLayers(item) {
  return item.mask ? { ...item, ...maskLayers(item.mask, item.colour) } : item;
}

// --- drawing ----------------------------------------------------------------------------------
function draw() {
  if (!state.picture) return;
  const { width, height } = state.image;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(state.picture, 0, 0, canvas.width, canvas.height);
  const opacity = Number($("opacity").value);
  const outline = $("outline").checked;
  const layers = state.objects.slice();
  if (state.current && state.current.layer) layers.push(state.current);
  for (const item of layers) {
    const dim = state.selected !== null && item.id !== undefined && item.id !== state.selected;
    ctx.globalAlpha = dim ? opacity * 0.4 : opacity;
    ctx.drawImage(item.layer, 0, 0, width, height, 0, 0, canvas.width, canvas.height);
    if (outline || item.id === state.selected) {
      ctx.globalAlpha = 1;
      ctx.drawImage(item.edge, 0, 0, width, height, 0, 0, canvas.width, canvas.height);
    }
  }
  ctx.globalAlpha = 1;
  const s = state.scale;
  const current = state.current;
  if (current && current.box) {
    const [x0, y0, x1, y1] = current.box;
    ctx.strokeStyle = "#00e676";
    ctx.lineWidth = 2;
    ctx.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
  }
  if (current) {
    for (const [x, y, positive] of current.clicks) {
      ctx.beginPath();
      ctx.arc((x + 0.5) * s, (y + 0.5) * s, 5, 0, 2 * Math.PI);
      ctx.fillStyle = positive ? "#00c853" : "#e53935";
      ctx.fill();
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1.5;
      ctx.stroke();
    }
  }
  const drag = state.drag;
  if (drag && drag.moved) {
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#ffeb3b";
    ctx.lineWidth = 2;
    ctx.strokeRect(Math.min(drag.x0, drag.x1) * s, Math.min(drag.y0, drag.y1) * s,
      Math.abs(drag.x1 - drag.x0) * s, Math.abs(drag.y1 - drag.y0) * s);
    ctx.setLineDash([]);
  }
}

function renderObjects() {
  const list = $("objects");
  list.textContent = "";
  for (const item of state.objects) {
    const entry = document.createElement("li");
    entry.dataset.id = item.id;
    if (item.id === state.selected) entry.className = "selected";
    if (item.saved === false && state.image.path) entry.classList.add("unsaved");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${item.colour.join(",")})`;
    const text = document.createElement("span");
    text.className = "info";
    text.textContent = `#${item.id}  score ${item.score.toFixed(3)}  ${item.area} px` +
      (item.saved === false && state.image.path ? "  (unsaved)" : "");
    const remove = document.createElement("button");
    remove.textContent = "\u2715";
    remove.title = `delete object ${item.id}`;
    remove.addEventListener("click", (event) => { event.stopPropagation(); deleteObject(item.id); });
    entry.append(swatch, text, remove);
    entry.addEventListener("click", () => {
      state.selected = state.selected === item.id ? null : item.id;
      renderObjects();
      draw();
    });
    list.append(entry);
  }
}

// --- opening images ---------------------------------------------------------------------------
function loadPicture(url) {
  return new Promise((resolve, reject) => {
    const picture = new Image();
    picture.onload = () => resolve(picture);
    picture.onerror = () => reject(new Error("the browser could not display the image"));
    picture.src = url;
  });
}

async function showImage(answer) {
  state.image = { id: answer.id, name: answer.name, width: answer.width, height: answer.height, path: answer.path };
  state.picture = await loadPicture(`/api/images/${answer.id}/pixels`);
  const room = Math.max(200, $("stage").clientWidth - 24);
  state.scale = Math.min(1, room / answer.width);
  canvas.width = Math.round(answer.width * state.scale);
  canvas.height = Math.round(answer.height * state.scale);
  canvas.dataset.scale = String(state.scale);
  canvas.dataset.imageId = answer.id;
  $("stage").classList.remove("empty");
  state.objects = answer.objects.map(withLayers);
  state.current = withLayers(answer.current);
  state.selected = null;
  showSaving(answer);
  const exportLink = $("export");
  exportLink.href = `/api/images/${answer.id}/export.zip`;
  exportLink.classList.remove("disabled");
  renderObjects();
  draw();
  const encoded = answer.cached ? "features cached" : `encoded in ${Math.round(answer.encode_ms)} ms`;
  setStatus(`${answer.name}: ${answer.width}x${answer.height}, ${encoded}`);
  document.body.dataset.imageId = answer.id;
}

function openUpload(file) {
  enqueue(async () => {
    setStatus(`encoding ${file.name}...`);
    const answer = await api("POST", `/api/images?name=${encodeURIComponent(file.name)}`, undefined, file);
    await showImage(answer);
  });
}

function openFromFolder(path) {
  enqueue(async () => {
    setStatus(`encoding ${path}...`);
    await showImage(await api("POST", "/api/folder/open", { path }));
  });
}

// --- prompts ----------------------------------------------------------------------------------
function step(what, path, body) {
  if (!state.image) return;
  const imageId = state.image.id;
  enqueue(async () => {
    const started = performance.now();
    const [answer, notSaved] = await keptIfUnsaved(api("POST", `/api/images/${imageId}/${path}`, body));
    const roundTrip = performance.now() - started;
    state.current = withLayers(answer.current);
    if (answer.object) {
      state.objects.push(withLayers(answer.object));
      renderObjects();
    }
    await syncObjects(answer);
    draw();
    const encoded = answer.encode_ms ? `, re-encoded in ${Math.round(answer.encode_ms)} ms` : "";
    $("latency").textContent = `${what}: ${Math.round(answer.latency_ms)} ms model, ${Math.round(roundTrip)} ms round trip${encoded}`;
    if (answer.saved_to) markAnnotated(state.image.path);
    const score = answer.current.score;
    if (notSaved) setStatus(notSaved, true);
    else setStatus(answer.object ? `object ${answer.object.id} committed${answer.saved_to ? " and saved" : ""}`
      : score === null ? "no object" : `score ${score.toFixed(3)}`);
  });
}

// Every answer about an image carries its object ids and saving state. Another tab or browser on the
// same folder image shares its objects: when the ids differ from the page's, reload the list.
async function syncObjects(answer) {
  if (!answer.object_ids) return;
  const known = state.objects.map((item) => item.id).join(",");
  if (known !== answer.object_ids.join(",")) {
    const fresh = await api("GET", `/api/images/${state.image.id}`);
    state.objects = fresh.objects.map(withLayers);
    if (!state.objects.some((item) => item.id === state.selected)) state.selected = null;
  } else if (!answer.unsaved) {
    for (const item of state.objects) item.saved = true;
  }
  renderObjects();
  showSaving(answer);
}

// The notice of changes kept in memory but not written to the images folder, with a Save button.
function showSaving(answer) {
  const notice = $("unsaved");
  const unsaved = Boolean(state.image && state.image.path && answer.unsaved);
  notice.hidden = !unsaved;
  if (unsaved) {
    $("unsaved-text").textContent = `Not saved to the images folder${answer.save_error ? `: ${answer.save_error}` : ""}. ` +
      "Export still downloads every object.";
  }
}

function saveAgain() {
  if (!state.image) return;
  const imageId = state.image.id;
  enqueue(async () => {
    const [answer, notSaved] = await keptIfUnsaved(api("POST", `/api/images/${imageId}/save`));
    state.objects = answer.objects.map(withLayers);
    renderObjects();
    draw();
    showSaving(answer);
    if (answer.saved_to) markAnnotated(state.image.path);
    setStatus(notSaved || "saved", Boolean(notSaved));
  });
}

// The images folder's list marks the images that have annotations on disk.
function markAnnotated(path) {
  for (const option of $("folder").options) {
    if (option.value === path && !option.text.startsWith("\u2713")) option.text = `\u2713 ${path}`;
  }
}

function deleteObject(id) {
  const imageId = state.image.id;
  enqueue(async () => {
    const [answer, notSaved] = await keptIfUnsaved(api("DELETE", `/api/images/${imageId}/objects/${id}`));
    state.objects = state.objects.filter((item) => item.id !== id);
    if (state.selected === id) state.selected = null;
    await syncObjects(answer);
    draw();
    setStatus(notSaved || `object ${id} deleted${answer.saved_to ? " (saved)" : ""}`, Boolean(notSaved));
  });
}

function toImage(event) {
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) / state.scale);
  const y = Math.floor((event.clientY - rect.top) / state.scale);
  return [Math.min(Math.max(x, 0), state.image.width - 1), Math.min(Math.max(y, 0), state.image.height - 1)];
}

canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("mousedown", (event) => {
  if (!state.image || (event.button !== 0 && event.button !== 2)) return;
  const [x, y] = toImage(event);
  state.drag = { x0: x, y0: y, x1: x, y1: y, button: event.button, shift: event.shiftKey, moved: false,
    clientX: event.clientX, clientY: event.clientY };
});
window.addEventListener("mousemove", (event) => {
  const drag = state.drag;
  if (!drag) return;
  [drag.x1, drag.y1] = toImage(event);
  if (drag.button === 0 && Math.hypot(event.clientX - drag.clientX, event.clientY - drag.clientY) > 4) drag.moved = true;
  if (drag.moved) draw();
});
window.addEventListener("mouseup", (event) => {
  const drag = state.drag;
  if (!drag) return;
  state.drag = null;
  if (drag.moved) {
    step("box", "box", { box: [Math.min(drag.x0, drag.x1), Math.min(drag.y0, drag.y1),
      Math.max(drag.x0, drag.x1), Math.max(drag.y0, drag.y1)] });
    return;
  }
  if (event.target !== canvas) return;
  if (state.info.corrects_clicks && !(state.current && state.current.box)) {
    setStatus("this model corrects a box: draw a box around the object first", true);
    return;
  }
  const positive = drag.button === 0 && !drag.shift;
  step(positive ? "positive click" : "negative click", "click", { x: drag.x0, y: drag.y0, positive });
});

document.addEventListener("keydown", (event) => {
  if (!state.image || ["INPUT", "SELECT"].includes(event.target.tagName) && event.target.type !== "range" && event.target.type !== "checkbox") return;
  const key = event.key.toLowerCase();
  if (key === "z" && !event.shiftKey) step("undo", "undo");
  else if (key === "escape") step("clear", "clear");
  else if (key === "e" || key === "enter") step("commit", "commit");
  else if ((key === "delete" || key === "backspace") && state.selected !== null) deleteObject(state.selected);
  else return;
  event.preventDefault();
});

// --- controls ---------------------------------------------------------------------------------
$("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) openUpload(file);
  event.target.value = "";
});
$("stage").addEventListener("dragover", (event) => event.preventDefault());
$("stage").addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) openUpload(file);
});
$("folder").addEventListener("change", (event) => { if (event.target.value) openFromFolder(event.target.value); });
$("save").addEventListener("click", saveAgain);
$("opacity").addEventListener("input", draw);
$("outline").addEventListener("change", draw);
$("hq-output").addEventListener("change", (event) => {
  if (!state.image) return;
  const imageId = state.image.id;
  enqueue(async () => {
    await api("POST", `/api/images/${imageId}/hq_output`, { mode: event.target.value });
    setStatus(`HQ output: ${event.target.value} (from the next step)`);
  });
});

async function start() {
  state.info = await api("GET", "/api/info");
  const info = state.info;
  $("model").textContent = `${info.model}${info.corrects_clicks ? " (clicks correct the box's mask)" : ""}`;
  if (info.random_weights) {
    $("banner").textContent = "RANDOM WEIGHTS: these masks are meaningless (pipeline check only)";
    $("banner").hidden = false;
  }
  if (info.output_modes.length) {
    const select = $("hq-output");
    for (const mode of info.output_modes) select.add(new Option(mode, mode, false, mode === (info.hq_output || info.output_modes[0])));
    $("hq-label").hidden = false;
  }
  if (info.folder) {
    const listing = await api("GET", "/api/folder");
    const select = $("folder");
    for (const item of listing.images) select.add(new Option(`${item.annotated ? "\u2713 " : ""}${item.path}`, item.path));
    select.hidden = false;
  }
  $("stage").classList.add("empty");
  setStatus("open an image");
}

enqueue(start);
