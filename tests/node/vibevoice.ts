// src/lib/vibevoice.ts -- the app side of the vibevoice-rpc protocol over Tauri v2's shell plugin.
import type { Child, Command, TerminatedPayload } from "@tauri-apps/plugin-shell";

export interface ReadyParams { version: string; protocol: string; pid: number }
export interface Segment { speaker: string; start_time: number; end_time: number; text: string }
export interface ProgressParams { id: number; stage: string; progress: number; message: string }
export interface SegmentParams { id: number; index: number; segment: Segment }
interface RpcErrorObject { code: number; message: string; data?: any }
interface Pending {
  resolve: (value: any) => void;
  reject: (reason: unknown) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
  timeoutMs: number;
  method: string;
}

export class RpcError extends Error {
  code: number;
  data: any;
  constructor(error: RpcErrorObject) {
    super(error.message);
    this.name = "RpcError";
    this.code = error.code;
    this.data = error.data;
  }
  get isCancelled(): boolean {
    return this.code === -32800;
  }
  get isOutOfMemory(): boolean {
    return this.code === -32005 || /CUDA out of memory|OutOfMemoryError/.test(this.message);
  }
}

export class EngineTimeout extends Error {
  name = "EngineTimeout";
}

export class VibeVoiceEngine {
  #command: Command<string>;
  #child: Child | null = null;
  #nextId = 1;
  #pending = new Map<number, Pending>();
  #ready!: { resolve: (p: ReadyParams) => void; reject: (e: unknown) => void };
  #closed!: (payload: TerminatedPayload) => void;
  exited: TerminatedPayload | null = null; // set once the process is gone
  readonly ready: Promise<ReadyParams>;
  readonly closed: Promise<TerminatedPayload>;

  onProgress: ((params: ProgressParams) => void) | null = null;
  onSegment: ((params: SegmentParams) => void) | null = null;
  onLog: ((line: string) => void) | null = null; // the engine's stderr, one log line each
  onProblem: ((what: string) => void) | null = null; // a non-JSON line, an answer nobody waits for
  onExit: ((payload: TerminatedPayload) => void) | null = null;

  constructor(command: Command<string>) {
    this.#command = command;
    this.ready = new Promise((resolve, reject) => (this.#ready = { resolve, reject }));
    this.ready.catch(() => {});
    this.closed = new Promise((resolve) => (this.#closed = resolve));
    command.stdout.on("data", (line) => this.#onLine(line));
    command.stderr.on("data", (line) => this.onLog?.(line.replace(/\r?\n$/, "")));
    command.on("error", (err) => this.onProblem?.(`shell plugin error: ${err}`));
    command.on("close", (payload) => this.#onClose(payload));
  }

  /** Spawn the engine and wait for its `ready` line. */
  async start({ readyTimeoutMs = 60_000 } = {}): Promise<ReadyParams> {
    const child = (this.#child = await this.#command.spawn());
    const ready = await withTimeout(this.ready, readyTimeoutMs, "the engine did not say ready");
    if (ready.pid !== child.pid) {
      this.onProblem?.(`engine pid ${ready.pid} is not the spawned pid ${child.pid}: a wrapper (onefile?) sits between, kill() misses the engine`);
    }
    return ready;
  }

  /** Send a request; `timeoutMs` is an inactivity timeout, re-armed by its progress/segment notifications. */
  send<T = any>(method: string, params?: object, { timeoutMs = 30_000 } = {}): { id: number; result: Promise<T> } {
    const id = this.#nextId++;
    const result = new Promise<T>((resolve, reject) => {
      if (this.exited) return reject(new Error(`engine exited (code ${this.exited.code})`));
      const entry: Pending = { resolve, reject, timer: undefined, timeoutMs, method };
      this.#pending.set(id, entry);
      this.#arm(id, entry);
      this.#write({ jsonrpc: "2.0", id, method, ...(params === undefined ? {} : { params }) }).catch((err) => {
        this.#settle(id)?.reject(err);
      });
    });
    return { id, result };
  }

  call<T = any>(method: string, params?: object, options?: { timeoutMs?: number }): Promise<T> {
    return this.send<T>(method, params, options).result;
  }

  notify(method: string, params: object): void {
    this.#write({ jsonrpc: "2.0", method, params }).catch(() => {});
  }

  health(): Promise<any> {
    return this.call("health", undefined, { timeoutMs: 15_000 });
  }

  /** Returns `{id, result}`: keep the id to cancel. 30 s of silence (no heartbeat) means the engine hangs. */
  transcribe(audioPath: string, options: object = {}, { inactivityMs = 30_000 } = {}) {
    return this.send<{ status: string; segments: Segment[]; metadata: any }>(
      "transcribe", { audio_path: audioPath, ...options }, { timeoutMs: inactivityMs });
  }

  cancel(id: number): Promise<{ cancelled: boolean }> {
    return this.call("cancel", { id }, { timeoutMs: 10_000 });
  }

  /** Polite stop: `shutdown`, wait for the exit, then kill. JS cannot close the child's stdin. */
  async shutdown({ graceMs = 3_000 } = {}): Promise<TerminatedPayload | null> {
    if (this.exited || !this.#child) return this.exited;
    await this.call("shutdown", undefined, { timeoutMs: graceMs }).catch(() => {});
    const gone = await Promise.race([this.closed.then(() => true), sleep(graceMs).then(() => false)]);
    if (!gone) {
      await this.#child.kill().catch(() => {});
      await Promise.race([this.closed, sleep(graceMs)]);
    }
    return this.exited;
  }

  #write(message: object): Promise<void> {
    if (!this.#child) return Promise.reject(new Error("engine not started"));
    return this.#child.write(JSON.stringify(message) + "\n");
  }

  #onLine(line: string): void {
    const text = line.replace(/\r?\n$/, "");
    if (text.trim() === "") return;
    let message: any;
    try {
      message = JSON.parse(text);
    } catch {
      this.onProblem?.(`not JSON: ${text.slice(0, 200)}`);
      return;
    }
    for (const m of Array.isArray(message) ? message : [message]) this.#route(m);
  }

  #route(m: any): void {
    if (m === null || typeof m !== "object") {
      this.onProblem?.(`not a JSON-RPC message: ${JSON.stringify(m)}`);
    } else if (typeof m.method === "string") {
      if (m.method === "ready") this.#ready.resolve(m.params);
      else if (m.method === "progress") {
        this.#touch(m.params.id);
        this.onProgress?.(m.params);
      } else if (m.method === "segment") {
        this.#touch(m.params.id);
        this.onSegment?.(m.params);
      }
    } else {
      const entry = this.#settle(m.id);
      if (!entry) this.onProblem?.(`response for unknown id: ${JSON.stringify(m).slice(0, 300)}`);
      else if (m.error) entry.reject(new RpcError(m.error));
      else entry.resolve(m.result);
    }
  }

  #arm(id: number, entry: Pending): void {
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      if (!this.#settle(id)) return;
      entry.reject(new EngineTimeout(`${entry.method} #${id}: no sign of life for ${entry.timeoutMs} ms`));
      this.notify("$/cancelRequest", { id }); // its late answer, if any, is then dropped as unknown
    }, entry.timeoutMs);
  }

  #touch(id: number): void {
    const entry = this.#pending.get(id);
    if (entry) this.#arm(id, entry);
  }

  #settle(id: number): Pending | undefined {
    const entry = this.#pending.get(id);
    if (!entry) return undefined;
    this.#pending.delete(id);
    clearTimeout(entry.timer);
    return entry;
  }

  #onClose(payload: TerminatedPayload): void {
    this.exited = payload;
    const err = new Error(`engine exited (code ${payload.code}, signal ${payload.signal})`);
    for (const id of [...this.#pending.keys()]) this.#settle(id)!.reject(err);
    this.#ready.reject(err);
    this.#closed(payload);
    this.onExit?.(payload);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new EngineTimeout(`${what} within ${ms} ms`)), ms))),
  ]).finally(() => clearTimeout(timer));
}
