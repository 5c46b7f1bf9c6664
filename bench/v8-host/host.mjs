// A minimal proxy-wasm host in JavaScript: loads a proxy-wasm module (keygate.wasm, or the floor
// filter) into Node's V8, the engine Envoy embeds, configures it, and drives requests through
// the same exported callbacks Envoy calls (context created, request headers, response headers,
// log, done, delete). It lets the module's own code be timed, and profiled function by function
// (`run.mjs --profile`), which Envoy's embedded V8 does not allow.
//
// What it is not: Envoy. Host calls here are JavaScript, callouts are never answered, and the
// request headers are a fixed list. Use it to compare modules with each other, side by side.

import { readFileSync } from 'node:fs';
import { WASI } from 'node:wasi';

const OK = 0;
const NOT_FOUND = 1;
const CAS_MISMATCH = 8;
const UNIMPLEMENTED = 12;

const MAP_REQUEST_HEADERS = 0;
const MAP_RESPONSE_HEADERS = 2;
const BUFFER_VM_CONFIGURATION = 6;
const BUFFER_PLUGIN_CONFIGURATION = 7;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/// The host's per-process state, shared by every module loaded (shared data, queues).
export class Process {
  constructor() {
    this.shared = new Map(); // key -> {value: Uint8Array, cas: number}
    this.queues = new Map(); // `${vm}\0${name}` -> id
    this.queueItems = new Map(); // id -> Uint8Array[]
    this.nextQueue = 1;
    this.counting = false;
  }
}

/// A header map in the ABI's serialised form: the count, each pair's sizes, then each key and
/// value NUL-terminated.
function serialise(map) {
  const keys = map.map(([k]) => encoder.encode(k));
  const values = map.map(([, v]) => encoder.encode(v));
  let size = 4 + 8 * map.length;
  for (let i = 0; i < map.length; i++) size += keys[i].length + values[i].length + 2;
  const block = new Uint8Array(size);
  const view = new DataView(block.buffer);
  view.setUint32(0, map.length, true);
  let at = 4;
  for (let i = 0; i < map.length; i++) {
    view.setUint32(at, keys[i].length, true);
    view.setUint32(at + 4, values[i].length, true);
    at += 8;
  }
  for (let i = 0; i < map.length; i++) {
    block.set(keys[i], at);
    at += keys[i].length + 1;
    block.set(values[i], at);
    at += values[i].length + 1;
  }
  return block;
}

export class Module {
  /// `env` goes to the module's WASI environment (Envoy's `host_env_keys`).
  constructor(proc, wasmPath, { vmId = 'vm', pluginConfig = '', env = {}, log = false } = {}) {
    this.process = proc;
    this.vmId = vmId;
    this.pluginConfig = encoder.encode(pluginConfig);
    this.printLog = log;
    this.logs = [];
    this.metrics = [];
    this.nextToken = 1;
    this.request = [];
    this.response = [];
    this.localReplies = 0;
    this.lastLocalReply = null;
    this.unimplemented = new Set();
    this.counts = new Map(); // host call name -> calls, when `process.counting`
    const wasi = new WASI({ version: 'preview1', env, returnOnExit: true });
    const module = new WebAssembly.Module(readFileSync(wasmPath));
    const env_ = this.imports();
    const imports = { wasi_snapshot_preview1: wasi.wasiImport, env: {} };
    for (const { module: from, name, kind } of WebAssembly.Module.imports(module)) {
      if (kind !== 'function' || from !== 'env') continue;
      const call = env_[name] ?? ((..._) => {
        this.unimplemented.add(name);
        return UNIMPLEMENTED;
      });
      imports.env[name] = proc.counting
        ? (...a) => {
            this.counts.set(name, (this.counts.get(name) ?? 0) + 1);
            return call(...a);
          }
        : call;
    }
    this.instance = new WebAssembly.Instance(module, imports);
    this.x = this.instance.exports;
    wasi.initialize(this.instance);
  }

  view() {
    return new DataView(this.x.memory.buffer);
  }

  bytes(ptr, size) {
    return new Uint8Array(this.x.memory.buffer, ptr, size);
  }

  string(ptr, size) {
    return decoder.decode(this.bytes(ptr, size));
  }

  /// Copies `data` into memory the module allocates, and writes its address and size.
  give(data, retPtr, retSize) {
    if (data.length === 0) {
      this.view().setUint32(retPtr, 0, true);
      this.view().setUint32(retSize, 0, true);
      return OK;
    }
    const ptr = this.x.proxy_on_memory_allocate(data.length);
    this.bytes(ptr, data.length).set(data);
    const view = this.view();
    view.setUint32(retPtr, ptr, true);
    view.setUint32(retSize, data.length, true);
    return OK;
  }

  headerMap(type) {
    if (type === MAP_REQUEST_HEADERS) return this.request;
    if (type === MAP_RESPONSE_HEADERS) return this.response;
    return null;
  }

  imports() {
    const self = this;
    const blocks = new WeakMap();
    return {
      proxy_log(level, ptr, size) {
        const message = self.string(ptr, size);
        self.logs.push([level, message]);
        if (self.printLog) console.error(`[${self.vmId} log ${level}] ${message}`);
        return OK;
      },
      proxy_get_log_level(ret) {
        self.view().setUint32(ret, 2, true);
        return OK;
      },
      proxy_get_current_time_nanoseconds(ret) {
        self.view().setBigUint64(ret, BigInt(Date.now()) * 1000000n, true);
        return OK;
      },
      proxy_set_tick_period_milliseconds(_ms) {
        return OK;
      },
      proxy_get_buffer_bytes(type, start, max, retPtr, retSize) {
        let data;
        if (type === BUFFER_PLUGIN_CONFIGURATION) data = self.pluginConfig;
        else if (type === BUFFER_VM_CONFIGURATION) data = new Uint8Array(0);
        else return NOT_FOUND;
        // Sizes are u32 in the ABI; JavaScript sees i32 (usize::MAX arrives as -1).
        return self.give(data.subarray(start >>> 0, (start >>> 0) + (max >>> 0)), retPtr, retSize);
      },
      proxy_get_header_map_pairs(type, retPtr, retSize) {
        const map = self.headerMap(type);
        if (!map) return NOT_FOUND;
        // The request's block is serialised once per distinct list (serve() passes the same
        // list each time), so the host's own cost stays small beside the module's.
        let block = blocks.get(map.source);
        if (!block) {
          block = serialise(map);
          if (map.source) blocks.set(map.source, block);
        }
        return self.give(block, retPtr, retSize);
      },
      proxy_get_header_map_value(type, kPtr, kSize, retPtr, retSize) {
        const map = self.headerMap(type);
        if (!map) return NOT_FOUND;
        const key = self.string(kPtr, kSize);
        const found = map.find(([k]) => k === key);
        if (!found) return NOT_FOUND;
        return self.give(encoder.encode(found[1]), retPtr, retSize);
      },
      proxy_add_header_map_value(type, kPtr, kSize, vPtr, vSize) {
        const map = self.headerMap(type);
        if (!map) return NOT_FOUND;
        map.push([self.string(kPtr, kSize), self.string(vPtr, vSize)]);
        return OK;
      },
      proxy_replace_header_map_value(type, kPtr, kSize, vPtr, vSize) {
        const map = self.headerMap(type);
        if (!map) return NOT_FOUND;
        const key = self.string(kPtr, kSize);
        const value = self.string(vPtr, vSize);
        const rest = map.filter(([k]) => k !== key);
        map.length = 0;
        map.push(...rest, [key, value]);
        return OK;
      },
      proxy_remove_header_map_value(type, kPtr, kSize) {
        const map = self.headerMap(type);
        if (!map) return NOT_FOUND;
        const key = self.string(kPtr, kSize);
        const rest = map.filter(([k]) => k !== key);
        map.length = 0;
        map.push(...rest);
        return OK;
      },
      proxy_get_property(pathPtr, pathSize, retPtr, retSize) {
        const path = self.string(pathPtr, pathSize).split('\0').filter((s) => s).join('.');
        const known = { plugin_vm_id: self.vmId, plugin_root_id: self.vmId, plugin_name: self.vmId };
        if (!(path in known)) return NOT_FOUND;
        return self.give(encoder.encode(known[path]), retPtr, retSize);
      },
      proxy_get_shared_data(kPtr, kSize, retPtr, retSize, retCas) {
        const entry = self.process.shared.get(self.string(kPtr, kSize));
        if (!entry) return NOT_FOUND;
        self.give(entry.value, retPtr, retSize);
        self.view().setUint32(retCas, entry.cas, true);
        return OK;
      },
      proxy_set_shared_data(kPtr, kSize, vPtr, vSize, cas) {
        const key = self.string(kPtr, kSize);
        const entry = self.process.shared.get(key);
        if (cas !== 0 && entry && entry.cas !== cas) return CAS_MISMATCH;
        self.process.shared.set(key, {
          value: self.bytes(vPtr, vSize).slice(),
          cas: (entry?.cas ?? 0) + 1,
        });
        return OK;
      },
      proxy_register_shared_queue(namePtr, nameSize, retId) {
        const key = `${self.vmId}\0${self.string(namePtr, nameSize)}`;
        let id = self.process.queues.get(key);
        if (id === undefined) {
          id = self.process.nextQueue++;
          self.process.queues.set(key, id);
          self.process.queueItems.set(id, []);
        }
        self.view().setUint32(retId, id, true);
        return OK;
      },
      proxy_resolve_shared_queue(vmPtr, vmSize, namePtr, nameSize, retId) {
        const key = `${self.string(vmPtr, vmSize)}\0${self.string(namePtr, nameSize)}`;
        const id = self.process.queues.get(key);
        if (id === undefined) return NOT_FOUND;
        self.view().setUint32(retId, id, true);
        return OK;
      },
      proxy_enqueue_shared_queue(id, ptr, size) {
        const items = self.process.queueItems.get(id);
        if (!items) return NOT_FOUND;
        items.push(self.bytes(ptr, size).slice());
        return OK;
      },
      proxy_dequeue_shared_queue(id, retPtr, retSize) {
        const items = self.process.queueItems.get(id);
        if (!items) return NOT_FOUND;
        const item = items.shift();
        if (!item) return 7; // Empty
        return self.give(item, retPtr, retSize);
      },
      proxy_http_call(_up, _us, _h, _hs, _b, _bs, _t, _ts, _timeout, retToken) {
        self.view().setUint32(retToken, self.nextToken++, true);
        return OK;
      },
      proxy_define_metric(type, namePtr, nameSize, retId) {
        self.metrics.push({ type, name: self.string(namePtr, nameSize), value: 0n });
        self.view().setUint32(retId, self.metrics.length - 1, true);
        return OK;
      },
      proxy_increment_metric(id, offset) {
        const metric = self.metrics[id];
        if (!metric) return NOT_FOUND;
        metric.value += BigInt(offset);
        return OK;
      },
      proxy_record_metric(id, value) {
        const metric = self.metrics[id];
        if (!metric) return NOT_FOUND;
        metric.value = BigInt(value);
        return OK;
      },
      proxy_get_metric(id, ret) {
        const metric = self.metrics[id];
        if (!metric) return NOT_FOUND;
        self.view().setBigUint64(ret, metric.value, true);
        return OK;
      },
      proxy_set_effective_context(_id) {
        return OK;
      },
      proxy_continue_stream(_type) {
        return OK;
      },
      proxy_send_local_response(status, ..._rest) {
        self.localReplies += 1;
        self.lastLocalReply = status;
        return OK;
      },
      proxy_done() {
        return OK;
      },
    };
  }

  /// Envoy's start: the root context, the VM, the configuration. Returns whether the plugin
  /// took its configuration.
  start(rootId = 1) {
    this.rootId = rootId;
    this.x.proxy_on_context_create(rootId, 0);
    if (!this.x.proxy_on_vm_start(rootId, 0)) return false;
    return Boolean(this.x.proxy_on_configure(rootId, this.pluginConfig.length));
  }

  tick() {
    this.x.proxy_on_tick(this.rootId);
  }

  /// One request through the module as Envoy drives it, its headers `request`; returns the
  /// request headers as the module left them, or null if it paused the request.
  serve(contextId, request, status = '200') {
    const x = this.x;
    this.request = request.slice();
    this.request.source = request;
    this.response = [[':status', status]];
    x.proxy_on_context_create(contextId, this.rootId);
    const action = x.proxy_on_request_headers(contextId, this.request.length, 1);
    let forwarded = null;
    if (action === 0) {
      forwarded = this.request;
      x.proxy_on_response_headers(contextId, 1, 1);
    }
    x.proxy_on_log(contextId);
    x.proxy_on_done(contextId);
    x.proxy_on_delete(contextId);
    return forwarded;
  }
}
