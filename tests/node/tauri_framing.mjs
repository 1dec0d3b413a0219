// Reads the sidecar's stdout exactly the way Tauri v2's shell plugin does: split at "\n" (kept) and
// also at a bare "\r", then decode each line as strict UTF-8 (an invalid line would become an error
// event and be lost). Runs a conversation and fails (exit 1) if any message is split, merged or lost.
//
// usage: node tauri_framing.mjs <audio_path> <command> [args...]
import { spawn } from "node:child_process";

const [audioPath, cmd, ...args] = process.argv.slice(2);
const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "inherit"] });
const decoder = new TextDecoder("utf-8", { fatal: true });
const events = [];
let pending = Buffer.alloc(0);

function emitLine(buf) {
  let text;
  try {
    text = decoder.decode(buf);
  } catch (e) {
    fail(`a line is not valid UTF-8 (Tauri would drop it): ${buf.toString("hex").slice(0, 80)}`);
  }
  const line = text.replace(/\r?\n$/, "");
  if (line.trim() === "") return; // an app skips empty lines
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    fail(`a line is not one JSON message (split or merged?): ${line.slice(0, 200)}`);
  }
  events.push(msg);
  for (const w of waiters.splice(0)) w();
}

child.stdout.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  for (;;) {
    const nl = pending.indexOf(0x0a);
    const cr = pending.indexOf(0x0d);
    let cut = -1;
    if (cr !== -1 && (nl === -1 || cr < nl) && cr + 1 < pending.length && pending[cr + 1] !== 0x0a) cut = cr;
    else if (nl !== -1) cut = nl;
    if (cut === -1) break;
    emitLine(pending.subarray(0, cut + 1));
    pending = pending.subarray(cut + 1);
  }
});

const waiters = [];
function waitFor(pred, ms = 120000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout waiting; last: ${JSON.stringify(events.slice(-3))}`)), ms);
    const check = () => {
      const hit = events.find(pred);
      if (hit) {
        clearTimeout(timer);
        resolve(hit);
      } else waiters.push(check);
    };
    check();
  });
}
function fail(why) {
  console.error("FAIL:", why);
  child.kill("SIGKILL");
  process.exit(1);
}
let nextId = 1;
function request(method, params) {
  const id = nextId++;
  const msg = { jsonrpc: "2.0", id, method };
  if (params !== undefined) msg.params = params;
  child.stdin.write(JSON.stringify(msg) + "\n");
  return id;
}
const response = (id) => waitFor((m) => m.id === id && !("method" in m));

try {
  await waitFor((m) => m.method === "ready");
  const h = await response(request("health"));
  if (h.result.status !== "ok") fail("health not ok");

  const missing = await response(request("transcribe", { audio_path: "C:/Users/Jürgen/Aufnahmen/Besprechung März 🎙.opus" }));
  if (missing.error?.code !== -32001 || !missing.error.message.includes("Besprechung März 🎙")) fail("non-ASCII path error mangled");

  const t = request("transcribe", { audio_path: audioPath, precision: "fp32", max_new_tokens: 24, context: "Grüße aus München — «Zürich» 東京" });
  const done = await response(t);
  if (done.result?.status !== "success") fail(`transcribe failed: ${JSON.stringify(done)}`);
  const progress = events.filter((m) => m.method === "progress" && m.params.id === t);
  if (progress.length < 3) fail("too few progress notifications");
  const segs = events.filter((m) => m.method === "segment" && m.params.id === t);
  if (segs.length !== done.result.segments.length) fail("segment notifications do not match the result");

  const c = request("transcribe", { audio_path: audioPath, precision: "fp32", max_new_tokens: 100000 });
  await waitFor((m) => m.method === "progress" && m.params.id === c && m.params.stage === "encoding");
  const cancelled = await response(request("cancel", { id: c }));
  const cres = await response(c);
  if (cres.error?.code !== -32800) fail(`cancel: expected -32800, got ${JSON.stringify(cres)} (${JSON.stringify(cancelled)})`);

  const s = await response(request("shutdown"));
  if (s.result.status !== "ok") fail("shutdown not ok");
  const code = await new Promise((r) => child.on("exit", r));
  if (code !== 0) fail(`exit code ${code}`);
  const ids = events.filter((m) => "id" in m && !("method" in m)).map((m) => m.id);
  if (new Set(ids).size !== ids.length) fail("a request was answered twice");
  console.log(`ok: ${events.length} messages, ${ids.length} responses, every line one valid UTF-8 JSON message`);
  process.exit(0);
} catch (e) {
  fail(e.message);
}
