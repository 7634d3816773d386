// astra play client: sends held keys and mouse motion, shows streamed frames at a steady pace.
"use strict";
const $ = (id) => document.getElementById(id);
const held = new Set();
let socket = null, mouseDx = 0, mouseDy = 0, frameCount = 0;
const queues = { model: [], sim: [] };

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}
function sendInput() {
  send({ type: "input", keys: Array.from(held), mouse_dx: mouseDx, mouse_dy: mouseDy });
  mouseDx = 0; mouseDy = 0;
}
function drawTo(canvasId, b64) {
  const image = new Image();
  image.onload = () => {
    const canvas = $(canvasId);
    if (canvas.width !== image.width) { canvas.width = image.width; canvas.height = image.height; }
    canvas.getContext("2d").drawImage(image, 0, 0);
  };
  image.src = "data:image/jpeg;base64," + b64;
}
function showKeys() {
  document.querySelectorAll("#keys kbd").forEach((el) => el.classList.toggle("on", held.has(el.dataset.k)));
}
async function readImage() {
  const file = $("image").files[0];
  if (!file) return null;
  return await new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.readAsDataURL(file);
  });
}
async function start() {
  $("error").textContent = "";
  const image = await readImage();
  const message = { type: "start", world: $("world").value, seed: parseInt($("seed").value || "0", 10),
                    side_by_side: $("sbs").checked, image };
  if (socket) socket.close();
  const ws = new WebSocket(`ws://${location.host}/ws`);
  socket = ws;
  ws.onopen = () => send(message);
  ws.onmessage = (event) => {
    if (ws !== socket) return;  // a connection replaced by a newer Start
    const msg = JSON.parse(event.data);
    if (msg.type === "started") {
      queues.model = []; queues.sim = []; frameCount = 0;
      drawTo("model", msg.first); drawTo("sim", msg.first);
      $("simview").style.display = $("sbs").checked ? "" : "none";
      document.body.dataset.state = "started";
    } else if (msg.type === "frames") {
      queues.model.push(...msg.model);
      if (msg.sim) queues.sim.push(...msg.sim);
      $("fps").textContent = msg.fps.toFixed(1);
      $("step").textContent = msg.step_ms.toFixed(0);
      if (msg.latency_ms !== null) $("latency").textContent = msg.latency_ms.toFixed(0);
    } else if (msg.type === "error") {
      $("error").textContent = msg.message;
    }
  };
  ws.onclose = (event) => {
    if (ws !== socket) return;
    document.body.dataset.state = "closed";
    if (!$("error").textContent) $("error").textContent = `connection to the server closed (code ${event.code}); press Start to reconnect`;
  };
}
// Show queued frames at a steady pace (drops the backlog if we fall behind).
setInterval(() => {
  for (const name of ["model", "sim"]) {
    const queue = queues[name];
    if (queue.length > 8) queue.splice(0, queue.length - 2);
    if (queue.length) { drawTo(name, queue.shift()); if (name === "model") $("count").textContent = ++frameCount; }
  }
}, 50);
window.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
  const key = event.key.toLowerCase();
  if (!held.has(key)) { held.add(key); showKeys(); sendInput(); }
  if (key.startsWith("arrow") || key === " ") event.preventDefault();
});
window.addEventListener("keyup", (event) => { held.delete(event.key.toLowerCase()); showKeys(); sendInput(); });
window.addEventListener("blur", () => { held.clear(); showKeys(); sendInput(); });
for (const id of ["model", "sim"]) $(id).addEventListener("click", () => $(id).requestPointerLock());
document.addEventListener("mousemove", (event) => {
  if (document.pointerLockElement) { mouseDx += event.movementX; mouseDy += event.movementY; }
});
setInterval(() => { if (mouseDx || mouseDy) sendInput(); }, 50);
$("start").addEventListener("click", start);
$("reset").addEventListener("click", () => {
  if (socket && socket.readyState === WebSocket.OPEN) send({ type: "reset" });
  else $("error").textContent = "not connected: press Start first";
});
