/* rgflow explore: the page's logic, in plain JavaScript (no framework, no build step).

Request flow
------------
The server holds the model and the latents; the page sends what the user did and shows
what comes back. Images travel as PNG data URLs inside JSON answers.

 * Every request that runs the model goes through one Channel, `modelChannel`: at most
   one such request is in flight. While it is, a newer request with the same key (say
   "factor 3/1", sent on every `input` event while that slider is dragged) replaces the
   one still waiting: the latest value wins, and it is sent as soon as the previous
   answer has come. A dragged slider thus never queues up stale values, and the image
   is at most one decode behind the slider.
 * Cheap geometric look-ups (which latents reach a pixel, which pixels a latent can
   change) go through their own channel and are cached per position.
 * A receptive field is asked for once the pointer rests on a latent (it costs a few
   decodes), and cached per position; until it comes, the exact cone is shown.
 * Latency: each slider `input` event is stamped with performance.now(); once an image
   that reflects it has loaded (img onload), the difference is pushed to
   window.rgflowTimings (benchmarks/explore_latency.py reads it).
*/
"use strict";

const STAGE = 384; // px: the image and its overlay
const MAP = 256; // px: the latent map
const PALETTE = ["#e8590c", "#f2a600", "#2f9e44", "#1c7ed6", "#7048e8", "#c2255c", "#0b7285"];
const FACTOR_RANGE = 3; // sliders go from -3 to +3 spreads

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  level: 0, // the level whose factors are shown
  cut: 1, // the mixing scale S
  hover: null, // {kind: "pixel" | "latent", i, j}
  cones: new Map(), // "i,j" -> pixels a latent position can change (L x L 0/1)
  reach: new Map(), // "i,j" -> latent positions whose cone reaches a pixel
  fields: new Map(), // "i,j" -> receptive field (L x L, max 1)
  dragging: null, // the slider being dragged: answers do not move it
};
window.rgflowTimings = []; // ms from each slider input event to its image on screen
window.rgflowPhases = []; // see record()
window.rgflowImages = 0; // images shown so far (tests wait for it to grow)
window.rgflowReady = false;

// --- requests ---------------------------------------------------------------------------

class Channel {
  constructor() {
    this.busy = false;
    this.waiting = new Map(); // key -> task, in the order of their latest arrival
  }
  send(key, task) {
    this.waiting.delete(key);
    this.waiting.set(key, task);
    if (!this.busy) this.next();
  }
  async next() {
    const first = this.waiting.entries().next();
    if (first.done) {
      this.busy = false;
      return;
    }
    const [key, task] = first.value;
    this.waiting.delete(key);
    this.busy = true;
    try {
      await task();
    } catch (err) {
      showError(err);
    }
    this.next();
  }
}
const modelChannel = new Channel();
const geometryChannel = new Channel();
// for tests: every request answered
window.rgflowIdle = () => [modelChannel, geometryChannel].every((c) => !c.busy && !c.waiting.size);

async function api(method, path, body, type) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    const raw = body instanceof Blob;
    options.body = raw ? body : JSON.stringify(body);
    options.headers["Content-Type"] = raw ? type || "application/octet-stream" : "application/json";
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

// --- latency stamps ---------------------------------------------------------------------

const stamps = new Map(); // key -> times of input events not yet on screen

function stamp(key) {
  if (!stamps.has(key)) stamps.set(key, []);
  stamps.get(key).push(performance.now());
}

function takeStamps(key) {
  const taken = stamps.get(key) || [];
  stamps.set(key, []);
  return taken;
}

/* The input events `taken` are on screen now; the request for them was sent at `sent` and
   answered at `answered`. window.rgflowPhases gets, per request, [waiting before it was
   sent (the oldest event), the server's answer, showing the image] in ms. */
function record(taken, sent, answered) {
  const now = performance.now();
  for (const t of taken) window.rgflowTimings.push(now - t);
  if (!taken.length) return;
  window.rgflowPhases.push([sent - taken[0], answered - sent, now - answered]);
  $("timing").textContent = `slider to image: ${Math.round(now - taken[taken.length - 1])} ms`;
}

// --- images and state -------------------------------------------------------------------

function load(img, url) {
  return new Promise((resolve) => {
    img.onload = resolve;
    img.onerror = resolve;
    img.src = url;
  });
}

async function setImage(url) {
  await load($("image"), url);
  window.rgflowImages += 1;
}

async function applyState(answer) {
  await setImage(answer.image);
  answer.temperatures.forEach((t, h) => {
    const slider = $(`temperature-${h}`);
    if (slider !== state.dragging) slider.value = t;
    $(`temperature-value-${h}`).textContent = t.toFixed(2);
  });
  answer.locks.forEach((locked, h) => {
    $(`lock-${h}`).checked = locked;
  });
}

/* After anything but a factor drag: the factor values and the mix follow. */
function refreshViews() {
  modelChannel.send("factors", loadFactors);
  modelChannel.send("mix", loadMix);
}

/* When a slider is let go. Arrow keys fire `change` on every press, so wait for a pause
   rather than decode the mix between two key presses. */
let settleTimer = null;

function settle(views) {
  clearTimeout(settleTimer);
  settleTimer = setTimeout(() => {
    state.dragging = null;
    views();
  }, 400);
}

/* A button's request: every click counts (two swaps are no swap), so each gets its own key. */
let clicks = 0;

function change(method, path, body) {
  setStatus("");
  modelChannel.send(`click-${++clicks}`, async () => {
    await applyState(await api(method, path, body));
    refreshViews();
  });
}

// --- status line ------------------------------------------------------------------------

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function showError(err) {
  setStatus(`error: ${err.message || err}`, true);
}

// --- levels -----------------------------------------------------------------------------

function colour(h) {
  return PALETTE[(state.info.levels.length - 1 - h) % PALETTE.length];
}

function levelTitle(d) {
  return `Level ${d.level} · ${d.name}`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function side(n) {
  const s = Math.round(Math.sqrt(n));
  return s * s === n ? `${s}×${s}` : `${n}`;
}

function buildScales() {
  const box = $("scales");
  const C = state.info.channels;
  for (const d of [...state.info.levels].reverse()) {
    const h = d.level;
    const row = document.createElement("div");
    row.className = "level";
    row.id = `level-${h}`;
    row.innerHTML = `
      <div class="bar" style="background:${colour(h)}"></div>
      <div>
        <div class="title"><span class="name">${levelTitle(d)}</span>
          <span class="count">${d.count.toLocaleString()} latents
            (${d.positions} positions × ${C})</span></div>
        <div class="count">each acts on up to ${side(d.reach)} pixels</div>
        <div class="controls">
          <label>T <input type="range" id="temperature-${h}"
            min="0.05" max="2" step="0.05" value="1"></label>
          <span class="value" id="temperature-value-${h}">1.00</span>
          <button id="resample-${h}">Resample</button>
          <label class="check"><input type="checkbox" id="lock-${h}"> lock</label>
        </div>
      </div>`;
    box.appendChild(row);
    row.addEventListener("click", (e) => {
      if (!e.target.closest("input, button, label")) selectLevel(h);
    });
    const slider = $(`temperature-${h}`);
    slider.addEventListener("input", () => temperatureInput(h, slider));
    slider.addEventListener("change", () => settle(refreshViews));
    $(`resample-${h}`).addEventListener("click", () => change("POST", `/api/levels/${h}/resample`));
    $(`lock-${h}`).addEventListener("change", (e) => {
      const locked = e.target.checked;
      modelChannel.send(`lock-${h}`, () => api("POST", `/api/levels/${h}/lock`, { locked }));
    });
  }
}

function temperatureInput(h, slider) {
  $(`temperature-value-${h}`).textContent = Number(slider.value).toFixed(2);
  liveInput(`temperature-${h}`, slider, `/api/levels/${h}/temperature`, () => ({
    value: Number(slider.value),
  }));
}

/* A slider that the image follows while it moves (see "Request flow" at the top): `body`
   is called when the request is sent, so it sends the slider's latest value. */
function liveInput(key, slider, path, body) {
  state.dragging = slider;
  stamp(key);
  modelChannel.send(key, async () => {
    const taken = takeStamps(key);
    const sent = performance.now();
    const answer = await api("POST", path, body());
    const answered = performance.now();
    await setImage(answer.image);
    record(taken, sent, answered);
  });
}

function selectLevel(h) {
  state.level = h;
  document.querySelectorAll(".level").forEach((row) => {
    row.classList.toggle("selected", row.id === `level-${h}`);
  });
  modelChannel.send("factors", loadFactors);
}

// --- factors ----------------------------------------------------------------------------

async function loadFactors() {
  const h = state.level;
  const answer = await api("GET", `/api/levels/${h}/factors`);
  const d = state.info.levels[h];
  $("factors-title").textContent = `of ${levelTitle(d).toLowerCase()} (click a level to change)`;
  $("factors-hint").textContent =
    `The ${answer.factors.length} latents of this level that vary most over ` +
    `${state.info.about.spread_from || "the reference images"}. Each slider moves one ` +
    "latent in units of its spread σ (0 = its mean), the others held. Point at a slider " +
    "to see where the latent acts.";
  const box = $("factors");
  if (box.dataset.level !== String(h)) buildFactors(box, h, answer.factors);
  answer.factors.forEach((f, k) => {
    const slider = $(`factor-${k}`);
    if (slider !== state.dragging) slider.value = f.value;
    $(`factor-value-${k}`).textContent = signed(f.value);
  });
}

function signed(v) {
  return `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(2)}σ`;
}

function buildFactors(box, h, factors) {
  box.dataset.level = String(h);
  box.innerHTML = "";
  const channels = state.info.channels === 3 ? ["R", "G", "B"] : [""];
  factors.forEach((f, k) => {
    const row = document.createElement("div");
    row.className = "factor";
    const where = `(${f.i}, ${f.j})${channels[f.c] ? " " + channels[f.c] : ""}`;
    row.innerHTML = `
      <label for="factor-${k}" title="channel ${f.c}, row ${f.i}, column ${f.j}">${where}</label>
      <input type="range" id="factor-${k}"
        min="${-FACTOR_RANGE}" max="${FACTOR_RANGE}" step="0.05" value="0">
      <span class="value" id="factor-value-${k}"></span>`;
    box.appendChild(row);
    const slider = row.querySelector("input");
    slider.addEventListener("input", () => factorInput(h, k, slider));
    slider.addEventListener("change", () => settle(() => modelChannel.send("mix", loadMix)));
    row.addEventListener("mouseenter", () => pointLatent(f.i, f.j));
    row.addEventListener("mouseleave", clearHover);
  });
}

function factorInput(h, k, slider) {
  $(`factor-value-${k}`).textContent = signed(Number(slider.value));
  liveInput(`factor-${h}-${k}`, slider, "/api/factor", () => ({
    level: h,
    index: k,
    value: Number(slider.value),
  }));
}

// --- mixing -----------------------------------------------------------------------------

function buildCuts() {
  const H = state.info.levels.length;
  const box = $("cuts");
  if (H < 2) {
    $("mix-panel").hidden = true;
    return;
  }
  for (let s = H - 1; s >= 1; s--) {
    const button = document.createElement("button");
    button.textContent = `S = ${s}`;
    button.style.borderLeft = `4px solid ${colour(s)}`;
    button.id = `cut-${s}`;
    button.title = `levels ${s}..${H - 1} from the image, 0..${s - 1} from the partner`;
    button.addEventListener("click", () => {
      state.cut = s;
      modelChannel.send("mix", loadMix);
    });
    box.appendChild(button);
  }
  state.cut = H - 1; // the coarsest level alone from the image: the clearest contrast
  $("mix-hint").textContent =
    "The mix takes the coarse levels (S and up) from the image and the fine levels (below " +
    "S) from the partner: the image's big picture with the partner's details. Choose the cut:";
}

async function loadMix() {
  const H = state.info.levels.length;
  if (H < 2) return;
  const s = state.cut;
  const answer = await api("GET", `/api/mix?scale=${s}`);
  $("mix-current").src = $("image").src;
  await Promise.all([load($("mix-second"), answer.second), load($("mix-result"), answer.mix)]);
  document
    .querySelectorAll("#cuts button")
    .forEach((b) => b.classList.toggle("on", b.id === `cut-${s}`));
  $("mix-caption").textContent = `mix at S = ${s}`;
}

// --- drawing: the latent map and the overlay on the image -------------------------------

function key(i, j) {
  return `${i},${j}`;
}

function drawMap() {
  const ctx = $("latent-map").getContext("2d");
  const L = state.info.size;
  const cell = MAP / L;
  const hover = state.hover;
  const reach = hover && hover.kind === "pixel" ? state.reach.get(key(hover.i, hover.j)) : null;
  ctx.clearRect(0, 0, MAP, MAP);
  for (let i = 0; i < L; i++) {
    for (let j = 0; j < L; j++) {
      ctx.globalAlpha = reach && !reach[i][j] ? 0.15 : 1;
      ctx.fillStyle = colour(state.info.level_map[i][j]);
      ctx.fillRect(j * cell, i * cell, cell - (cell > 4 ? 1 : 0), cell - (cell > 4 ? 1 : 0));
    }
  }
  ctx.globalAlpha = 1;
  if (hover && hover.kind === "latent") outlineCell(ctx, hover.i, hover.j, cell);
}

function outlineCell(ctx, i, j, cell) {
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#000";
  ctx.strokeRect(j * cell - 1, i * cell - 1, cell + 1, cell + 1);
  ctx.strokeStyle = "#fff";
  ctx.strokeRect(j * cell - 3, i * cell - 3, cell + 5, cell + 5);
}

function drawOverlay() {
  const ctx = $("overlay").getContext("2d");
  const L = state.info.size;
  const cell = STAGE / L;
  const hover = state.hover;
  ctx.clearRect(0, 0, STAGE, STAGE);
  if ($("show-levels").checked) {
    ctx.globalAlpha = 0.4;
    for (let i = 0; i < L; i++) {
      for (let j = 0; j < L; j++) {
        ctx.fillStyle = colour(state.info.level_map[i][j]);
        ctx.fillRect(j * cell, i * cell, cell, cell);
      }
    }
    ctx.globalAlpha = 1;
  }
  if (!hover) return;
  if (hover.kind === "pixel") {
    outlineCell(ctx, hover.i, hover.j, cell);
    return;
  }
  const field = state.fields.get(key(hover.i, hover.j));
  const cone = state.cones.get(key(hover.i, hover.j));
  if (!cone) return;
  // dim the image where the latent has no influence: fully outside its cone, and
  // (once the receptive field is known) the more, the weaker its influence
  for (let i = 0; i < L; i++) {
    for (let j = 0; j < L; j++) {
      const strength = !cone[i][j] ? 0 : field ? Math.sqrt(field[i][j]) : 1;
      ctx.fillStyle = `rgba(0, 0, 0, ${0.8 * (1 - strength)})`;
      ctx.fillRect(j * cell, i * cell, cell, cell);
    }
  }
  outlineCone(ctx, cone, cell, colour(state.info.level_map[hover.i][hover.j]));
  outlineCell(ctx, hover.i, hover.j, cell);
}

/* Draw the border of a set of pixels: every edge between a member and a non-member. */
function outlineCone(ctx, cone, cell, stroke) {
  const L = cone.length;
  ctx.strokeStyle = stroke;
  ctx.lineWidth = 2;
  ctx.beginPath();
  for (let i = 0; i < L; i++) {
    for (let j = 0; j < L; j++) {
      if (!cone[i][j]) continue;
      const x = j * cell;
      const y = i * cell;
      if (i === 0 || !cone[i - 1][j]) {
        ctx.moveTo(x, y + 1);
        ctx.lineTo(x + cell, y + 1);
      }
      if (i === L - 1 || !cone[i + 1][j]) {
        ctx.moveTo(x, y + cell - 1);
        ctx.lineTo(x + cell, y + cell - 1);
      }
      if (j === 0 || !cone[i][j - 1]) {
        ctx.moveTo(x + 1, y);
        ctx.lineTo(x + 1, y + cell);
      }
      if (j === L - 1 || !cone[i][j + 1]) {
        ctx.moveTo(x + cell - 1, y);
        ctx.lineTo(x + cell - 1, y + cell);
      }
    }
  }
  ctx.stroke();
}

function redraw() {
  drawMap();
  drawOverlay();
}

// --- pointing ---------------------------------------------------------------------------

function cellAt(event, canvas) {
  const rect = canvas.getBoundingClientRect();
  const L = state.info.size;
  const j = Math.floor(((event.clientX - rect.left) / rect.width) * L);
  const i = Math.floor(((event.clientY - rect.top) / rect.height) * L);
  return i >= 0 && j >= 0 && i < L && j < L ? { i, j } : null;
}

function same(a, b) {
  return a && b && a.kind === b.kind && a.i === b.i && a.j === b.j;
}

function pointPixel(i, j) {
  const hover = { kind: "pixel", i, j };
  if (same(hover, state.hover)) return;
  state.hover = hover;
  const k = key(i, j);
  if (state.reach.has(k)) {
    describePixel(i, j);
    redraw();
    return;
  }
  redraw();
  geometryChannel.send("pixel", async () => {
    const answer = await api("GET", `/api/cone/pixel?i=${i}&j=${j}`);
    state.reach.set(k, answer.latents);
    if (same(hover, state.hover)) {
      describePixel(i, j);
      redraw();
    }
  });
}

function describePixel(i, j) {
  const reach = state.reach.get(key(i, j));
  const counts = state.info.levels.map(() => 0);
  reach.forEach((row, a) =>
    row.forEach((hit, b) => {
      if (hit) counts[state.info.level_map[a][b]] += 1;
    }),
  );
  const parts = counts.map((n, h) => `${n} of level ${h}`).reverse();
  $("image-hint").textContent =
    `Pixel (${i}, ${j}) depends on the latents at ${parts.join(", ")} positions ` +
    "(lit up in the latent map): coarse latents reach it from afar, fine ones only from near by.";
}

let fieldTimer = null;

function pointLatent(i, j) {
  const hover = { kind: "latent", i, j };
  if (same(hover, state.hover)) return;
  state.hover = hover;
  const k = key(i, j);
  const d = state.info.levels[state.info.level_map[i][j]];
  $("map-hint").textContent =
    `Position (${i}, ${j}): ${plural(state.info.channels, "latent")} of ` +
    `${levelTitle(d).toLowerCase()}. On the image: where they act (dark: no influence).`;
  redraw();
  if (!state.cones.has(k)) {
    geometryChannel.send("latent", async () => {
      const answer = await api("GET", `/api/cone/latent?i=${i}&j=${j}`);
      state.cones.set(k, answer.pixels);
      if (same(hover, state.hover)) redraw();
    });
  }
  clearTimeout(fieldTimer);
  if (state.fields.has(k)) return;
  // wait until the pointer rests: a receptive field costs a few decodes
  fieldTimer = setTimeout(() => {
    if (!same(hover, state.hover)) return;
    modelChannel.send("field", async () => {
      if (!same(hover, state.hover) || state.fields.has(k)) return;
      const answer = await api("GET", `/api/receptive?i=${i}&j=${j}`);
      state.fields.set(k, answer.field);
      if (same(hover, state.hover)) redraw();
    });
  }, 150);
}

function clearHover() {
  state.hover = null;
  clearTimeout(fieldTimer);
  redraw();
}

// --- your images ------------------------------------------------------------------------

function target() {
  return document.querySelector('input[name="target"]:checked').value;
}

function afterLoad(into) {
  return async (answer) => {
    if (into === "current") await applyState(answer);
    refreshViews();
  };
}

function buildThumbs() {
  const images = state.info.images;
  const box = $("thumbs");
  images.shown.forEach((name, index) => {
    const img = document.createElement("img");
    img.src = `/api/thumbs/${index}`;
    img.alt = name;
    img.title = name;
    img.addEventListener("click", () => chooseImage(index, img));
    box.appendChild(img);
  });
  const n = images.shown.length;
  const which =
    n < images.total ? `The first ${n} of the ${images.total.toLocaleString()}` : `The ${n}`;
  const click = "Click one to encode it (framed: the image; dashed: the partner).";
  $("thumbs-note").textContent = n
    ? `${which} images of --images. ${click}`
    : "Start the tool with --images FOLDER to pick images here.";
  const L = state.info.size;
  const mode = state.info.channels === 3 ? "RGB" : "grey";
  $("drop-rule").textContent =
    ` · ${L}×${L} ${mode}, at most ${state.info.max_upload / 2 ** 20} MB`;
}

function chooseImage(index, img) {
  setStatus("");
  const into = target();
  modelChannel.send("choose", async () => {
    const body = { index, target: into, resize: $("resize").checked };
    await afterLoad(into)(await api("POST", "/api/choose", body));
    const mark = into === "current" ? "chosen" : "partner";
    document.querySelectorAll(".thumbs img").forEach((t) => t.classList.toggle(mark, t === img));
  });
}

function uploadFile(file) {
  setStatus("");
  if (file.size > state.info.max_upload) {
    showError(`${file.name} is larger than ${state.info.max_upload / 2 ** 20} MB`);
    return;
  }
  const into = target();
  const name = encodeURIComponent(file.name);
  const query = `target=${into}&resize=${$("resize").checked}&name=${name}`;
  modelChannel.send("upload", async () => {
    await afterLoad(into)(await api("POST", `/api/upload?${query}`, file, file.type));
    setStatus(`encoded ${file.name}`);
  });
}

function setupDrop() {
  const drop = $("drop");
  document.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) uploadFile(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => {
    if (e.target.files.length) uploadFile(e.target.files[0]);
    e.target.value = "";
  });
}

// --- start ------------------------------------------------------------------------------

function describeModel(info) {
  const C = info.channels;
  const L = info.size;
  const parts = [
    info.about.checkpoint,
    `${L}×${L} ${C === 3 ? "RGB" : "grey"}`,
    `${info.levels.length} levels`,
    `${(C * L * L).toLocaleString()} latents`,
    info.about.device,
  ];
  $("about").textContent = parts.filter(Boolean).join(" · ");
}

function buildLegend(info) {
  const box = $("legend");
  for (const d of [...info.levels].reverse()) {
    box.insertAdjacentHTML(
      "beforeend",
      `<span class="swatch" style="background:${colour(d.level)}"></span>` +
        `<span>${levelTitle(d)}</span><span class="count">${d.positions} positions</span>`,
    );
  }
}

function setupPointing() {
  const overlay = $("overlay");
  overlay.addEventListener("mousemove", (e) => {
    const cell = cellAt(e, overlay);
    if (cell) pointPixel(cell.i, cell.j);
  });
  overlay.addEventListener("mouseleave", clearHover);
  const map = $("latent-map");
  map.addEventListener("mousemove", (e) => {
    const cell = cellAt(e, map);
    if (cell) pointLatent(cell.i, cell.j);
  });
  map.addEventListener("mouseleave", clearHover);
  $("show-levels").addEventListener("change", drawOverlay);
}

function setupButtons() {
  $("new-sample").addEventListener("click", () => change("POST", "/api/sample"));
  $("swap").addEventListener("click", () => change("POST", "/api/swap"));
  $("use-mix").addEventListener("click", () =>
    change("POST", "/api/mix/use", { scale: state.cut }),
  );
  $("second-sample").addEventListener("click", () =>
    modelChannel.send(`click-${++clicks}`, async () => {
      await api("POST", "/api/second/sample");
      await loadMix();
    }),
  );
}

async function start() {
  const info = await api("GET", "/api/info");
  state.info = info;
  state.level = info.levels.length - 1;
  describeModel(info);
  buildLegend(info);
  buildScales();
  buildCuts();
  buildThumbs();
  setupPointing();
  setupButtons();
  setupDrop();
  selectLevel(state.level);
  redraw();
  modelChannel.send("state", async () => applyState(await api("GET", "/api/state")));
  modelChannel.send("mix", loadMix);
  modelChannel.send("ready", async () => {
    window.rgflowReady = true;
  });
}

start().catch(showError);
