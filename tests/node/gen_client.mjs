// Regenerates vibevoice_client.mjs (what the tests run) from vibevoice.ts (the TypeScript client
// shown in docs/TAURI.md) by stripping the types with TypeScript's transpileModule:
//
//   node tests/node/gen_client.mjs        (fetches typescript@5 from the npm registry into a temp dir)
//
// tests/test_node_framing.py checks that the generated file names the current vibevoice.ts's sha256
// and that docs/TAURI.md holds vibevoice.ts verbatim.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = readFileSync(join(here, "vibevoice.ts"), "utf8").replace(/\r\n/g, "\n"); // as checked out on Windows
const tmp = mkdtempSync(join(tmpdir(), "vibevoice-tsc-"));
try {
  execFileSync("npm", ["install", "--prefix", tmp, "--no-audit", "--no-fund", "--silent", "typescript@5"], {
    stdio: "inherit",
    shell: process.platform === "win32",
  });
  const ts = createRequire(join(tmp, "index.js"))("typescript");
  const { outputText } = ts.transpileModule(source, {
    compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext },
    reportDiagnostics: false,
  });
  const sha = createHash("sha256").update(source, "utf8").digest("hex");
  const header =
    "// GENERATED from tests/node/vibevoice.ts (the TypeScript client in docs/TAURI.md) by\n" +
    `// \`node tests/node/gen_client.mjs\` (TypeScript ${ts.version} transpileModule: types stripped). Do not edit.\n` +
    `// source sha256: ${sha}\n`;
  writeFileSync(join(here, "vibevoice_client.mjs"), header + outputText);
  console.log(`wrote vibevoice_client.mjs from vibevoice.ts (sha256 ${sha.slice(0, 12)}…)`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
