// The drawing page of `ood serve`. No build step and nothing from a CDN: it works offline.
//
// The drawing is sent as a PNG of the whole canvas, white strokes on black; the server
// prepares it as MNIST was prepared (crop to the ink, scale into 20x20, centre by mass in
// 28x28), so the page does no image processing of its own.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const statusLine = document.getElementById("status");
let drawing = false;
let hasInk = false;
// Only the answer to the latest request is shown (an older one may arrive after it).
let sequence = 0;

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
}

// Pointer position in canvas pixels (the canvas may be shown smaller than its resolution).
function position(event) {
  const r = pad.getBoundingClientRect();
  return [(event.clientX - r.left) * pad.width / r.width, (event.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  const [x, y] = position(event);
  // Thick round strokes: an MNIST stroke is about 2-3 of 28 pixels wide.
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = pad.width / 12;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.arc(x, y, ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(x, y);
  hasInk = true;
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  event.preventDefault();
  // Coalesced events keep fast strokes smooth where the browser merges them.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of (events.length ? events : [event])) {
    const [x, y] = position(e);
    ctx.lineTo(x, y);
  }
  ctx.stroke();
  const [x, y] = position(event);
  ctx.beginPath();
  ctx.moveTo(x, y);
});

function endStroke(event) {
  if (!drawing) return;
  drawing = false;
  if (pad.hasPointerCapture(event.pointerId)) pad.releasePointerCapture(event.pointerId);
  sendDrawing();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  sequence++;
  showEmpty();
  setStatus("Draw with the mouse or a finger.");
});

document.getElementById("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  // Show the upload on the pad when the browser can display it (PGM it cannot).
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    clearPad();
    const s = Math.min(pad.width / img.width, pad.height / img.height);
    const w = img.width * s, h = img.height * s;
    ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  img.onerror = () => URL.revokeObjectURL(url);
  img.src = url;
  // The file itself goes to the server, not the pad's copy of it.
  send(file, file.type || "application/octet-stream", file.name);
  event.target.value = "";
});

function sendDrawing() {
  if (!hasInk) return;
  pad.toBlob((blob) => send(blob, "image/png", "the drawing"), "image/png");
}

async function send(body, type, what) {
  const mine = ++sequence;
  setStatus("Asking the model about " + what + "…");
  let answer;
  try {
    const response = await fetch("/v1/predict", { method: "POST", headers: { "Content-Type": type }, body });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || ("HTTP " + response.status));
  } catch (e) {
    if (mine !== sequence) return;
    setStatus(String(e.message || e), true);
    document.body.dataset.answers = String(Number(document.body.dataset.answers) + 1);
    document.body.dataset.error = String(e.message || e);
    return;
  }
  if (mine !== sequence) return;
  show(answer);
  setStatus("");
}

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", !!isError);
}

function showEmpty() {
  const v = document.getElementById("verdict");
  v.textContent = "–";
  v.className = "big";
  v.dataset.decision = "";
  document.getElementById("guess").textContent = "";
  document.getElementById("input").removeAttribute("src");
  document.getElementById("recon").removeAttribute("src");
  document.getElementById("bars").replaceChildren();
  document.getElementById("scores").replaceChildren();
}

function show(a) {
  const v = document.getElementById("verdict");
  v.textContent = a.class === null ? "unknown" : String(a.class);
  v.className = "big " + a.decision;
  v.dataset.decision = a.decision;
  v.dataset.class = a.class === null ? "" : String(a.class);
  document.getElementById("guess").textContent =
    a.class === null ? "best guess " + a.best_guess + ", not accepted" : "accepted";
  document.getElementById("input").src = "data:image/png;base64," + a.input_png;
  document.getElementById("recon").src = "data:image/png;base64," + a.reconstruction_png;

  const bars = document.getElementById("bars");
  bars.replaceChildren(...a.probabilities.map((p) => {
    const row = div("row" + (p.class === a.best_guess ? " best" : "") + (a.class === null ? " rejected" : ""));
    row.dataset.class = String(p.class);
    const track = div("track");
    const fill = div("fill");
    fill.style.width = (100 * p.probability).toFixed(1) + "%";
    track.append(fill);
    row.append(text("span", String(p.class)), track, text("span", (100 * p.probability).toFixed(1) + "%", "value"));
    return row;
  }));

  const scores = document.getElementById("scores");
  scores.replaceChildren(...a.scores.map(gauge));
  document.getElementById("rule").textContent = "Rule: " + a.rule;
  document.body.dataset.answers = String(Number(document.body.dataset.answers) + 1);
  delete document.body.dataset.error;
}

// A score with a threshold as a bar with the threshold marked; one without (a member of the
// combined score) as its value and p-value.
function gauge(part) {
  const box = div(part.threshold === null ? "part" : "gauge");
  if (part.threshold === null) {
    const limit = part.p_limit === undefined || part.p_limit === null ? "" : ", unknown below " + fmt(part.p_limit);
    box.textContent = part.name + ": " + fmt(part.value) + (part.p_value === null ? "" : " (p = " + fmt(part.p_value) + limit + ")");
    return box;
  }
  const flagged = part.flagged_above ? part.value > part.threshold : part.value < part.threshold;
  const side = part.flagged_above ? "above" : "below";
  box.append(text("div", part.name + " " + fmt(part.value) + " — unknown " + side + " " + fmt(part.threshold) +
    (flagged ? " (flagged)" : " (passes)"), "label"));
  const top = Math.max(2 * Math.abs(part.threshold), 1.1 * Math.abs(part.value), 1e-9);
  const track = div("track");
  const fill = div("fill" + (flagged ? " flagged" : ""));
  fill.style.width = Math.min(100, 100 * Math.max(0, part.value) / top).toFixed(1) + "%";
  const mark = div("threshold");
  mark.style.left = (100 * Math.max(0, part.threshold) / top).toFixed(1) + "%";
  track.append(fill, mark);
  box.append(track);
  box.dataset.flagged = String(flagged);
  return box;
}

function fmt(x) {
  return Math.abs(x) >= 100 ? x.toFixed(1) : Math.abs(x) >= 0.01 ? x.toFixed(4) : x.toExponential(2);
}

function div(cls) {
  const d = document.createElement("div");
  d.className = cls;
  return d;
}

function text(tag, s, cls) {
  const e = document.createElement(tag);
  e.textContent = s;
  if (cls) e.className = cls;
  return e;
}

clearPad();
