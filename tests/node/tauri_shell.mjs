// A stand-in for Tauri v2's shell plugin (`@tauri-apps/plugin-shell` `Command.create(...).spawn()`),
// built on node:child_process, that delivers the child's stdout to JavaScript the way the plugin does:
//
//   * tauri-plugin-shell `process/mod.rs` reads each pipe through a `BufReader` (8 KiB buffer) with
//     `tauri::utils::io::read_line`: in the bytes currently buffered it cuts after the first `\n`; only
//     if there is none, after the first `\r`; otherwise it keeps the bytes and reads on. The cut byte
//     stays in the line. So a bare `\r` ends a line, and so does a `\r` that is the last buffered byte
//     of a `\r\n` split across two reads.
//   * `commands.rs` turns each line into a JS event with `String::from_utf8(line)` (no encoding option):
//     a line that is not valid UTF-8 becomes an `error` event with the conversion error, and its text
//     is lost.
//   * `Child.write(string)` writes the string's UTF-8 bytes to stdin; `Child.kill()` kills the direct
//     child only; JS has no way to close the child's stdin.
//
// Only the parts the vibevoice client uses are provided: `Command.create(program, args, options)`,
// `command.on("close" | "error")`, `command.stdout.on("data")`, `command.stderr.on("data")`,
// `command.spawn()` -> `Child { pid, write(data), kill() }`. `command.raw` records what really came
// through the pipe, for the framing checks.
import { spawn as nodeSpawn } from "node:child_process";

export const BUF_READER_CAPACITY = 8 * 1024; // std::io::BufReader::new default capacity

/** Byte-exact port of `tauri::utils::io::read_line` applied to a stream read in 8 KiB reads. */
export class TauriLineSplitter {
  constructor(onLine) {
    this.onLine = onLine; // (bytes: Buffer) => void
    this.parts = [];
  }

  /** Feed bytes as they come off the pipe. Each 8 KiB slice stands for one `fill_buf` read. */
  push(chunk) {
    for (let off = 0; off < chunk.length; off += BUF_READER_CAPACITY) {
      let available = chunk.subarray(off, Math.min(off + BUF_READER_CAPACITY, chunk.length));
      while (available.length > 0) {
        let cut = available.indexOf(0x0a); // memchr(b'\n', available)
        if (cut === -1) cut = available.indexOf(0x0d); // else memchr(b'\r', available)
        if (cut === -1) {
          this.parts.push(available); // no line end in this read: keep it, read on
          break;
        }
        this.parts.push(available.subarray(0, cut + 1));
        this.flush();
        available = available.subarray(cut + 1);
      }
    }
  }

  /** EOF: `read_line` returns what it has (a last line without a line end), then 0. */
  end() {
    if (this.parts.length > 0) this.flush();
  }

  flush() {
    const line = Buffer.concat(this.parts);
    this.parts = [];
    this.onLine(line);
  }
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }); // like String::from_utf8

/** What the plugin sends to JS for one line: `{event: "Stdout", payload}` or `{event: "Error", payload}`. */
export function lineToEvent(kind, bytes) {
  try {
    return { event: kind, payload: strictUtf8.decode(bytes) };
  } catch {
    return { event: "Error", payload: "invalid utf-8 sequence" }; // FromUtf8Error's text, roughly
  }
}

/** Byte statistics of a stream, to compare with the events it produced. */
export function newTally() {
  return { stdoutBytes: 0, newlines: 0, carriageReturns: 0, lastByte: -1, stdoutEvents: 0, errorEvents: [] };
}

export function tally(raw, chunk) {
  raw.stdoutBytes += chunk.length;
  for (const b of chunk) {
    if (b === 0x0a) raw.newlines++;
    else if (b === 0x0d) raw.carriageReturns++;
  }
  if (chunk.length) raw.lastByte = chunk[chunk.length - 1];
}

class Emitter {
  constructor() {
    this.listeners = Object.create(null);
  }
  on(name, fn) {
    (this.listeners[name] ??= []).push(fn);
    return this;
  }
  emit(name, arg) {
    for (const fn of this.listeners[name] ?? []) fn(arg);
  }
}

export class Child {
  constructor(proc) {
    this.proc = proc;
    this.pid = proc.pid;
  }
  async write(data) {
    // plugin: stdin_write -> child.write(t.as_bytes()) (write_all on the pipe)
    await new Promise((resolve, reject) =>
      this.proc.stdin.write(typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  }
  async kill() {
    this.killed = true;
    this.proc.kill("SIGKILL"); // SharedChild::kill: SIGKILL / TerminateProcess, direct child only
  }
}

export class Command extends Emitter {
  constructor(program, args = [], options = {}) {
    super();
    this.program = program;
    this.args = typeof args === "string" ? [args] : args;
    this.options = options;
    this.stdout = new Emitter();
    this.stderr = new Emitter();
    this.raw = newTally();
  }

  static create(program, args, options) {
    return new Command(program, args, options);
  }

  async spawn() {
    const env = { ...process.env, ...(this.options.env ?? {}) }; // plugin default: inherit + options.env
    const proc = nodeSpawn(this.program, this.args, { cwd: this.options.cwd, env, stdio: ["pipe", "pipe", "pipe"] });
    await new Promise((resolve, reject) => {
      proc.once("spawn", resolve);
      proc.once("error", reject);
    });
    proc.stdin.on("error", () => {}); // EPIPE after the child exits: the plugin's write would just fail
    const raw = this.raw;
    const out = new TauriLineSplitter((bytes) => {
      const ev = lineToEvent("Stdout", bytes);
      if (ev.event === "Stdout") {
        raw.stdoutEvents++;
        this.stdout.emit("data", ev.payload);
      } else {
        raw.errorEvents.push(bytes);
        this.emit("error", ev.payload);
      }
    });
    const err = new TauriLineSplitter((bytes) => {
      const ev = lineToEvent("Stderr", bytes);
      if (ev.event === "Stderr") this.stderr.emit("data", ev.payload);
      else this.emit("error", ev.payload);
    });
    let open = 2;
    let exit = null;
    const maybeClose = () => {
      // the plugin sends Terminated after both pipe readers are done (RwLock guard)
      if (open === 0 && exit) this.emit("close", exit);
    };
    proc.stdout.on("data", (chunk) => {
      tally(raw, chunk);
      out.push(chunk);
    });
    proc.stdout.on("end", () => {
      out.end();
      open--;
      maybeClose();
    });
    proc.stderr.on("data", (chunk) => err.push(chunk));
    proc.stderr.on("end", () => {
      err.end();
      open--;
      maybeClose();
    });
    proc.on("exit", (code, signal) => {
      exit = { code, signal };
      maybeClose();
    });
    this.child = new Child(proc);
    return this.child;
  }
}
