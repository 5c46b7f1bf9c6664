// Validates the Kubernetes and Istio manifests under deploy/ offline. Run it through
// scripts/validate-manifests.sh, which installs the packages below into target/manifest-tools
// and runs a copy of this file from there.
//
// Every YAML document is checked in three layers:
//   schema  the JSON-schema validator that ships with the model packages:
//             kubernetes-models            generated from the Kubernetes OpenAPI spec
//             @kubernetes-models/istio     generated from Istio's CRDs (crd-all.gen.yaml),
//                                          the openAPIV3Schema the API server enforces
//           types, enums, patterns, required fields, ranges.
//   strict  unknown fields. Those validators accept unknown fields (the generated schemas
//           carry no additionalProperties: false), while `kubectl apply` (strict field
//           validation) rejects them. So each document is also type-checked as an object
//           literal against the TypeScript declarations generated from the same schemas:
//           TypeScript's excess-property check rejects any field the schema does not have,
//           at any depth (free-form fields such as pluginConfig are typed `{}` and exempt).
//   keygate project rules: the WasmPlugin's pluginConfig equals envoy/envoy.yaml's plugin
//           configuration except its cluster/authority fields; each cluster names a
//           Service/ServiceEntry defined under deploy/; the secrets come from the proxy's
//           environment (valueFrom: HOST); failStrategy stays FAIL_CLOSE; every required
//           secretKeyRef names a Secret and key defined in the same namespace under deploy/.
//
// Not checked (needs an API server with the CRDs installed): CEL rules of the CRDs
// (x-kubernetes-validations), admission webhooks (Istio's validation webhook), defaulting.
//
// Files under deploy/testdata/invalid/ must FAIL, each with the message(s) in its
// `# expect-error: ...` lines, which proves the layers above really reject what they claim to.

import { readFileSync, readdirSync, mkdirSync, writeFileSync, rmSync, existsSync } from "node:fs";
import path from "node:path";
import { isDeepStrictEqual } from "node:util";
import { parseAllDocuments } from "yaml";
import ts from "typescript";

const ROOT = path.resolve(process.argv[2] ?? ".");
const TOOLS = path.dirname(new URL(import.meta.url).pathname);
const DEPLOY = path.join(ROOT, "deploy");
const INVALID_DIR = path.join(DEPLOY, "testdata", "invalid");
const ENVOY_YAML = path.join(ROOT, "envoy", "envoy.yaml");
const rel = (p) => path.relative(ROOT, p);

function yamlFiles(dir, skip = []) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (skip.includes(full) || entry.name === "node_modules") continue;
    if (entry.isDirectory()) out.push(...yamlFiles(full, skip));
    else if (/\.ya?ml$/.test(entry.name)) out.push(full);
  }
  return out.sort();
}

// ── loading ────────────────────────────────────────────────────────────────────────────────

// One record per file: its documents (objects) and the problems found so far.
function load(file) {
  const src = readFileSync(file, "utf8");
  const rec = { file, docs: [], errors: [], expect: [] };
  for (const m of src.matchAll(/^#\s*expect-error:\s*(.+?)\s*$/gm)) rec.expect.push(m[1]);
  // YAML 1.1 like the Kubernetes YAML parser (so `on`/`yes` are booleans there and here),
  // duplicate keys are an error.
  const docs = parseAllDocuments(src, { version: "1.1", uniqueKeys: true, prettyErrors: true });
  docs.forEach((doc, i) => {
    for (const e of doc.errors) rec.errors.push(`yaml: document ${i + 1}: ${e.message.split("\n")[0].replace(/:$/, "")}`);
    if (doc.errors.length) return;
    const obj = doc.toJS({ maxAliasCount: 50 });
    if (obj === null || obj === undefined) return; // an empty document (comments only)
    rec.docs.push({ index: i + 1, obj });
  });
  if (!rec.errors.length && !rec.docs.length) rec.errors.push("no Kubernetes object in the file");
  return rec;
}

const label = (d) => `${d.obj?.kind ?? "?"}/${d.obj?.metadata?.name ?? "?"}`;

// ── layer 1: schema ─────────────────────────────────────────────────────────────────────────

function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (!/^[A-Za-z0-9]+$/.test(kind) || !/^[a-z0-9.-]*$/.test(group) || !/^v[0-9a-z]+$/.test(version)) return null;
  if (group.endsWith(".istio.io")) return `@kubernetes-models/istio/${group}/${version}/${kind}`;
  return group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
}

async function schemaCheck(rec, d) {
  const { apiVersion, kind, metadata } = d.obj;
  if (typeof apiVersion !== "string" || typeof kind !== "string") {
    rec.errors.push(`${label(d)}: apiVersion and kind must be strings`);
    return;
  }
  if (typeof metadata?.name !== "string" || !metadata.name) {
    rec.errors.push(`${label(d)}: metadata.name is required`);
  }
  const mod = modulePath(apiVersion, kind);
  let Model;
  try {
    Model = mod && (await import(mod))[kind];
  } catch {
    Model = undefined;
  }
  if (!Model) {
    rec.errors.push(`${label(d)}: no schema for apiVersion ${apiVersion}, kind ${kind} (not a Kubernetes or Istio kind the validator knows)`);
    return;
  }
  d.module = mod;
  try {
    new Model(d.obj).validate();
  } catch (e) {
    const msg = String(e.message ?? e).replace(/^data\//, "").replace(/, data\//g, ", ");
    rec.errors.push(`schema: ${label(d)}: ${msg}`);
  }
}

// ── layer 2: strict (unknown fields), via TypeScript ───────────────────────────────────────

// Serialises `value` as a TS object literal, one property per line, and remembers the path of
// each line so that a diagnostic can be reported as a path in the manifest.
function literal(value) {
  const lines = [];
  const paths = [];
  const write = (v, p, indent, prefix, suffix) => {
    const pad = "  ".repeat(indent);
    if (Array.isArray(v) && v.length) {
      lines.push(`${pad}${prefix}[`); paths.push(p);
      v.forEach((x, i) => write(x, `${p}[${i}]`, indent + 1, "", ","));
      lines.push(`${pad}]${suffix}`); paths.push(p);
    } else if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) {
      lines.push(`${pad}${prefix}{`); paths.push(p);
      for (const [k, x] of Object.entries(v)) write(x, p ? `${p}.${k}` : k, indent + 1, `${JSON.stringify(k)}: `, ",");
      lines.push(`${pad}}${suffix}`); paths.push(p);
    } else {
      const text = Array.isArray(v) ? "[]" : v && typeof v === "object" ? "{}" : JSON.stringify(v);
      lines.push(`${pad}${prefix}${text}${suffix}`); paths.push(p);
    }
  };
  write(value, "", 0, "", "");
  return { lines, paths };
}

function strictCheck(records) {
  const dir = path.join(TOOLS, ".ts-check");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const units = [];
  for (const rec of records) {
    rec.docs.forEach((d) => {
      if (!d.module) return; // no schema: already reported
      const file = path.join(dir, `doc${units.length}.ts`);
      const { lines, paths } = literal(d.obj);
      const header = [
        `import type { I${d.obj.kind} as T } from ${JSON.stringify(d.module)};`,
        `export const doc: T = ${lines[0]}`,
      ];
      const body = [...header, ...lines.slice(1).map((l, i) => (i === lines.length - 2 ? `${l};` : l))];
      writeFileSync(file, body.join("\n") + "\n");
      units.push({ rec, d, file, paths, offset: 1 }); // line k of the literal is line k+1 of the file
    });
  }
  if (!units.length) return;
  const program = ts.createProgram(units.map((u) => u.file), {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    types: [],
    lib: ["lib.es2022.d.ts"],
  });
  const byFile = new Map(units.map((u) => [path.resolve(u.file), u]));
  for (const diag of ts.getPreEmitDiagnostics(program)) {
    const u = diag.file && byFile.get(path.resolve(diag.file.fileName));
    const text = ts.flattenDiagnosticMessageText(diag.messageText, "\n").split("\n");
    if (!u) {
      // A problem outside the generated files (a broken install): fail everything loudly.
      records[0].errors.push(`strict: type-checker setup: ${text[0]}`);
      continue;
    }
    const { line } = diag.file.getLineAndCharacterOfPosition(diag.start ?? 0);
    const where = u.paths[line - u.offset] ?? "";
    // The first line says what is wrong; an unknown property is reported by TypeScript as
    // "Object literal may only specify known properties, and 'x' does not exist in type ...".
    let msg = text.find((t) => /does not exist in type/.test(t)) ?? text[text.length - 1];
    msg = msg
      .trim()
      .replace(/'"([^"']*)"'/g, "'$1'")
      .replace(/ in type '[^']{60,}'\.?$/, " in the schema");
    u.rec.errors.push(`strict: ${label(u.d)}: ${where ? where + ": " : ""}${msg}`);
  }
}

// ── layer 3: Keygate project rules ─────────────────────────────────────────────────────────

function envoyPluginConfig() {
  const doc = parseAllDocuments(readFileSync(ENVOY_YAML, "utf8"))[0].toJS();
  const found = [];
  const walk = (v) => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === "object") {
      if (v.name === "envoy.filters.http.wasm" && v.typed_config?.config?.configuration?.value) {
        found.push(v.typed_config.config.configuration.value);
      }
      Object.values(v).forEach(walk);
    }
  };
  walk(doc);
  if (found.length !== 1) throw new Error(`expected one wasm filter configuration in ${rel(ENVOY_YAML)}, found ${found.length}`);
  return JSON.parse(found[0]);
}

function diffPaths(a, b, p = "", out = []) {
  if (isDeepStrictEqual(a, b)) return out;
  const objs = a && b && typeof a === "object" && typeof b === "object" && Array.isArray(a) === Array.isArray(b);
  if (!objs) { out.push(p || "(root)"); return out; }
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const k of keys) diffPaths(a[k], b[k], Array.isArray(a) ? `${p}[${k}]` : p ? `${p}.${k}` : k, out);
  return out;
}

// Istio cluster names the services defined under deploy/ (valid files only) provide.
function knownClusters(records) {
  const clusters = new Set();
  for (const rec of records) for (const { obj } of rec.docs) {
    if (obj.kind === "Service" && obj.apiVersion === "v1") {
      const host = `${obj.metadata?.name}.${obj.metadata?.namespace ?? "default"}.svc.cluster.local`;
      for (const port of obj.spec?.ports ?? []) clusters.add(`outbound|${port.port}||${host}`);
    }
    if (obj.kind === "ServiceEntry") {
      for (const host of obj.spec?.hosts ?? []) for (const port of obj.spec?.ports ?? []) clusters.add(`outbound|${port.number}||${host}`);
    }
  }
  return clusters;
}

function secretsDefined(records) {
  const keys = new Set();
  for (const rec of records) for (const { obj } of rec.docs) {
    if (obj.kind !== "Secret") continue;
    const ns = obj.metadata?.namespace ?? "default";
    for (const k of Object.keys({ ...(obj.data ?? {}), ...(obj.stringData ?? {}) })) keys.add(`${ns}/${obj.metadata?.name}/${k}`);
  }
  return keys;
}

function keygateCheck(rec, d, ctx) {
  const { obj } = d;
  if (obj.kind === "WasmPlugin" && (obj.spec?.pluginName === "keygate" || /\/keygate[:@]/.test(obj.spec?.url ?? ""))) {
    const spec = obj.spec ?? {};
    const cfg = spec.pluginConfig ?? {};
    const ks = cfg.key_service ?? {};
    if (spec.failStrategy !== "FAIL_CLOSE") rec.errors.push(`keygate: ${label(d)}: failStrategy must be FAIL_CLOSE (an authorization filter must not fail open)`);
    for (const name of ["KEYGATE_GATEWAY_KEY", "KEYGATE_SERVICE_TOKEN"]) {
      const env = (spec.vmConfig?.env ?? []).find((e) => e?.name === name);
      if (!env) rec.errors.push(`keygate: ${label(d)}: vmConfig.env must pass ${name} (valueFrom: HOST)`);
      else if (env.valueFrom !== "HOST" || "value" in env) rec.errors.push(`keygate: ${label(d)}: vmConfig.env ${name} must be valueFrom: HOST with no value (secrets stay out of the WasmPlugin)`);
    }
    // Envoy cluster names (and the :authority sent with them) necessarily differ between
    // plain Envoy and Istio; everything else must be identical. Any `cluster`/`authority` key
    // at any depth counts, so clusters added later (e.g. for JWKS) are covered too.
    const clusterRefs = [];
    const strip = (v, p, collect) => {
      if (Array.isArray(v)) v.forEach((x, i) => strip(x, `${p}[${i}]`, collect));
      else if (v && typeof v === "object") {
        for (const k of Object.keys(v)) {
          if (k === "cluster" && collect) clusterRefs.push([p ? `${p}.${k}` : k, v[k]]);
          if (k === "cluster" || k === "authority") delete v[k];
          else strip(v[k], p ? `${p}.${k}` : k, collect);
        }
      }
      return v;
    };
    const expected = strip(structuredClone(ctx.envoyConfig), "", false);
    const actual = strip(structuredClone(cfg), "", true);
    const diffs = diffPaths(expected, actual);
    if (diffs.length) rec.errors.push(`keygate: ${label(d)}: pluginConfig differs from ${rel(ENVOY_YAML)} at ${diffs.join(", ")} (only cluster/authority fields may differ)`);
    if (!clusterRefs.some(([p]) => p === "key_service.cluster")) clusterRefs.push(["key_service.cluster", ks.cluster]);
    for (const [p, cluster] of clusterRefs) {
      if (typeof cluster !== "string" || !ctx.clusters.has(cluster)) {
        rec.errors.push(`keygate: ${label(d)}: pluginConfig.${p} ${JSON.stringify(cluster)} is not the Istio cluster of a Service or ServiceEntry under deploy/ (known: ${[...ctx.clusters].join(", ")})`);
      }
    }
  }
  const podSpec = obj.kind === "Deployment" ? obj.spec?.template?.spec : undefined;
  if (podSpec) {
    const ns = obj.metadata?.namespace ?? "default";
    for (const c of [...(podSpec.containers ?? []), ...(podSpec.initContainers ?? [])]) {
      for (const e of c?.env ?? []) {
        const ref = e?.valueFrom?.secretKeyRef;
        if (!ref || ref.optional) continue;
        if (!ctx.secrets.has(`${ns}/${ref.name}/${ref.key}`)) {
          rec.errors.push(`keygate: ${label(d)}: container ${c.name} env ${e.name} refers to secret ${ns}/${ref.name} key ${ref.key}, which no Secret under deploy/ defines`);
        }
      }
    }
  }
}

// ── main ─────────────────────────────────────────────────────────────────────────────────────

const validFiles = yamlFiles(DEPLOY, [path.join(DEPLOY, "testdata"), path.join(DEPLOY, "tools")]);
const invalidFiles = existsSync(INVALID_DIR) ? yamlFiles(INVALID_DIR) : [];
const valid = validFiles.map(load);
const invalid = invalidFiles.map(load);
const all = [...valid, ...invalid];

for (const rec of all) for (const d of rec.docs) await schemaCheck(rec, d);
strictCheck(all);
const ctx = { envoyConfig: envoyPluginConfig(), clusters: knownClusters(valid), secrets: secretsDefined(valid) };
for (const rec of all) for (const d of rec.docs) keygateCheck(rec, d, ctx);

let passed = 0;
let failed = 0;
const summary = (rec) => rec.docs.map(label).join(", ");
for (const rec of valid) {
  if (!rec.errors.length) {
    passed++;
    console.log(`PASS ${rel(rec.file)}  (${summary(rec)})`);
  } else {
    failed++;
    console.log(`FAIL ${rel(rec.file)}`);
    for (const e of rec.errors) console.log(`       ${e}`);
  }
}
for (const rec of invalid) {
  const text = rec.errors.join("\n");
  const missing = rec.expect.filter((x) => !text.includes(x));
  if (!rec.expect.length) {
    failed++;
    console.log(`FAIL ${rel(rec.file)}  has no '# expect-error: ...' line saying why it must be rejected`);
  } else if (!rec.errors.length) {
    failed++;
    console.log(`FAIL ${rel(rec.file)}  was ACCEPTED, but must be rejected with: ${rec.expect.join(" | ")}`);
  } else if (missing.length) {
    failed++;
    console.log(`FAIL ${rel(rec.file)}  rejected, but not with: ${missing.join(" | ")}`);
    for (const e of rec.errors) console.log(`       ${e}`);
  } else {
    passed++;
    console.log(`PASS ${rel(rec.file)}  rejected as expected: ${rec.errors[0]}`);
  }
}
console.log(`manifests: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
