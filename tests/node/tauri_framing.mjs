// Line-framing compatibility test: talks to the engine through a stand-in for Tauri v2's shell plugin
// (tauri_shell.mjs: stdout split like `tauri::utils::io::read_line` -- at "\n", else at "\r" -- and every
// line decoded as strict UTF-8, so an invalid line would become an `error` event and be lost) with the
// client from docs/TAURI.md (vibevoice_client.mjs), and proves that no message is split, merged or lost.
//
//   node tests/node/tauri_framing.mjs --audio CLIP [--expect TEXT]... [--timeout-s 150] [--max-gap-ms 5000] \
//        -- COMMAND [ARGS...]          run a conversation with the engine started by COMMAND
//   node tests/node/tauri_framing.mjs --self-test
//                                      check the stand-in's line splitting against Tauri's rules
//
// The conversation: health; a missing file with a ~24 KB non-ASCII name (a ~50 KB error line);
// transcribe a copy of CLIP at a path with spaces and non-ASCII characters
// (progress + segment notifications with non-ASCII text, a health while it runs); a second transcribe
// cancelled after its first segment (answered -32800 exactly once); a batch; shutdown, exit code 0.
// Exit status 0 and a last line starting with "ok:" on success; 1 and "FAIL: ..." otherwise.
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isDeepStrictEqual } from "node:util";

import { Command, TauriLineSplitter, lineToEvent, newTally, tally } from "./tauri_shell.mjs";
import { RpcError, VibeVoiceEngine, withTimeout } from "./vibevoice_client.mjs";

const STAGES = ["queued", "loading_audio", "loading_model", "encoding", "transcribing", "finalizing"];

class Failure extends Error {}
function check(cond, why) {
  if (!cond) throw new Failure(why);
}

function parseArgs(argv) {
  const opts = { expect: [], timeoutS: 150, maxGapMs: 5000, selfTest: false, audio: null, command: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--") {
      opts.command = argv.slice(i + 1);
      break;
    } else if (a === "--self-test") opts.selfTest = true;
    else if (a === "--audio") opts.audio = argv[++i];
    else if (a === "--expect") opts.expect.push(argv[++i]);
    else if (a === "--timeout-s") opts.timeoutS = Number(argv[++i]);
    else if (a === "--max-gap-ms") opts.maxGapMs = Number(argv[++i]);
    else throw new Failure(`unknown argument ${a}`);
  }
  return opts;
}

/**
 * The framing proof over what JS received (`wire`: the stdout event payloads) and what the pipe carried
 * (`raw`): no line lost to a UTF-8 error, every line one JSON message ending in its only "\n", as many
 * "\n" bytes as messages, no "\r" at all; and every id in `asked` answered exactly once, nothing else
 * answered. Returns the messages (batch answers flattened).
 */
function verifyWire(wire, raw, asked) {
  check(raw.errorEvents.length === 0, `${raw.errorEvents.length} stdout line(s) not valid UTF-8 (lost in Tauri)`);
  const values = wire.map((payload, i) => {
    check(payload.endsWith("\n"), `line ${i} does not end in \\n (split, or cut at EOF): ${JSON.stringify(payload.slice(-80))}`);
    check(!/[\r\n]/.test(payload.slice(0, -1)), `line ${i} holds a \\r or a second \\n: ${JSON.stringify(payload.slice(0, 120))}`);
    let value;
    try {
      value = JSON.parse(payload);
    } catch {
      throw new Failure(`line ${i} is not exactly one JSON value (split or merged): ${payload.slice(0, 200)}`);
    }
    check(value !== null && typeof value === "object", `line ${i} is not a message: ${payload.slice(0, 100)}`);
    return value;
  });
  check(raw.newlines === wire.length, `${raw.newlines} \\n bytes but ${wire.length} messages`);
  check(raw.carriageReturns === 0, `${raw.carriageReturns} \\r bytes on stdout`);
  check(raw.lastByte === 0x0a, "stdout does not end with \\n");
  const all = values.flatMap((m) => (Array.isArray(m) ? m : [m]));
  const counts = new Map();
  for (const m of all) if (!("method" in m)) counts.set(m.id, (counts.get(m.id) ?? 0) + 1);
  for (const id of asked) check(counts.get(id) === 1, `request ${JSON.stringify(id)} answered ${counts.get(id) ?? 0} times`);
  const extra = [...counts.keys()].filter((k) => !asked.includes(k));
  check(extra.length === 0, `answers for ids never asked: ${JSON.stringify(extra)}`);
  return all;
}

// --- self-test of the splitter ---------------------------------------------------------------------

function split(chunks) {
  const events = [];
  const s = new TauriLineSplitter((bytes) => events.push(lineToEvent("Stdout", bytes)));
  for (const c of chunks) s.push(typeof c === "string" ? Buffer.from(c, "utf8") : c);
  s.end();
  return events.map((e) => (e.event === "Stdout" ? e.payload : { error: e.payload }));
}

function selfTest() {
  const x = (n) => "x".repeat(n);
  const cases = [
    ["lines keep their \\n", ["a\nb\n"], ["a\n", "b\n"]],
    ["\\r\\n stays one line", ["a\r\n"], ["a\r\n"]],
    ["a bare \\r ends a line when no \\n is buffered", ["10%\r20%\r"], ["10%\r", "20%\r"]],
    ["a \\r followed by a buffered \\n does not", ["a\rb\n"], ["a\rb\n"]],
    ["\\r\\n split across two 8 KiB reads", [x(8191) + "\r\n"], [x(8191) + "\r", "\n"]],
    ["a line longer than the buffer", [x(20000) + "\n"], [x(20000) + "\n"]],
    ["a character split across pipe reads", [Buffer.from([0x4d, 0xc3]), Buffer.from([0xbc, 0x0a])], ["Mü\n"]],
    ["invalid UTF-8 is an error event", [Buffer.from([0xff, 0xfe, 0x0a]), "ok\n"], [{ error: "invalid utf-8 sequence" }, "ok\n"]],
    ["a BOM is kept", [Buffer.from([0xef, 0xbb, 0xbf, 0x7b, 0x7d, 0x0a])], ["\ufeff{}\n"]],
    ["EOF without a line end", ["a\nb"], ["a\n", "b"]],
  ];
  for (const [name, chunks, want] of cases) {
    const got = split(chunks);
    check(isDeepStrictEqual(got, want), `self-test "${name}": got ${JSON.stringify(got).slice(0, 200)}`);
  }
  // the framing proof must catch each way a line can be split, merged or lost
  const ready = '{"jsonrpc":"2.0","method":"ready","params":{}}\n';
  const faults = [
    ["a good stream", [ready, '{"jsonrpc":"2.0","id":1,"result":{}}\n'], null],
    ["two messages merged", [ready + '{"jsonrpc":"2.0","id":1,"result":{}}{"jsonrpc":"2.0","id":2,"result":{}}\n'], "not exactly one JSON value"],
    ["a message ended by a bare \\r", [ready, '{"jsonrpc":"2.0","id":1,"result":{}}\r'], "does not end in"],
    ["a \\r inside a line", [ready, '{"jsonrpc":"2.0","id":1,"result":"a\rb"}\n'], "holds a \\r"],
    ["a line that is not UTF-8", [ready, Buffer.from('{"jsonrpc":"2.0","id":1,"result":"\xff"}\n', "latin1")], "not valid UTF-8"],
    ["an answer given twice", [ready, '{"jsonrpc":"2.0","id":1,"result":{}}\n'.repeat(2)], "answered 2 times"],
    ["an answer lost", [ready], "answered 0 times"],
    ["a message cut at EOF", [ready, '{"jsonrpc":"2.0","id":1,"result":{}}'], "does not end in"],
  ];
  for (const [name, chunks, want] of faults) {
    const wire = [];
    const raw = newTally();
    const s = new TauriLineSplitter((bytes) => {
      const ev = lineToEvent("Stdout", bytes);
      if (ev.event === "Stdout") wire.push(ev.payload);
      else raw.errorEvents.push(bytes);
    });
    for (const c of chunks) {
      const b = typeof c === "string" ? Buffer.from(c, "utf8") : c;
      tally(raw, b);
      s.push(b);
    }
    s.end();
    let got = null;
    try {
      verifyWire(wire, raw, [1]);
    } catch (err) {
      if (!(err instanceof Failure)) throw err;
      got = err.message;
    }
    check(want === null ? got === null : got?.includes(want), `self-test fault "${name}": verdict ${JSON.stringify(got)}`);
  }
  console.log(`ok: self-test, ${cases.length} splitter cases, ${faults.length} framing verdicts`);
}

// --- the conversation ------------------------------------------------------------------------------

async function conversation(opts) {
  check(opts.audio && opts.command.length > 0, "usage: --audio CLIP -- COMMAND [ARGS...]");
  const started = Date.now();
  const work = mkdtempSync(join(tmpdir(), "vibevoice-tauri-"));
  const dir = join(work, "Müller Besprechung 🎙");
  mkdirSync(dir);
  const clip = join(dir, "aufnahme 1.opus");
  copyFileSync(opts.audio, clip);

  const command = Command.create(opts.command[0], opts.command.slice(1), { cwd: process.cwd() });
  active = command;
  const wire = []; // every stdout event payload, as delivered to JS
  const waiters = [];
  const stderrTail = [];
  const problems = [];
  const times = new Map(); // request id -> [ms of each message about it]
  command.stdout.on("data", (payload) => {
    wire.push(payload);
    for (const w of waiters.splice(0)) w();
  });

  const engine = new VibeVoiceEngine(command);
  const sent = [];
  const send = engine.send.bind(engine);
  engine.send = (...a) => {
    const r = send(...a);
    sent.push(r.id);
    return r;
  };
  const progress = new Map();
  const segments = new Map();
  const note = (map, params) => {
    if (!map.has(params.id)) map.set(params.id, []);
    map.get(params.id).push(params);
    if (!times.has(params.id)) times.set(params.id, []);
    times.get(params.id).push(Date.now());
  };
  engine.onProgress = (p) => note(progress, p);
  engine.onSegment = (p) => note(segments, p);
  engine.onLog = (line) => {
    stderrTail.push(line);
    if (stderrTail.length > 60) stderrTail.shift();
  };
  engine.onProblem = (what) => problems.push(what);

  const parse = (p) => {
    try {
      return JSON.parse(p);
    } catch {
      return undefined; // reported by the framing checks
    }
  };
  const messages = () => wire.map(parse);
  const waitWire = (pred, ms, what) =>
    withTimeout(
      new Promise((resolve) => {
        const look = () => {
          const hit = messages().find((m) => m !== undefined && pred(m));
          if (hit !== undefined) resolve(hit);
          else waiters.push(look);
        };
        look();
      }),
      ms,
      what,
    );
  const firstSegment = (id, ms) =>
    waitWire((m) => m.method === "segment" && m.params.id === id, ms, `a segment for request ${id}`);

  const summary = {};
  try {
    // ready, health
    const ready = await engine.start({ readyTimeoutMs: 60_000 });
    check(ready.pid === command.child.pid, `ready.pid ${ready.pid} is not the child's pid ${command.child.pid}`);
    check(JSON.parse(wire[0]).method === "ready", "the first line is not the ready notification");
    const health = await engine.health();
    check(health.status === "ok" && typeof health.model_loaded === "boolean", `health: ${JSON.stringify(health)}`);

    // 0. a missing file with a long non-ASCII name: its -32001 answer is a ~50 KB line, so lines cross
    //    the 8 KiB read boundary with multi-byte characters cut in two; the path comes back unmangled
    const missing = `C:/Users/Jürgen/Aufnahmen/${"Besprechung März 🎙 ".repeat(1000)}.opus`;
    const notFound = await engine.transcribe(missing).result.then(
      (r) => r,
      (e) => e,
    );
    check(notFound instanceof RpcError && notFound.code === -32001, `missing file answered ${notFound}`);
    check(notFound.data?.path === missing, "the missing file's path came back changed");
    check(notFound.message.includes("Besprechung März 🎙"), "the -32001 message lost the path");

    // 1. transcribe a file at a non-ASCII path with spaces; ask health while it runs
    let t = Date.now();
    const job = engine.transcribe(
      clip,
      { precision: "fp32", language: "auto", context: "Grüße aus München — «Zürich» 東京", hotwords: ["Müller", "Besprechung"] },
      { inactivityMs: 30_000 },
    );
    await firstSegment(job.id, 90_000);
    const h0 = Date.now();
    const busy = await engine.health();
    summary.healthWhileBusyMs = Date.now() - h0;
    check(busy.status === "ok", "health while transcribing failed");
    check(summary.healthWhileBusyMs < 5_000, `health took ${summary.healthWhileBusyMs} ms while transcribing`);
    const result = await job.result;
    summary.transcribeMs = Date.now() - t;
    check(result.status === "success", `transcribe: ${JSON.stringify(result).slice(0, 300)}`);
    const segs = segments.get(job.id) ?? [];
    check(segs.length > 0, "no segment notifications");
    check(
      segs.every((s, i) => s.index === i),
      `segment indices not contiguous: ${segs.map((s) => s.index)}`,
    );
    check(
      isDeepStrictEqual(
        segs.map((s) => s.segment),
        result.segments,
      ),
      "the segment notifications differ from result.segments",
    );
    const text = segs.map((s) => s.segment.text).join("\n");
    check(/[^\x00-\x7f]/.test(text), "no non-ASCII text in the segments");
    check(/[\u{10000}-\u{10ffff}]/u.test(text), "no 4-byte UTF-8 character (emoji) in the segments");
    for (const want of opts.expect) check(text.includes(want), `segment text lacks ${JSON.stringify(want)}: ${text}`);
    const prog = progress.get(job.id) ?? [];
    check(prog.length >= 3 && prog[0].stage === "queued", `progress: ${JSON.stringify(prog.slice(0, 3))}`);
    for (let i = 1; i < prog.length; i++) {
      const [a, b] = [prog[i - 1], prog[i]];
      const [ia, ib] = [STAGES.indexOf(a.stage), STAGES.indexOf(b.stage)];
      check(ib >= 0, `unknown stage ${b.stage}`);
      check(ib > ia || (ib === ia && b.progress >= a.progress), `progress went back: ${JSON.stringify([a, b])}`);
    }
    const at = times.get(job.id);
    summary.maxGapMs = Math.max(...at.slice(1).map((v, i) => v - at[i]), Date.now() - at[at.length - 1]);
    check(summary.maxGapMs <= opts.maxGapMs, `${summary.maxGapMs} ms without a progress heartbeat`);
    summary.segments = segs.length;
    summary.progress = prog.length;

    // 2. a transcribe cancelled mid-generation, answered -32800 exactly once
    t = Date.now();
    const doomed = engine.transcribe(clip, { precision: "fp32" }, { inactivityMs: 30_000 });
    await firstSegment(doomed.id, 90_000);
    const cancelled = await engine.cancel(doomed.id);
    check(cancelled.cancelled === true, `cancel: ${JSON.stringify(cancelled)}`);
    const outcome = await doomed.result.then(
      (r) => r,
      (e) => e,
    );
    summary.cancelMs = Date.now() - t;
    check(outcome instanceof RpcError && outcome.isCancelled, `cancelled transcribe answered ${outcome}`);
    const soFar = (segments.get(doomed.id) ?? []).map((s) => s.segment);
    check(soFar.length >= 1, "no segment before the cancel");
    check(isDeepStrictEqual(outcome.data?.segments, soFar), "-32800 data.segments differ from the segments streamed");
    engine.notify("$/cancelRequest", { id: doomed.id }); // too late: must not be answered
    const again = await engine.cancel(doomed.id);
    check(again.cancelled === false, `second cancel: ${JSON.stringify(again)}`);

    // 3. a batch: two requests, a notification, an unknown method -> one array of three answers
    const batch = [
      { jsonrpc: "2.0", id: "batch:1", method: "health" },
      { jsonrpc: "2.0", method: "$/cancelRequest", params: { id: "batch:none" } },
      { jsonrpc: "2.0", id: "batch:ünï 2", method: "no_such_method" },
      { jsonrpc: "2.0", id: "batch:3", method: "cancel", params: { id: "batch:none" } },
    ];
    await command.child.write(JSON.stringify(batch) + "\n");
    const answers = await waitWire(Array.isArray, 30_000, "the batch answer");
    const byId = Object.fromEntries(answers.map((m) => [m.id, m]));
    check(answers.length === 3 && Object.keys(byId).length === 3, `batch answer: ${JSON.stringify(answers)}`);
    check(byId["batch:1"]?.result?.status === "ok", "batch health");
    check(byId["batch:ünï 2"]?.error?.code === -32601, "batch unknown method");
    check(byId["batch:3"]?.result?.cancelled === false, "batch cancel");

    // 4. shutdown the way the app does on exit: request, wait, kill only if it does not go
    t = Date.now();
    const exit = await withTimeout(engine.shutdown({ graceMs: 10_000 }), 25_000, "shutdown");
    summary.shutdownMs = Date.now() - t;
    check(!command.child.killed, "the engine had to be killed after shutdown");
    check(exit?.code === 0, `exit status ${JSON.stringify(exit)}`);

    // --- framing, and every request answered exactly once -------------------------------------------
    const asked = [...sent, "batch:1", "batch:ünï 2", "batch:3"];
    const all = verifyWire(wire, command.raw, asked);
    const unexpected = problems.filter((p) => !/^response for unknown id: \{"jsonrpc":"2.0","id":"batch:/.test(p));
    check(unexpected.length === 0, `client problems: ${unexpected.join(" | ")}`);
    const cancelAnswers = all.filter((m) => m.id === doomed.id);
    check(cancelAnswers.length === 1 && cancelAnswers[0].error?.code === -32800, "the cancelled request's answers");

    const raw = command.raw;
    console.log(
      `ok: ${wire.length} messages in ${raw.stdoutBytes} bytes (${raw.newlines} \\n, 0 \\r, 0 invalid UTF-8), ` +
        `${asked.length} requests each answered once; ${summary.segments} segments + ${summary.progress} progress ` +
        `(max gap ${summary.maxGapMs} ms); transcribe ${summary.transcribeMs} ms, health while busy ` +
        `${summary.healthWhileBusyMs} ms, cancel ${summary.cancelMs} ms, shutdown ${summary.shutdownMs} ms; ` +
        `total ${Date.now() - started} ms`,
    );
  } catch (err) {
    if (stderrTail.length) console.error("engine stderr (tail):\n  " + stderrTail.join("\n  "));
    console.error(`last messages: ${wire.slice(-5).join("").slice(-1500)}`);
    if (command.child && !engine.exited) await command.child.kill();
    throw err;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

let active = null; // the Command, so the time limit can kill its child

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.selfTest) return selfTest();
  const limit = setTimeout(() => {
    console.error(`FAIL: time limit of ${opts.timeoutS} s exceeded`);
    active?.child?.kill();
    process.exit(1);
  }, opts.timeoutS * 1000);
  await conversation(opts);
  clearTimeout(limit);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`FAIL: ${err instanceof Failure ? err.message : err?.stack ?? err}`);
    process.exit(1);
  },
);
