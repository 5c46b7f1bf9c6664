#!/usr/bin/env node
// Runs a WASI preview1 module (e.g. a libtest binary built for wasm32-wasip1) under Node's
// built-in `node:wasi`, so `cargo test --target wasm32-wasip1` can use it as its runner:
//
//   node --no-warnings scripts/wasi-run.mjs <module.wasm> [args...]
//
// argv is passed through (argv[0] is the module path), the environment too. Nothing is
// preopened unless WASI_RUN_PREOPEN_CWD=1, which maps the current directory to "." (and to
// "/"). The process exits with the module's exit code; a trap (e.g. a panic, which aborts on
// wasm32-wasip1) exits with 134 after printing the trap.
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import process from "node:process";
import { WASI } from "node:wasi";

const [modulePath, ...args] = process.argv.slice(2);
if (!modulePath) {
  process.stderr.write("usage: wasi-run.mjs <module.wasm> [args...]\n");
  process.exit(2);
}

const preopens = {};
if (process.env.WASI_RUN_PREOPEN_CWD === "1") {
  preopens["."] = process.cwd();
  preopens["/"] = process.cwd();
}

const wasi = new WASI({
  version: "preview1",
  args: [resolve(modulePath), ...args],
  env: process.env,
  preopens,
  returnOnExit: true,
});

let code;
try {
  const module = await WebAssembly.compile(await readFile(modulePath));
  const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
  code = wasi.start(instance);
} catch (error) {
  process.stderr.write(`wasi-run: ${modulePath}: ${error?.stack ?? error}\n`);
  code = error instanceof WebAssembly.RuntimeError ? 134 : 1;
}
process.exitCode = code ?? 0;
