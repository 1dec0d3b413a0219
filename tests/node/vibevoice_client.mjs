// GENERATED from tests/node/vibevoice.ts (the TypeScript client in docs/TAURI.md) by
// `node tests/node/gen_client.mjs` (TypeScript 5.9.3 transpileModule: types stripped). Do not edit.
// source sha256: 192f9c088f3c99d19576a549d2c488cb7e11bfab8af77cf6574c95205956787c
export class RpcError extends Error {
    code;
    data;
    constructor(error) {
        super(error.message);
        this.name = "RpcError";
        this.code = error.code;
        this.data = error.data;
    }
    get isCancelled() {
        return this.code === -32800;
    }
    get isOutOfMemory() {
        return this.code === -32005 || /CUDA out of memory|OutOfMemoryError/.test(this.message);
    }
}
export class EngineTimeout extends Error {
    name = "EngineTimeout";
}
export class VibeVoiceEngine {
    #command;
    #child = null;
    #nextId = 1;
    #pending = new Map();
    #ready;
    #closed;
    exited = null; // set once the process is gone
    ready;
    closed;
    onProgress = null;
    onSegment = null;
    onLog = null; // the engine's stderr, one log line each
    onProblem = null; // a non-JSON line, an answer nobody waits for
    onExit = null;
    constructor(command) {
        this.#command = command;
        this.ready = new Promise((resolve, reject) => (this.#ready = { resolve, reject }));
        this.ready.catch(() => { });
        this.closed = new Promise((resolve) => (this.#closed = resolve));
        command.stdout.on("data", (line) => this.#onLine(line));
        command.stderr.on("data", (line) => this.onLog?.(line.replace(/\r?\n$/, "")));
        command.on("error", (err) => this.onProblem?.(`shell plugin error: ${err}`));
        command.on("close", (payload) => this.#onClose(payload));
    }
    /** Spawn the engine and wait for its `ready` line. */
    async start({ readyTimeoutMs = 60_000 } = {}) {
        const child = (this.#child = await this.#command.spawn());
        const ready = await withTimeout(this.ready, readyTimeoutMs, "the engine did not say ready");
        if (ready.pid !== child.pid) {
            this.onProblem?.(`engine pid ${ready.pid} is not the spawned pid ${child.pid}: a wrapper (onefile?) sits between, kill() misses the engine`);
        }
        return ready;
    }
    /** Send a request; `timeoutMs` is an inactivity timeout, re-armed by its progress/segment notifications. */
    send(method, params, { timeoutMs = 30_000 } = {}) {
        const id = this.#nextId++;
        const result = new Promise((resolve, reject) => {
            if (this.exited)
                return reject(new Error(`engine exited (code ${this.exited.code})`));
            const entry = { resolve, reject, timer: undefined, timeoutMs, method };
            this.#pending.set(id, entry);
            this.#arm(id, entry);
            this.#write({ jsonrpc: "2.0", id, method, ...(params === undefined ? {} : { params }) }).catch((err) => {
                this.#settle(id)?.reject(err);
            });
        });
        return { id, result };
    }
    call(method, params, options) {
        return this.send(method, params, options).result;
    }
    notify(method, params) {
        this.#write({ jsonrpc: "2.0", method, params }).catch(() => { });
    }
    health() {
        return this.call("health", undefined, { timeoutMs: 15_000 });
    }
    /** Returns `{id, result}`: keep the id to cancel. 30 s of silence (no heartbeat) means the engine hangs. */
    transcribe(audioPath, options = {}, { inactivityMs = 30_000 } = {}) {
        return this.send("transcribe", { audio_path: audioPath, ...options }, { timeoutMs: inactivityMs });
    }
    cancel(id) {
        return this.call("cancel", { id }, { timeoutMs: 10_000 });
    }
    /** Polite stop: `shutdown`, wait for the exit, then kill. JS cannot close the child's stdin. */
    async shutdown({ graceMs = 3_000 } = {}) {
        if (this.exited || !this.#child)
            return this.exited;
        await this.call("shutdown", undefined, { timeoutMs: graceMs }).catch(() => { });
        const gone = await Promise.race([this.closed.then(() => true), sleep(graceMs).then(() => false)]);
        if (!gone) {
            await this.#child.kill().catch(() => { });
            await Promise.race([this.closed, sleep(graceMs)]);
        }
        return this.exited;
    }
    #write(message) {
        if (!this.#child)
            return Promise.reject(new Error("engine not started"));
        return this.#child.write(JSON.stringify(message) + "\n");
    }
    #onLine(line) {
        const text = line.replace(/\r?\n$/, "");
        if (text.trim() === "")
            return;
        let message;
        try {
            message = JSON.parse(text);
        }
        catch {
            this.onProblem?.(`not JSON: ${text.slice(0, 200)}`);
            return;
        }
        for (const m of Array.isArray(message) ? message : [message])
            this.#route(m);
    }
    #route(m) {
        if (m === null || typeof m !== "object") {
            this.onProblem?.(`not a JSON-RPC message: ${JSON.stringify(m)}`);
        }
        else if (typeof m.method === "string") {
            if (m.method === "ready")
                this.#ready.resolve(m.params);
            else if (m.method === "progress") {
                this.#touch(m.params.id);
                this.onProgress?.(m.params);
            }
            else if (m.method === "segment") {
                this.#touch(m.params.id);
                this.onSegment?.(m.params);
            }
        }
        else {
            const entry = this.#settle(m.id);
            if (!entry)
                this.onProblem?.(`response for unknown id: ${JSON.stringify(m).slice(0, 300)}`);
            else if (m.error)
                entry.reject(new RpcError(m.error));
            else
                entry.resolve(m.result);
        }
    }
    #arm(id, entry) {
        clearTimeout(entry.timer);
        entry.timer = setTimeout(() => {
            if (!this.#settle(id))
                return;
            entry.reject(new EngineTimeout(`${entry.method} #${id}: no sign of life for ${entry.timeoutMs} ms`));
            this.notify("$/cancelRequest", { id }); // its late answer, if any, is then dropped as unknown
        }, entry.timeoutMs);
    }
    #touch(id) {
        const entry = this.#pending.get(id);
        if (entry)
            this.#arm(id, entry);
    }
    #settle(id) {
        const entry = this.#pending.get(id);
        if (!entry)
            return undefined;
        this.#pending.delete(id);
        clearTimeout(entry.timer);
        return entry;
    }
    #onClose(payload) {
        this.exited = payload;
        const err = new Error(`engine exited (code ${payload.code}, signal ${payload.signal})`);
        for (const id of [...this.#pending.keys()])
            this.#settle(id).reject(err);
        this.#ready.reject(err);
        this.#closed(payload);
        this.onExit?.(payload);
    }
}
export function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}
export function withTimeout(promise, ms, what) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => (timer = setTimeout(() => reject(new EngineTimeout(`${what} within ${ms} ms`)), ms))),
    ]).finally(() => clearTimeout(timer));
}
