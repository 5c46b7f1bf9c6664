// Keygate dashboard: a small single-page app over the management API.
//
// - Talks only to its own origin: `fetch` with the session cookie (credentials: same-origin)
//   and the X-CSRF-Token header on every state-changing request, and
//   `EventSource('/api/v1/events')` for live updates.
// - Builds the DOM with createElement/textContent only (no markup from strings), so nothing a
//   key's name or metadata holds can run as script.
// - A freshly minted key is shown once, in the view that minted it; leaving that view drops
//   the whole view from the DOM and forgets the key.
// - Other secrets shown once (a webhook's signing secret, a key's hmac-sha256 secret) follow
//   the same rule: only in their one-time box and a closure, never in a URL, dropped on leaving.
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const PAGE_SIZE = 20;
  // The most keys the list loads (pages of 500): search, filters and sort work on these.
  const MAX_LIST_PAGES = 10;
  const AUDIT_ACTIONS = ['create', 'update', 'rotate', 'revoke', 'expire', 'import',
    'signing_key_rotate', 'admin_auth', 'role_create', 'role_update', 'role_delete',
    'pool_set', 'pool_delete', 'session.login', 'session.login_failed', 'session.login_limited',
    'session.logout', 'signing_material_set', 'signing_material_remove', 'block_add', 'block_remove',
    'webhook_create', 'webhook_delete', 'webhook_redeliver'];
  const RANGES = [
    { label: 'Last hour', seconds: 3600, step: 60 },
    { label: 'Last 6 hours', seconds: 6 * 3600, step: 300 },
    { label: 'Last 24 hours', seconds: 86400, step: 300 },
    { label: 'Last 7 days', seconds: 7 * 86400, step: 3600 },
    { label: 'Last 30 days', seconds: 30 * 86400, step: 86400 },
  ];
  // A hint that this tab logged in, so a fresh visit does not ask for a session it never had.
  // Not a secret: the session itself is an HttpOnly cookie.
  const HINT = 'keygate.session';

  const state = {
    session: null,
    events: null,
    live: [],
    keys: null,
    list: { q: '', status: '', env: '', sort: 'created-desc', page: 0 },
    render: null, // the current view's refresh, for live events
  };

  const view = document.getElementById('view');

  // ── DOM helpers ──────────────────────────────────────────────────────────────────────────

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'text') node.textContent = String(value);
      else if (name.startsWith('on') && typeof value === 'function') {
        node.addEventListener(name.slice(2), value);
      } else if (name === 'class') node.setAttribute('class', value);
      else if (value === true) node.setAttribute(name, '');
      else node.setAttribute(name, String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function show(...children) {
    view.replaceChildren(...children.flat().filter(Boolean));
    window.scrollTo(0, 0);
  }

  function toast(text, bad) {
    const box = document.getElementById('toasts');
    const item = el('div', { class: bad ? 'toast bad' : 'toast', text });
    box.append(item);
    setTimeout(() => item.remove(), 4000);
  }

  function errorBox() {
    return el('p', { class: 'error', role: 'alert', hidden: true });
  }

  function showError(box, error) {
    box.textContent = error.message || String(error);
    box.hidden = false;
  }

  function fmtTime(text) {
    if (!text) return '—';
    const date = new Date(text);
    if (Number.isNaN(date.getTime())) return String(text);
    return date.toISOString().replace('T', ' ').replace(/\.\d{3}Z$/, ' UTC');
  }

  function fmtValue(value) {
    if (value === null || value === undefined || value === '') return '—';
    if (Array.isArray(value)) return value.length ? value.join(', ') : '—';
    if (typeof value === 'object') return JSON.stringify(value);
    return String(value);
  }

  function rfc3339(local) {
    // <input type="datetime-local"> is local time; the API takes RFC 3339 in UTC.
    if (!local) return null;
    const date = new Date(local);
    if (Number.isNaN(date.getTime())) throw new Error(`not a date: ${local}`);
    return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
  }

  function words(text) {
    return text.split(/[\s,]+/).map((w) => w.trim()).filter(Boolean);
  }

  function badge(status) {
    return el('span', { class: `badge ${status || ''}`, text: status || 'unknown' });
  }

  function confirmAction(title, text) {
    const dialog = document.getElementById('confirm');
    document.getElementById('confirm-title').textContent = title;
    document.getElementById('confirm-text').textContent = text;
    dialog.returnValue = '';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'yes'), { once: true });
      dialog.showModal();
    });
  }

  // ── API ──────────────────────────────────────────────────────────────────────────────────

  class ApiError extends Error {
    constructor(status, problem) {
      super(problem && (problem.detail || problem.title) ? (problem.detail || problem.title)
        : `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (method !== 'GET' && state.session) headers['X-CSRF-Token'] = state.session.csrf;
    const response = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!response.ok) {
      if (response.status === 401 && state.session && path !== '/ui/api/session') {
        loggedOut('Your session ended: log in again.');
      }
      throw new ApiError(response.status, data);
    }
    return data;
  }

  // ── session ──────────────────────────────────────────────────────────────────────────────

  function isAdmin() {
    return state.session && state.session.role === 'admin';
  }

  function loggedIn(session) {
    state.session = session;
    sessionStorage.setItem(HINT, '1');
    document.getElementById('nav').hidden = false;
    document.getElementById('who').hidden = false;
    document.getElementById('role').textContent = session.role === 'admin'
      ? 'admin' : `owner ${session.owner}`;
    for (const link of document.querySelectorAll('[data-admin]')) link.hidden = !isAdmin();
    connectEvents();
  }

  function loggedOut(message) {
    state.session = null;
    state.keys = null;
    state.live = [];
    sessionStorage.removeItem(HINT);
    if (state.events) state.events.close();
    state.events = null;
    setLive(false);
    document.getElementById('nav').hidden = true;
    document.getElementById('who').hidden = true;
    if (message) toast(message, true);
    if (location.hash !== '#/login') location.hash = '#/login';
    else route();
  }

  async function logout() {
    try {
      await api('DELETE', '/ui/api/session');
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) toast(error.message, true);
    }
    loggedOut();
  }

  function renderLogin() {
    const key = el('input', {
      id: 'login-key', type: 'password', name: 'key', autocomplete: 'off', required: true,
      spellcheck: 'false', placeholder: 'kg_live_… or an admin key',
    });
    const problem = errorBox();
    const submit = el('button', { id: 'login-submit', type: 'submit', text: 'Log in' });
    // method=post: even without this script, the key never lands in a URL.
    const form = el('form', { id: 'login-form', class: 'panel login', method: 'post' },
      el('h1', { text: 'Log in to Keygate' }),
      el('p', { class: 'muted', text: 'Use a management key (scope keygate:owner:<you> or keygate:admin) or the admin key. The key is sent once and never stored in the page.' }),
      el('label', {}, 'Key', key),
      problem,
      el('div', { class: 'row' }, submit));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      submit.disabled = true;
      problem.hidden = true;
      try {
        const session = await api('POST', '/ui/api/session', { key: key.value.trim() });
        key.value = '';
        loggedIn(session);
        location.hash = '#/keys';
      } catch (error) {
        key.value = '';
        showError(problem, error.status === 429
          ? new Error('Too many failed logins from this address: wait and try again.')
          : error.status === 401 ? new Error('That key is not a valid management key.') : error);
      } finally {
        submit.disabled = false;
      }
    });
    show(form);
    key.focus();
  }

  // ── live events ──────────────────────────────────────────────────────────────────────────

  function setLive(on) {
    const badgeEl = document.getElementById('live');
    badgeEl.className = on ? 'live on' : 'live off';
    badgeEl.textContent = on ? 'live' : 'offline';
  }

  function connectEvents() {
    if (state.events || typeof EventSource === 'undefined') return;
    const source = new EventSource('/api/v1/events');
    state.events = source;
    source.addEventListener('open', () => setLive(true));
    source.addEventListener('error', () => {
      setLive(false);
      if (source.readyState === EventSource.CLOSED) {
        state.events = null;
        // Retry while logged in: the stream may have been cut by a restart.
        setTimeout(() => { if (state.session) connectEvents(); }, 5000);
      }
    });
    for (const name of ['key.created', 'key.revoked', 'key.rotated', 'key.updated',
      'key.expired', 'usage']) {
      source.addEventListener(name, (event) => {
        let data = {};
        try { data = JSON.parse(event.data); } catch (_) { return; }
        onEvent(name, data);
      });
    }
  }

  let refreshTimer = null;
  const pending = new Set();
  function onEvent(name, data) {
    state.live.unshift({ name, data, at: new Date().toISOString() });
    state.live.length = Math.min(state.live.length, 50);
    if (name !== 'usage') {
      state.keys = null; // the list is stale
      toast(`${name.replace('key.', 'key ')}: ${data.name || data.id}`);
    }
    const list = document.getElementById('live-list');
    if (list) list.replaceChildren(...liveItems());
    if (state.render && state.render.wants(name, data)) {
      pending.add(name);
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => {
        const names = new Set(pending);
        pending.clear();
        if (state.render) state.render.refresh(names);
      }, 300);
    }
  }

  function liveItems() {
    if (!state.live.length) return [el('li', { class: 'muted', text: 'Nothing yet.' })];
    return state.live.slice(0, 20).map((entry) => {
      const d = entry.data;
      const what = entry.name === 'usage'
        ? `usage ${d.key_id}: ${d.allowed} allowed, ${d.denied} denied`
        : `${entry.name} ${d.id}${d.new_id ? ` → ${d.new_id}` : ''}${d.name ? ` (${d.name})` : ''}`;
      return el('li', {}, el('span', { class: 'muted', text: `${fmtTime(entry.at)} ` }), what);
    });
  }

  // ── keys ─────────────────────────────────────────────────────────────────────────────────

  async function loadKeys() {
    const keys = [];
    let cursor = null;
    for (let page = 0; page < MAX_LIST_PAGES; page += 1) {
      const query = new URLSearchParams({ limit: '500' });
      if (cursor) query.set('cursor', cursor);
      const answer = await api('GET', `/api/v1/auth/keys?${query}`);
      keys.push(...(answer.keys || []));
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    return { keys, truncated: Boolean(cursor) };
  }

  function envOf(key) {
    return key.prefix || '';
  }

  function lastUsedAddress(key) {
    return key.last_used_address || key.last_used_from || key.client_address || '';
  }

  const SORTS = {
    'created-desc': (a, b) => String(b.created_at).localeCompare(String(a.created_at)),
    'created-asc': (a, b) => String(a.created_at).localeCompare(String(b.created_at)),
    name: (a, b) => a.name.localeCompare(b.name),
    'last-used': (a, b) => String(b.last_used_at || '').localeCompare(String(a.last_used_at || '')),
    expiry: (a, b) => String(a.expires_at || '~').localeCompare(String(b.expires_at || '~')),
  };

  async function renderKeys() {
    const filters = state.list;
    const search = el('input', { id: 'key-search', type: 'search', value: filters.q, placeholder: 'name, id or owner', 'aria-label': 'Search' });
    const status = el('select', { id: 'key-status', 'aria-label': 'Status' },
      ['', 'active', 'revoked', 'expired'].map((s) => el('option', { value: s, selected: s === filters.status, text: s || 'any status' })));
    const env = el('select', { id: 'key-env', 'aria-label': 'Environment' });
    const sort = el('select', { id: 'key-sort', 'aria-label': 'Sort' },
      [['created-desc', 'newest first'], ['created-asc', 'oldest first'], ['name', 'name'],
        ['last-used', 'last used'], ['expiry', 'expiry']]
        .map(([v, t]) => el('option', { value: v, selected: v === filters.sort, text: t })));
    const body = el('tbody', { id: 'key-rows' });
    const pager = el('div', { class: 'pager' });
    const problem = errorBox();
    const note = el('p', { class: 'muted' });
    const liveList = el('ul', { id: 'live-list', class: 'live-list' }, liveItems());

    show(
      el('h1', { text: isAdmin() ? 'All keys' : `Keys of ${state.session.owner}` }),
      el('div', { class: 'panel row' },
        el('label', { class: 'grow' }, 'Search', search),
        el('label', {}, 'Status', status),
        el('label', {}, 'Environment', env),
        el('label', {}, 'Sort', sort),
        el('a', { href: '#/create' }, el('button', { type: 'button', text: 'Create key' }))),
      problem,
      el('table', { class: 'cards', id: 'keys-table' },
        el('thead', {}, el('tr', {}, ['Name', 'ID', 'Owner', 'Env', 'Status', 'Expires', 'Last used']
          .map((t) => el('th', { text: t })))),
        body),
      pager, note,
      el('div', { class: 'panel' }, el('h2', { text: 'Live' }), liveList),
    );

    const draw = () => {
      const all = state.keys ? state.keys.keys : [];
      const envs = [...new Set(all.map(envOf))].sort();
      env.replaceChildren(el('option', { value: '', text: 'any' }),
        ...envs.map((e) => el('option', { value: e, selected: e === filters.env, text: e })));
      const q = filters.q.toLowerCase();
      const shown = all.filter((k) => (!filters.status || k.status === filters.status)
        && (!filters.env || envOf(k) === filters.env)
        && (!q || [k.name, k.id, k.owner || ''].some((v) => String(v).toLowerCase().includes(q))))
        .sort(SORTS[filters.sort] || SORTS['created-desc']);
      const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
      filters.page = Math.min(filters.page, pages - 1);
      const slice = shown.slice(filters.page * PAGE_SIZE, (filters.page + 1) * PAGE_SIZE);
      body.replaceChildren(...slice.map((k) => el('tr', { 'data-key-id': k.id },
        el('td', { 'data-label': 'Name' }, el('a', { href: `#/key/${encodeURIComponent(k.id)}`, text: k.name })),
        el('td', { 'data-label': 'ID', class: 'mono', text: k.id }),
        el('td', { 'data-label': 'Owner', text: k.owner || '—' }),
        el('td', { 'data-label': 'Env', class: 'mono', text: envOf(k) || '—' }),
        el('td', { 'data-label': 'Status' }, badge(k.status)),
        el('td', { 'data-label': 'Expires', text: fmtTime(k.expires_at) }),
        el('td', { 'data-label': 'Last used', text: k.last_used_at
          ? `${fmtTime(k.last_used_at)}${lastUsedAddress(k) ? ` from ${lastUsedAddress(k)}` : ''}` : 'never' }))));
      if (!slice.length) {
        body.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: all.length ? 'No key matches.' : 'No keys yet.' })));
      }
      pager.replaceChildren(
        el('button', { type: 'button', class: 'secondary', id: 'page-prev', disabled: filters.page === 0, text: '← Previous', onclick: () => { filters.page -= 1; draw(); } }),
        el('span', { id: 'page-info', text: `Page ${filters.page + 1} of ${pages} · ${shown.length} key${shown.length === 1 ? '' : 's'}` }),
        el('button', { type: 'button', class: 'secondary', id: 'page-next', disabled: filters.page >= pages - 1, text: 'Next →', onclick: () => { filters.page += 1; draw(); } }));
      note.textContent = state.keys && state.keys.truncated
        ? `Showing the first ${all.length} keys; search and filters apply to those.` : '';
    };

    search.addEventListener('input', () => { filters.q = search.value; filters.page = 0; draw(); });
    status.addEventListener('change', () => { filters.status = status.value; filters.page = 0; draw(); });
    env.addEventListener('change', () => { filters.env = env.value; filters.page = 0; draw(); });
    sort.addEventListener('change', () => { filters.sort = sort.value; draw(); });

    const refresh = async () => {
      try {
        state.keys = await loadKeys();
        problem.hidden = true;
      } catch (error) {
        showError(problem, error);
      }
      if (body.isConnected) draw();
    };
    state.render = { wants: (name) => name !== 'usage', refresh };
    draw();
    if (!state.keys) await refresh();
  }

  // ── create ───────────────────────────────────────────────────────────────────────────────

  function renderCreate() {
    const field = (label, input, wide) => el('label', { class: wide ? 'wide' : undefined }, label, input);
    const name = el('input', { id: 'create-name', required: true, maxlength: 200 });
    const scopes = el('input', { id: 'create-scopes', placeholder: 'demo:read demo:write' });
    const owner = el('input', { id: 'create-owner', placeholder: 'team or person' });
    const expires = el('input', { id: 'create-expires', placeholder: 'e.g. 90d, 12h; empty: never' });
    const format = el('select', { id: 'create-format' },
      el('option', { value: 'opaque', text: 'opaque' }), el('option', { value: 'jwt', text: 'JWT' }));
    const algorithm = el('select', { id: 'create-algorithm', disabled: true },
      ['ES256', 'EdDSA', 'RS256'].map((a) => el('option', { value: a, text: a })));
    const rps = el('input', { id: 'create-rps', type: 'number', min: '0', step: 'any', placeholder: 'none' });
    const burst = el('input', { id: 'create-burst', type: 'number', min: '1', step: '1', placeholder: 'default' });
    const cidrs = el('textarea', { id: 'create-cidrs', placeholder: '10.0.0.0/8, 192.0.2.7/32' });
    const countries = el('input', { id: 'create-countries', placeholder: 'DE AT CH' });
    const notBefore = el('input', { id: 'create-not-before', type: 'datetime-local' });
    const notAfter = el('input', { id: 'create-not-after', type: 'datetime-local' });
    format.addEventListener('change', () => { algorithm.disabled = format.value !== 'jwt'; });
    const problem = errorBox();
    const submit = el('button', { id: 'create-submit', type: 'submit', text: 'Create key' });
    const form = el('form', { id: 'create-form', class: 'panel', method: 'post' },
      el('div', { class: 'form-grid' },
        field('Name', name), field('Scopes (space or comma separated)', scopes),
        isAdmin() ? field('Owner', owner) : el('label', {}, 'Owner', el('input', { value: state.session.owner, disabled: true })),
        field('Expires in', expires), field('Format', format), field('JWT algorithm', algorithm),
        field('Rate limit (requests/s)', rps), field('Burst', burst),
        field('Allowed addresses (CIDRs)', cidrs, true),
        field('Allowed countries (ISO codes)', countries),
        field('Valid from', notBefore), field('Valid until', notAfter)),
      problem, el('div', { class: 'row' }, submit));

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      problem.hidden = true;
      submit.disabled = true;
      try {
        const request = { name: name.value.trim(), scopes: words(scopes.value), format: format.value };
        if (isAdmin() && owner.value.trim()) request.owner = owner.value.trim();
        if (expires.value.trim()) {
          const text = expires.value.trim();
          request.expires_in = /^\d+$/.test(text) ? Number(text) : text;
        }
        if (format.value === 'jwt') request.algorithm = algorithm.value;
        if (rps.value) {
          request.rate_limit = { requests_per_second: Number(rps.value) };
          if (burst.value) request.rate_limit.burst = Number(burst.value);
        }
        const allow = words(cidrs.value);
        if (allow.length) request.allowed_cidrs = allow;
        const from = words(countries.value);
        if (from.length) request.allowed_countries = from;
        if (notBefore.value) request.not_before = rfc3339(notBefore.value);
        if (notAfter.value) request.not_after = rfc3339(notAfter.value);
        const created = await api('POST', '/api/v1/auth/keys', request);
        state.keys = null;
        showOnce(created, 'Key created');
      } catch (error) {
        showError(problem, error);
        submit.disabled = false;
      }
    });
    show(el('h1', { text: 'Create a key' }), form);
    state.render = null;
    name.focus();
  }

  // A "Copy to clipboard" button for the secret `get()` answers (null once forgotten); where the
  // clipboard is refused (plain http off localhost) it selects the text of `code` instead.
  function copyButton(id, get, code, status) {
    return el('button', {
      id, type: 'button', text: 'Copy to clipboard',
      onclick: async () => {
        const secret = get();
        if (!secret) return;
        try {
          await navigator.clipboard.writeText(secret);
          status.textContent = 'Copied.';
        } catch (_) {
          const range = document.createRange();
          range.selectNodeContents(code);
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          status.textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
        }
      },
    });
  }

  // The one-time view of a minted key: its plaintext lives only in this view's DOM and in this
  // closure; any navigation replaces the view and drops both.
  function showOnce(created, title) {
    let secret = created.key;
    delete created.key;
    const code = el('code', { id: 'one-time-key', text: secret });
    const copied = el('span', { class: 'muted', role: 'status' });
    const copy = copyButton('copy-key', () => secret, code, copied);
    const done = el('a', { id: 'one-time-done', href: `#/key/${encodeURIComponent(created.id)}` },
      el('button', { type: 'button', class: 'secondary', text: 'I have stored it — show the key' }));
    show(
      el('h1', { text: title }),
      el('div', { class: 'panel secret', id: 'one-time' },
        el('p', { class: 'warning', text: 'Copy this key now. It is shown only once: Keygate keeps only a digest and cannot show it again.' }),
        code,
        el('div', { class: 'actions' }, copy, done, copied),
        el('dl', { class: 'fields' },
          el('dt', { text: 'ID' }), el('dd', { class: 'mono', id: 'one-time-id', text: created.id }),
          el('dt', { text: 'Name' }), el('dd', { text: created.name }),
          el('dt', { text: 'Scopes' }), el('dd', { text: fmtValue(created.scopes) }),
          el('dt', { text: 'Expires' }), el('dd', { text: fmtTime(created.expires_at) }))),
    );
    state.render = null;
    window.addEventListener('hashchange', () => { secret = null; }, { once: true });
  }

  // ── key detail ───────────────────────────────────────────────────────────────────────────

  const DETAIL_FIELDS = [
    ['id', 'ID'], ['name', 'Name'], ['owner', 'Owner'], ['status', 'Status'],
    ['prefix', 'Environment prefix'], ['format', 'Format'], ['algorithm', 'Algorithm'],
    ['kid', 'Signing key'], ['scopes', 'Scopes'], ['roles', 'Roles'],
    ['created_at', 'Created'], ['expires_at', 'Expires'], ['last_used_at', 'Last used'], ['last_used_address', 'Last used from'],
    ['revoked_at', 'Revoked'], ['rotated_from', 'Rotated from'], ['rotated_to', 'Rotated to'],
    ['rate_limit', 'Rate limit'], ['global_limit', 'Fleet-wide limit'], ['quota', 'Quota'],
    ['allowed_cidrs', 'Allowed addresses'], ['allowed_countries', 'Allowed countries'], ['allowed_principals', 'Allowed principals'],
    ['not_before', 'Valid from'], ['not_after', 'Valid until'], ['metadata', 'Metadata'],
  ];
  const TIME_FIELDS = new Set(['created_at', 'expires_at', 'last_used_at', 'revoked_at', 'not_before', 'not_after']);

  function fieldList(key) {
    const seen = new Set();
    const rows = [];
    const add = (name, label) => {
      seen.add(name);
      if (!(name in key)) return;
      const value = key[name];
      let shown;
      if (name === 'status') shown = badge(value);
      else if (name === 'rate_limit' && value) shown = `${value.requests_per_second}/s, burst ${value.burst}`;
      else if (name === 'rotated_from' || name === 'rotated_to') {
        shown = value ? el('a', { href: `#/key/${encodeURIComponent(value)}`, text: value }) : '—';
      } else if (TIME_FIELDS.has(name)) shown = fmtTime(value);
      else shown = fmtValue(value);
      rows.push(el('dt', { text: label }), el('dd', { 'data-field': name }, shown));
    };
    for (const [name, label] of DETAIL_FIELDS) add(name, label);
    // Signing material has its own panel (see drawSigning).
    for (const name of Object.keys(key)) if (!seen.has(name) && name !== 'key' && name !== 'signing_material') add(name, name);
    return el('dl', { class: 'fields', id: 'key-fields' }, rows);
  }

  async function renderKey(id) {
    const problem = errorBox();
    const fields = el('div', { class: 'panel' }, el('p', { class: 'muted', text: 'Loading…' }));
    const actions = el('div', { class: 'actions', id: 'key-actions' });
    const update = el('div', { class: 'panel', id: 'key-update', hidden: true });
    const usage = el('section', { id: 'usage' });
    const title = el('h1', { text: 'Key' });
    const signing = signingPanel(id, () => load());
    show(title, problem, fields, actions, update, signing.node, usage);
    let key = null;
    let drawn = null; // what the action buttons were drawn for

    const load = async () => {
      try {
        key = await api('GET', `/api/v1/auth/keys/${encodeURIComponent(id)}`);
      } catch (error) {
        if (error.status === 404) {
          show(el('h1', { text: 'Key not found' }), el('p', { class: 'muted', text: 'There is no key with this id that you can see.' }));
          state.render = null;
          return false;
        }
        showError(problem, error);
        return false;
      }
      title.textContent = key.name;
      fields.replaceChildren(fieldList(key));
      // Redraw the buttons only when what they depend on changed: a live usage event must
      // not reset a grace period being typed or move a button under the pointer.
      const now = `${key.status}\n${key.name}`;
      if (now !== drawn) {
        drawn = now;
        drawActions();
      }
      signing.draw(key);
      return true;
    };

    const act = async (what, text, call) => {
      if (!(await confirmAction(what, text))) return;
      try {
        const answer = await call();
        state.keys = null;
        if (answer && answer.key) showOnce(answer, 'Key rotated');
        else { toast(`${what}: done`); await load(); }
      } catch (error) {
        showError(problem, error);
      }
    };

    const drawActions = () => {
      const live = key.status === 'active';
      const grace = el('input', { id: 'rotate-grace', value: '1h', size: 6, 'aria-label': 'Grace period' });
      actions.replaceChildren(
        el('label', { class: 'inline' }, 'Grace', grace),
        el('button', { id: 'rotate', type: 'button', disabled: !live, text: 'Rotate',
          onclick: () => act('Rotate', `Mint a new key for ${key.name}; the old one keeps working for ${grace.value || 'no'} grace, then stops.`,
            () => api('POST', `/api/v1/auth/keys/${encodeURIComponent(id)}/rotate`, { grace: /^\d+$/.test(grace.value) ? Number(grace.value) : grace.value })) }),
        el('button', { id: 'edit', type: 'button', class: 'secondary', text: 'Update…', onclick: () => drawUpdate() }),
        el('button', { id: 'expire', type: 'button', class: 'secondary', disabled: !live, text: 'Expire now',
          onclick: () => act('Expire', `Expire ${key.name} now? Gateways refuse it from the next request.`,
            () => api('POST', `/api/v1/auth/keys/${encodeURIComponent(id)}/expire`)) }),
        el('button', { id: 'revoke', type: 'button', class: 'danger', disabled: key.status === 'revoked', text: 'Revoke',
          onclick: () => act('Revoke', `Revoke ${key.name} (${key.id})? Every gateway refuses it within a second. This cannot be undone.`,
            () => api('DELETE', `/api/v1/auth/keys/${encodeURIComponent(id)}`)) }),
      );
    };

    const drawUpdate = () => {
      const name = el('input', { id: 'update-name', value: key.name });
      const scopes = el('input', { id: 'update-scopes', value: (key.scopes || []).join(' ') });
      const rps = el('input', { id: 'update-rps', type: 'number', min: '0', step: 'any', value: key.rate_limit ? key.rate_limit.requests_per_second : '' });
      const cidrs = el('textarea', { id: 'update-cidrs' }, (key.allowed_cidrs || []).join(', '));
      const countries = el('input', { id: 'update-countries', value: (key.allowed_countries || []).join(' ') });
      const toLocal = (t) => (t ? new Date(new Date(t).getTime() - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16) : '');
      const notBefore = el('input', { id: 'update-not-before', type: 'datetime-local', value: toLocal(key.not_before) });
      const notAfter = el('input', { id: 'update-not-after', type: 'datetime-local', value: toLocal(key.not_after) });
      const form = el('form', { method: 'post' },
        el('h2', { text: 'Update' }),
        el('div', { class: 'form-grid' },
          el('label', {}, 'Name', name), el('label', {}, 'Scopes', scopes),
          el('label', {}, 'Rate limit (requests/s, empty: none)', rps),
          el('label', { class: 'wide' }, 'Allowed addresses (CIDRs)', cidrs),
          el('label', {}, 'Allowed countries (ISO codes, empty: anywhere)', countries),
          el('label', {}, 'Valid from', notBefore), el('label', {}, 'Valid until', notAfter)),
        el('div', { class: 'row' },
          el('button', { id: 'update-submit', type: 'submit', text: 'Save' }),
          el('button', { type: 'button', class: 'secondary', text: 'Cancel', onclick: () => { update.hidden = true; } })));
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        let patch;
        try {
          patch = {
            name: name.value.trim(),
            scopes: words(scopes.value),
            rate_limit: rps.value ? { requests_per_second: Number(rps.value) } : null,
            allowed_cidrs: words(cidrs.value),
            allowed_countries: words(countries.value),
            not_before: rfc3339(notBefore.value),
            not_after: rfc3339(notAfter.value),
          };
        } catch (error) {
          showError(problem, error);
          return;
        }
        act('Update', `Save these changes to ${key.name}?`, async () => {
          const answer = await api('PATCH', `/api/v1/auth/keys/${encodeURIComponent(id)}`, patch);
          update.hidden = true;
          return answer;
        });
      });
      update.replaceChildren(form);
      update.hidden = false;
    };

    const chartState = { range: 0 };
    const refreshUsage = () => drawUsage(usage, id, chartState);
    // An event about this key (or its usage) reloads the record and redraws the charts.
    state.render = {
      wants: (name, data) => (name === 'usage' ? data.key_id === id : data.id === id || data.new_id === id),
      refresh: async (names) => {
        // Usage moves `last_used_at` too: the record is reloaded either way.
        if (!(await load())) return;
        await refreshUsage();
      },
    };
    if (await load()) await refreshUsage();
  }

  // ── usage charts ─────────────────────────────────────────────────────────────────────────

  async function drawUsage(section, id, chartState) {
    const range = RANGES[chartState.range];
    const select = el('select', { id: 'usage-range', 'aria-label': 'Range' },
      RANGES.map((r, i) => el('option', { value: i, selected: i === chartState.range, text: `${r.label} (step ${r.step / 60 >= 60 ? `${r.step / 3600} h` : `${r.step / 60} min`})` })));
    select.addEventListener('change', () => { chartState.range = Number(select.value); drawUsage(section, id, chartState); });
    const refresh = el('button', { id: 'usage-refresh', type: 'button', class: 'secondary', text: 'Refresh', onclick: () => drawUsage(section, id, chartState) });
    const head = [el('h2', { text: 'Usage' }), el('div', { class: 'row' }, el('label', {}, 'Range', select), refresh)];
    const now = Math.floor(Date.now() / 1000);
    const query = new URLSearchParams({
      from: new Date((now - range.seconds) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z'),
      to: new Date((now + 60) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z'),
      step: String(range.step),
    });
    let report;
    try {
      report = await api('GET', `/api/v1/auth/keys/${encodeURIComponent(id)}/usage?${query}`);
    } catch (error) {
      if (!section.isConnected) return;
      section.replaceChildren(...head, el('p', { class: 'error', text: error.message }));
      return;
    }
    if (!section.isConnected) return;
    const points = report.points || [];
    const totals = report.totals || { allowed: 0, denied: {}, status: {} };
    const deniedTotal = Object.values(totals.denied || {}).reduce((a, b) => a + b, 0);
    const reasons = Object.keys(totals.denied || {}).sort();
    const classes = Object.keys(totals.status || {}).sort();
    const charts = [
      chart('Allowed vs denied (by reason)', 'chart-decisions', points,
        [{ name: 'allowed', cls: 's-allowed', get: (p) => p.allowed || 0 },
          ...reasons.map((r, i) => ({ name: `denied: ${r}`, cls: `s-${i % 8}`, get: (p) => (p.denied || {})[r] || 0 }))]),
      chart('Status classes', 'chart-status', points,
        classes.map((c, i) => ({ name: c, cls: c.startsWith('2') ? 's-allowed' : `s-${i % 8}`, get: (p) => (p.status || {})[c] || 0 }))),
    ];
    const routes = routeTotals(totals, points);
    if (routes.length) charts.push(routeChart(routes));
    const latency = latencySeries(points);
    if (latency) charts.push(latency);
    section.replaceChildren(...head,
      el('div', { class: 'totals', id: 'usage-totals' },
        el('div', {}, el('b', { id: 'usage-allowed', text: totals.allowed || 0 }), 'allowed'),
        el('div', {}, el('b', { id: 'usage-denied', text: deniedTotal }), 'denied'),
        ...['p50', 'p95', 'p99'].filter((p) => typeof (totals.latency_ms || {})[p] === 'number')
          .map((p) => el('div', {}, el('b', { id: `usage-${p}`, text: `${totals.latency_ms[p]} ms` }), `${p} latency`))),
      el('p', { class: 'muted', text: `${fmtTime(report.from)} – ${fmtTime(report.to)}, one bar per ${report.step} s. Gateways report usage every few seconds.` }),
      el('div', { class: 'charts' }, charts));
  }

  // Stacked bars, one per point, one colour per series; an SVG drawn here.
  function chart(title, id, points, series) {
    const W = 600; const H = 220; const left = 40; const bottom = 24; const top = 8;
    const sums = points.map((p) => series.reduce((a, s) => a + s.get(p), 0));
    const max = Math.max(1, ...sums);
    const plotH = H - bottom - top;
    const bw = (W - left) / Math.max(1, points.length);
    const graph = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, id });
    graph.append(svg('line', { class: 'axis', x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
    graph.append(svg('text', { x: 4, y: top + 10, text: max }));
    graph.append(svg('text', { x: 4, y: H - bottom, text: 0 }));
    points.forEach((p, i) => {
      let y = H - bottom;
      for (const s of series) {
        const v = s.get(p);
        if (!v) continue;
        const h = (v / max) * plotH;
        y -= h;
        graph.append(svg('rect', { class: s.cls, x: (left + i * bw + bw * 0.1).toFixed(1), y: y.toFixed(1), width: Math.max(1, bw * 0.8).toFixed(1), height: h.toFixed(1) },
          svg('title', { text: `${fmtTime(p.start)}: ${s.name} ${v}` })));
      }
    });
    const labels = points.length ? [0, Math.floor(points.length / 2), points.length - 1] : [];
    for (const i of [...new Set(labels)]) {
      const anchor = i === 0 ? 'start' : i === points.length - 1 ? 'end' : 'middle';
      const x = i === points.length - 1 ? W : left + i * bw;
      graph.append(svg('text', { x: x.toFixed(1), y: H - 6, 'text-anchor': anchor, text: fmtTime(points[i].start).slice(11, 16) }));
    }
    return el('div', { class: 'chart' }, el('h3', { text: title }), graph,
      series.length ? el('div', { class: 'legend' }, series.map((s) => el('span', { class: s.cls, text: s.name })))
        : el('p', { class: 'muted', text: 'No data in this range.' }));
  }

  // Per-route counts, when the usage report has them (`routes` in totals or points).
  function routeTotals(totals, points) {
    const sum = {};
    const addAll = (routes) => {
      if (!routes || typeof routes !== 'object') return;
      for (const [route, value] of Object.entries(routes)) {
        const n = typeof value === 'number' ? value
          : (value.requests ?? ((value.allowed || 0) + Object.values(value.denied || {}).reduce((a, b) => a + b, 0)));
        sum[route] = (sum[route] || 0) + (Number(n) || 0);
      }
    };
    if (totals.routes) addAll(totals.routes);
    else for (const p of points) addAll(p.routes);
    return Object.entries(sum).sort((a, b) => b[1] - a[1]).slice(0, 12);
  }

  function routeChart(routes) {
    const W = 600; const row = 22; const H = routes.length * row + 8; const left = 180;
    const max = Math.max(1, ...routes.map((r) => r[1]));
    const graph = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Requests by route', id: 'chart-routes' });
    routes.forEach(([route, n], i) => {
      graph.append(svg('text', { x: 4, y: i * row + 16, text: route.length > 28 ? `${route.slice(0, 27)}…` : route }));
      graph.append(svg('rect', { class: 's-3', x: left, y: i * row + 4, height: row - 8, width: Math.max(1, ((W - left - 50) * n) / max).toFixed(1) }));
      graph.append(svg('text', { x: (left + ((W - left - 50) * n) / max + 6).toFixed(1), y: i * row + 16, text: n }));
    });
    return el('div', { class: 'chart' }, el('h3', { text: 'Requests by route' }), graph);
  }

  // p50/p95/p99 lines, when the points carry them.
  function latencySeries(points) {
    const names = ['p50', 'p95', 'p99'];
    // `latency_ms: {p50, p95, p99}` per point (the histogram itself is `latency`).
    const value = (p, n) => {
      const v = (p.latency_ms || {})[n] ?? p[n];
      return typeof v === 'number' ? v : null;
    };
    if (!points.some((p) => names.some((n) => value(p, n) !== null))) return null;
    const W = 600; const H = 220; const left = 40; const bottom = 24; const top = 8;
    const max = Math.max(1, ...points.flatMap((p) => names.map((n) => value(p, n) || 0)));
    const step = (W - left) / Math.max(1, points.length - 1);
    const graph = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Latency percentiles', id: 'chart-latency' });
    graph.append(svg('line', { class: 'axis', x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
    graph.append(svg('text', { x: 4, y: top + 10, text: `${max} ms` }));
    names.forEach((n, k) => {
      const coords = points.map((p, i) => [p, i]).filter(([p]) => value(p, n) !== null)
        .map(([p, i]) => `${(left + i * step).toFixed(1)},${(H - bottom - (value(p, n) / max) * (H - bottom - top)).toFixed(1)}`);
      if (coords.length) graph.append(svg('polyline', { class: `line s-${k + 1}`, points: coords.join(' ') }));
    });
    return el('div', { class: 'chart' }, el('h3', { text: 'Latency percentiles (ms)' }), graph,
      el('div', { class: 'legend' }, names.map((n, k) => el('span', { class: `s-${k + 1}`, text: n }))));
  }

  // ── audit ────────────────────────────────────────────────────────────────────────────────

  function renderAudit() {
    const action = el('select', { id: 'audit-action' }, el('option', { value: '', text: 'any' }),
      AUDIT_ACTIONS.map((a) => el('option', { value: a, text: a })));
    const target = el('input', { id: 'audit-target', placeholder: 'key id' });
    const actor = el('input', { id: 'audit-actor', placeholder: 'key id' });
    const outcome = el('input', { id: 'audit-outcome', placeholder: 'ok, denied…' });
    const from = el('input', { id: 'audit-from', type: 'datetime-local' });
    const to = el('input', { id: 'audit-to', type: 'datetime-local' });
    const rows = el('tbody', { id: 'audit-rows' });
    const more = el('button', { type: 'button', class: 'secondary', id: 'audit-more', hidden: true, text: 'Older entries' });
    const problem = errorBox();
    let cursor = null;
    const form = el('form', { class: 'panel row', method: 'post' },
      el('label', {}, 'Action', action), el('label', {}, 'Target', target),
      el('label', {}, 'Actor', actor), el('label', {}, 'Outcome', outcome),
      el('label', {}, 'From', from), el('label', {}, 'To', to),
      el('button', { type: 'submit', id: 'audit-apply', text: 'Apply' }));
    const fetchPage = async (reset) => {
      problem.hidden = true;
      const query = new URLSearchParams({ limit: '50' });
      for (const [name, input] of [['action', action], ['target', target], ['actor', actor], ['outcome', outcome]]) {
        if (input.value.trim()) query.set(name, input.value.trim());
      }
      try {
        if (from.value) query.set('from', rfc3339(from.value));
        if (to.value) query.set('to', rfc3339(to.value));
        if (!reset && cursor) query.set('cursor', cursor);
        const page = await api('GET', `/api/v1/audit?${query}`);
        if (reset) rows.replaceChildren();
        for (const e of page.entries || []) {
          rows.append(el('tr', {},
            el('td', { 'data-label': 'When', text: fmtTime(e.at) }),
            el('td', { 'data-label': 'Action', text: e.action }),
            el('td', { 'data-label': 'Actor', class: 'mono', text: e.actor || '—' }),
            el('td', { 'data-label': 'Source', class: 'mono', text: e.source || '—' }),
            el('td', { 'data-label': 'Target', class: 'mono' }, e.target ? el('a', { href: `#/key/${encodeURIComponent(e.target)}`, text: e.target }) : '—'),
            el('td', { 'data-label': 'Outcome', text: e.outcome }),
            el('td', { 'data-label': 'Detail', class: 'mono', text: e.detail ? JSON.stringify(e.detail) : '' })));
        }
        if (!rows.children.length) rows.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'No entries.' })));
        cursor = page.next_cursor;
        more.hidden = !cursor;
      } catch (error) {
        showError(problem, error);
      }
    };
    form.addEventListener('submit', (event) => { event.preventDefault(); fetchPage(true); });
    more.addEventListener('click', () => fetchPage(false));
    show(el('h1', { text: 'Audit log' }),
      isAdmin() ? null : el('p', { class: 'muted', text: 'Entries about your own keys.' }),
      form, problem,
      el('table', { class: 'cards', id: 'audit-table' },
        el('thead', {}, el('tr', {}, ['When', 'Action', 'Actor', 'Source', 'Target', 'Outcome', 'Detail'].map((t) => el('th', { text: t })))),
        rows),
      el('div', { class: 'pager' }, more));
    state.render = null;
    fetchPage(true);
  }

  // ── admin: signing keys and fleet ────────────────────────────────────────────────────────

  function genericTable(id, items, columns) {
    return el('table', { class: 'cards', id },
      el('thead', {}, el('tr', {}, columns.map(([, label]) => el('th', { text: label })))),
      el('tbody', {}, items.length ? items.map((item) => el('tr', {}, columns.map(([name, label]) => el('td', {
        'data-label': label,
        text: /_at$|_from$|not_after/.test(name) ? fmtTime(item[name]) : typeof item[name] === 'boolean' ? (item[name] ? 'yes' : 'no') : fmtValue(item[name]),
      })))) : el('tr', {}, el('td', { colspan: columns.length, class: 'muted', text: 'None.' }))));
  }

  async function renderSigningKeys() {
    const box = el('div', {}, el('p', { class: 'muted', text: 'Loading…' }));
    show(el('h1', { text: 'Signing keys' }),
      el('p', { class: 'muted', text: 'The keys that sign JWT API keys; gateways fetch their public halves from /.well-known/jwks.json.' }), box);
    state.render = null;
    try {
      const answer = await api('GET', '/api/v1/signing-keys');
      const items = answer.signing_keys || [];
      const columns = [['kid', 'kid'], ['algorithm', 'Algorithm'], ['created_at', 'Created'],
        ['signs_from', 'Signs from'], ['not_after', 'Tokens valid until'],
        ['retired_at', 'Retired'], ['published', 'In the JWKS']];
      if (answer.configured === false) {
        box.replaceChildren(el('p', { class: 'unavailable', text: 'JWT signing is not configured (KEYGATE_SIGNING_KEY_SECRET is not set).' }));
        return;
      }
      box.replaceChildren(genericTable('signing-keys-table', items, columns));
    } catch (error) {
      box.replaceChildren(el('p', { class: 'error', text: error.message }));
    }
  }

  async function renderFleet() {
    const box = el('div', { id: 'fleet' }, el('p', { class: 'muted', text: 'Loading…' }));
    show(el('h1', { text: 'Gateway fleet' }),
      el('p', { class: 'muted', text: 'The Envoys that follow the revocation feed and report usage.' }), box);
    state.render = null;
    try {
      const answer = await api('GET', '/api/v1/fleet');
      const items = Array.isArray(answer) ? answer : (answer.gateways || []);
      box.replaceChildren(genericTable('fleet-table', items, [
        ['gateway', 'Gateway'], ['last_feed_sequence', 'Feed sequence'], ['last_feed_at', 'Last feed request'],
        ['last_usage_batch_at', 'Last usage batch'], ['last_usage_rows', 'Rows in it']]));
    } catch (error) {
      box.replaceChildren(el('p', { class: 'unavailable', id: 'fleet-unavailable', text: error.status === 404 ? 'Fleet view not available on this key service.' : error.message }));
    }
  }

  // ── request-signing material (on the key detail view) ────────────────────────────────────

  const SIGNING_ALGS = [
    ['ed25519', 'Ed25519 public key'],
    ['ecdsa-p256-sha256', 'ECDSA P-256 public key'],
    ['hmac-sha256', 'hmac-sha256 (secret shown once)'],
  ];

  // `SHA256:<base64>` of a public key given as base64url of its raw bytes, or null where the
  // browser has no WebCrypto (plain http off localhost).
  async function fingerprint(raw) {
    if (!raw || !(window.crypto && window.crypto.subtle)) return null;
    try {
      const b64 = raw.replace(/-/g, '+').replace(/_/g, '/');
      const text = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
      const bytes = Uint8Array.from(text, (c) => c.charCodeAt(0));
      const digest = new Uint8Array(await window.crypto.subtle.digest('SHA-256', bytes));
      return `SHA256:${btoa(String.fromCharCode(...digest)).replace(/=+$/, '')}`;
    } catch (_) {
      return null;
    }
  }

  // The "Request signing" panel of key `id`: what is registered, register or replace, remove.
  // `reload` reloads the key (which redraws the panel through `draw`). An HMAC secret lives only
  // in its one-time box and this closure, until "I have stored it" or any navigation.
  function signingPanel(id, reload) {
    const path = `/api/v1/auth/keys/${encodeURIComponent(id)}/signing-material`;
    const info = el('div', { id: 'signing-info' }, el('p', { class: 'muted', text: 'Loading…' }));
    const once = el('div');
    const problem = errorBox();
    const alg = el('select', { id: 'signing-alg' }, SIGNING_ALGS.map(([v, t]) => el('option', { value: v, text: t })));
    const publicKey = el('textarea', {
      id: 'signing-public-key', spellcheck: 'false',
      placeholder: '-----BEGIN PUBLIC KEY----- …, a public JWK, or base64url of the raw key',
    });
    const keyLabel = el('label', { class: 'wide' }, 'Public key (SubjectPublicKeyInfo PEM, JWK or base64url)', publicKey);
    alg.addEventListener('change', () => { keyLabel.hidden = alg.value === 'hmac-sha256'; });
    const submit = el('button', { id: 'signing-submit', type: 'submit', text: 'Register' });
    const form = el('form', { id: 'signing-form', method: 'post' },
      el('div', { class: 'form-grid' }, el('label', {}, 'Algorithm', alg), keyLabel),
      problem, el('div', { class: 'row' }, submit));
    let current = null;
    let drawnFor;

    const showSecret = (value) => {
      let secret = value;
      const code = el('code', { id: 'signing-secret', text: secret });
      const status = el('span', { class: 'muted', role: 'status' });
      const forget = () => { secret = null; once.replaceChildren(); };
      once.replaceChildren(el('div', { class: 'panel secret', id: 'signing-once' },
        el('p', { class: 'warning', text: 'Copy this HMAC secret now. It is shown only once: Keygate will not show it again (registering hmac-sha256 again makes a new one and ends this one).' }),
        code,
        el('div', { class: 'actions' },
          copyButton('copy-signing-secret', () => secret, code, status),
          el('button', { id: 'signing-once-done', type: 'button', class: 'secondary', text: 'I have stored it', onclick: forget }),
          status)));
      window.addEventListener('hashchange', forget, { once: true });
    };

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      problem.hidden = true;
      const body = { alg: alg.value };
      if (alg.value !== 'hmac-sha256') {
        if (!publicKey.value.trim()) {
          showError(problem, new Error('Paste the public key (PEM, JWK or base64url).'));
          return;
        }
        body.public_key = publicKey.value.trim();
      }
      if (current && !(await confirmAction('Replace signing material',
        `Replace this key's ${current.alg} material? Requests signed with the old one are refused from then on.`))) return;
      submit.disabled = true;
      try {
        const answer = await api('PUT', path, body);
        publicKey.value = '';
        if (answer && answer.secret) {
          showSecret(answer.secret);
          delete answer.secret;
        }
        toast('Signing material registered');
        await reload();
      } catch (error) {
        showError(problem, error);
      } finally {
        submit.disabled = false;
      }
    });

    const remove = async () => {
      if (!current || !(await confirmAction('Remove signing material',
        `Remove this key's ${current.alg} material? Routes that require signed requests refuse the key from then on.`))) return;
      problem.hidden = true;
      try {
        await api('DELETE', path);
        toast('Signing material removed');
        await reload();
      } catch (error) {
        showError(problem, error);
      }
    };

    // Redrawn only when the material changed: a live usage event must not touch it.
    const draw = (key) => {
      const material = key.signing_material || null;
      const now = JSON.stringify(material);
      if (now === drawnFor) return;
      drawnFor = now;
      current = material;
      submit.textContent = material ? 'Replace' : 'Register';
      if (!material) {
        info.replaceChildren(el('p', { class: 'muted', id: 'signing-none', text: 'None registered: routes that require signed requests refuse this key.' }));
        return;
      }
      const hmac = material.alg === 'hmac-sha256';
      const print = el('dd', { class: 'mono', id: 'signing-fingerprint', text: hmac ? 'hmac-sha256' : '…' });
      info.replaceChildren(
        el('dl', { class: 'fields', id: 'signing-fields' },
          el('dt', { text: 'Algorithm' }), el('dd', { class: 'mono', id: 'signing-alg-shown', text: material.alg }),
          el('dt', { text: hmac ? 'Secret' : 'Public key fingerprint' }), print,
          hmac ? [el('dt', { text: 'Generation' }), el('dd', { text: fmtValue(material.generation) })]
            : [el('dt', { text: 'Public key (base64url)' }), el('dd', { class: 'mono', text: material.public_key })]),
        el('div', { class: 'actions' },
          el('button', { id: 'signing-remove', type: 'button', class: 'danger', text: 'Remove signing material', onclick: remove })));
      if (hmac) print.textContent = 'hmac-sha256 (derived by Keygate, never shown again)';
      else fingerprint(material.public_key).then((fp) => { print.textContent = fp || material.public_key; });
    };

    const node = el('section', { class: 'panel', id: 'key-signing' },
      el('h2', { text: 'Request signing' }),
      el('p', { class: 'muted', text: 'The material this key signs requests with on routes that require RFC 9421 signatures. Registering replaces what is there.' }),
      info, once, form);
    return { node, draw };
  }

  // ── admin: blocked addresses ─────────────────────────────────────────────────────────────

  // Seconds from "90", "90s", "15m", "12h" or "7d".
  function durationSeconds(text) {
    const match = /^(\d+)\s*([smhd]?)$/i.exec(text.trim());
    if (!match) throw new Error(`not a duration: ${text} (e.g. 15m, 12h, 7d)`);
    return Number(match[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[match[2].toLowerCase()];
  }

  // Calls `refresh` every `ms` while `node` is on the page (views without live events).
  function poll(node, refresh, ms) {
    const timer = setInterval(() => {
      if (!node.isConnected || !state.session) clearInterval(timer);
      else refresh();
    }, ms);
  }

  function renderBlocks() {
    const cidr = el('input', { id: 'block-cidr', required: true, maxlength: 64, spellcheck: 'false', placeholder: '198.51.100.7 or 203.0.113.0/24' });
    const expires = el('input', { id: 'block-expires', value: '1h', placeholder: '15m, 12h, 7d (at most 30d)' });
    const until = el('input', { id: 'block-until', type: 'datetime-local' });
    const reason = el('input', { id: 'block-reason', maxlength: 256, placeholder: 'credential stuffing' });
    const submit = el('button', { id: 'block-submit', type: 'submit', text: 'Block' });
    const problem = errorBox();
    const form = el('form', { id: 'block-form', class: 'panel', method: 'post' },
      el('h2', { text: 'Block an address or network' }),
      el('div', { class: 'form-grid' },
        el('label', {}, 'Address or CIDR', cidr),
        el('label', {}, 'Expires in', expires),
        el('label', {}, 'Or until', until),
        el('label', {}, 'Reason', reason)),
      problem, el('div', { class: 'row' }, submit));
    const counts = el('p', { class: 'muted', id: 'blocks-counts' });
    const rows = el('tbody', { id: 'block-rows' }, el('tr', {}, el('td', { colspan: 8, class: 'muted', text: 'Loading…' })));
    const listProblem = errorBox();
    let drawnFor = null;
    let loading = false;
    // One of the two: typing in one clears the other.
    until.addEventListener('input', () => { if (until.value) expires.value = ''; });
    expires.addEventListener('input', () => { if (expires.value) until.value = ''; });

    const remove = async (block) => {
      const text = block.source === 'automatic'
        ? `Lift the automatic block on ${block.cidr}? Every Envoy lets it through again within a second, and its failure count starts again.`
        : `Lift the block on ${block.cidr}? Every Envoy lets it through again within a second.`;
      if (!(await confirmAction('Remove block', text))) return;
      try {
        await api('DELETE', `/api/v1/blocks/${encodeURIComponent(block.id)}`);
        toast(`Block on ${block.cidr} removed`);
        await refresh();
      } catch (error) {
        showError(listProblem, error);
      }
    };

    const refresh = async () => {
      if (loading) return;
      loading = true;
      try {
        const answer = await api('GET', '/api/v1/blocks');
        listProblem.hidden = true;
        const blocks = answer.blocks || [];
        const now = JSON.stringify(answer);
        if (now === drawnFor) return;
        drawnFor = now;
        counts.textContent = `${answer.operator || 0} operator, ${answer.automatic || 0} automatic block${answer.automatic === 1 ? '' : 's'} in force. The list refreshes every 10 s.`;
        rows.replaceChildren(...blocks.map((b) => el('tr', { 'data-block-id': b.id },
          el('td', { 'data-label': 'Network', class: 'mono', text: b.cidr }),
          el('td', { 'data-label': 'Source' }, badge(b.source)),
          el('td', { 'data-label': 'Reason', text: b.reason || '—' }),
          el('td', { 'data-label': 'By', class: 'mono', text: b.created_by || '—' }),
          el('td', { 'data-label': 'Failures', class: 'num', text: fmtValue(b.failures) }),
          el('td', { 'data-label': 'Since', text: fmtTime(b.created_at) }),
          el('td', { 'data-label': 'Expires', text: fmtTime(b.expires_at) }),
          el('td', { 'data-label': '' }, el('button', { type: 'button', class: 'danger remove-block', text: 'Remove', onclick: () => remove(b) })))));
        if (!blocks.length) rows.append(el('tr', {}, el('td', { colspan: 8, class: 'muted', text: 'No blocks in force.' })));
      } catch (error) {
        if (rows.isConnected) showError(listProblem, error);
      } finally {
        loading = false;
      }
    };

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      problem.hidden = true;
      let request;
      try {
        request = { cidr: cidr.value.trim() };
        if (until.value && expires.value.trim()) throw new Error('Give either "Expires in" or "Or until", not both.');
        if (until.value) {
          request.expires_in_seconds = Math.ceil((new Date(rfc3339(until.value)).getTime() - Date.now()) / 1000);
          if (request.expires_in_seconds < 1) throw new Error('"Or until" is in the past.');
        } else if (expires.value.trim()) request.expires_in_seconds = durationSeconds(expires.value);
        if (reason.value.trim()) request.reason = reason.value.trim();
      } catch (error) {
        showError(problem, error);
        return;
      }
      submit.disabled = true;
      try {
        const block = await api('POST', '/api/v1/blocks', request);
        toast(`${block.cidr} blocked until ${fmtTime(block.expires_at)}`);
        cidr.value = '';
        reason.value = '';
        await refresh();
      } catch (error) {
        showError(problem, error);
      } finally {
        submit.disabled = false;
      }
    });

    show(el('h1', { text: 'Blocked addresses' }),
      el('p', { class: 'muted', text: 'Every request from a blocked address gets 429 at every Envoy, before any key is read. Operator blocks reach the Envoys through the revocation feed; automatic blocks are those Envoys reported after too many authentication failures. Every block ends by itself.' }),
      form, counts, listProblem,
      el('table', { class: 'cards', id: 'blocks-table' },
        el('thead', {}, el('tr', {}, ['Network', 'Source', 'Reason', 'By', 'Failures', 'Since', 'Expires', ''].map((t) => el('th', { text: t })))),
        rows),
      el('div', { class: 'pager' }, el('button', { type: 'button', class: 'secondary', id: 'blocks-refresh', text: 'Refresh', onclick: () => { drawnFor = null; refresh(); } })));
    state.render = null;
    poll(rows, refresh, 10000);
    return refresh();
  }

  // ── admin: webhooks ──────────────────────────────────────────────────────────────────────

  // The events a webhook can ask for (`AlertKind` in the key service), in the API's order.
  const WEBHOOK_EVENTS = ['key.created', 'key.rotated', 'key.revoked', 'key.expiring',
    'address.blocked', 'auth.failure_spike', 'key.new_country', 'key.leaked'];

  async function renderWebhooks() {
    const url = el('input', { id: 'webhook-url', type: 'url', required: true, maxlength: 2048, spellcheck: 'false', placeholder: 'https://hooks.example.com/keygate' });
    const description = el('input', { id: 'webhook-description', maxlength: 256, placeholder: 'SIEM' });
    const all = el('input', { id: 'webhook-all', type: 'checkbox', checked: true });
    const boxes = WEBHOOK_EVENTS.map((name) => el('input', { type: 'checkbox', class: 'webhook-event', value: name, disabled: true }));
    all.addEventListener('change', () => { for (const box of boxes) box.disabled = all.checked; });
    const submit = el('button', { id: 'webhook-submit', type: 'submit', text: 'Add webhook' });
    const problem = errorBox();
    const form = el('form', { id: 'webhook-form', class: 'panel', method: 'post' },
      el('h2', { text: 'Add a webhook' }),
      el('div', { class: 'form-grid' },
        el('label', { class: 'wide' }, 'URL (http or https)', url),
        el('label', {}, 'Description', description)),
      el('fieldset', { class: 'events' }, el('legend', { text: 'Events' }),
        el('label', { class: 'inline' }, all, 'all (*)'),
        WEBHOOK_EVENTS.map((name, i) => el('label', { class: 'inline' }, boxes[i], name))),
      problem, el('div', { class: 'row' }, submit));
    const box = el('div', {}, el('p', { class: 'muted', text: 'Loading…' }));

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      problem.hidden = true;
      const events = all.checked ? ['*'] : boxes.filter((b) => b.checked).map((b) => b.value);
      if (!events.length) {
        showError(problem, new Error('Pick at least one event (or all).'));
        return;
      }
      const request = { url: url.value.trim(), events };
      if (description.value.trim()) request.description = description.value.trim();
      submit.disabled = true;
      try {
        const created = await api('POST', '/api/v1/webhooks', request);
        showWebhookSecret(created);
      } catch (error) {
        showError(problem, error);
        submit.disabled = false;
      }
    });

    show(el('h1', { text: 'Webhooks' }),
      el('p', { class: 'muted', text: 'Security events are posted to these URLs from a persisted outbox, signed with HMAC-SHA256 over the timestamp and the body, retried with back-off (at least once, with an idempotency id).' }),
      form, box);
    state.render = null;
    try {
      const answer = await api('GET', '/api/v1/webhooks');
      const hooks = answer.webhooks || [];
      box.replaceChildren(el('table', { class: 'cards', id: 'webhooks-table' },
        el('thead', {}, el('tr', {}, ['URL', 'Events', 'Description', 'Created', ''].map((t) => el('th', { text: t })))),
        el('tbody', { id: 'webhook-rows' }, hooks.length ? hooks.map((h) => el('tr', { 'data-webhook-id': h.id },
          el('td', { 'data-label': 'URL', class: 'mono' }, el('a', { href: `#/webhook/${encodeURIComponent(h.id)}`, text: h.url })),
          el('td', { 'data-label': 'Events', text: fmtValue(h.events) }),
          el('td', { 'data-label': 'Description', text: h.description || '—' }),
          el('td', { 'data-label': 'Created', text: fmtTime(h.created_at) }),
          el('td', { 'data-label': '' }, el('a', { href: `#/webhook/${encodeURIComponent(h.id)}`, text: 'Deliveries' }))))
          : el('tr', {}, el('td', { colspan: 5, class: 'muted', text: 'No webhooks yet.' })))));
    } catch (error) {
      box.replaceChildren(el('p', { class: 'error', text: error.message }));
    }
  }

  // The one-time view of a new webhook's signing secret (as for a new key: only in this view's
  // DOM and closure, gone at the next navigation).
  function showWebhookSecret(created) {
    let secret = created.secret;
    delete created.secret;
    const code = el('code', { id: 'webhook-secret', text: secret });
    const copied = el('span', { class: 'muted', role: 'status' });
    show(
      el('h1', { text: 'Webhook added' }),
      el('div', { class: 'panel secret', id: 'webhook-once' },
        el('p', { class: 'warning', text: 'Copy this signing secret now. It is shown only once: Keygate signs every delivery with it but never shows it again.' }),
        code,
        el('div', { class: 'actions' },
          copyButton('copy-webhook-secret', () => secret, code, copied),
          el('a', { id: 'webhook-once-done', href: `#/webhook/${encodeURIComponent(created.id)}` },
            el('button', { type: 'button', class: 'secondary', text: 'I have stored it — show the webhook' })),
          copied),
        el('dl', { class: 'fields' },
          el('dt', { text: 'ID' }), el('dd', { class: 'mono', id: 'webhook-once-id', text: created.id }),
          el('dt', { text: 'URL' }), el('dd', { class: 'mono', text: created.url }),
          el('dt', { text: 'Events' }), el('dd', { text: fmtValue(created.events) }))),
    );
    state.render = null;
    window.addEventListener('hashchange', () => { secret = null; }, { once: true });
  }

  async function renderWebhook(id) {
    const base = `/api/v1/webhooks/${encodeURIComponent(id)}`;
    const problem = errorBox();
    const fields = el('div', { class: 'panel' }, el('p', { class: 'muted', text: 'Loading…' }));
    const rows = el('tbody', { id: 'delivery-rows' }, el('tr', {}, el('td', { colspan: 9, class: 'muted', text: 'Loading…' })));
    const title = el('h1', { text: 'Webhook' });
    let drawnFor = null;
    let loading = false;

    const redeliver = async (d) => {
      if (!(await confirmAction('Redeliver', `Send this ${d.event} delivery again now, with the same idempotency id?`))) return;
      try {
        await api('POST', `${base}/deliveries/${encodeURIComponent(d.id)}/redeliver`);
        toast('Redelivery queued');
        drawnFor = null;
        await refresh();
      } catch (error) {
        showError(problem, error);
      }
    };

    const refresh = async () => {
      if (loading) return;
      loading = true;
      try {
        const answer = await api('GET', `${base}/deliveries?limit=100`);
        const deliveries = answer.deliveries || [];
        const now = JSON.stringify(deliveries);
        if (now === drawnFor) return;
        drawnFor = now;
        rows.replaceChildren(...deliveries.map((d) => el('tr', { 'data-delivery-id': d.id },
          el('td', { 'data-label': 'Event', class: 'mono', text: d.event }),
          el('td', { 'data-label': 'Status' }, badge(d.status)),
          el('td', { 'data-label': 'Attempts', class: 'num', text: d.attempts }),
          el('td', { 'data-label': 'Created', text: fmtTime(d.created_at) }),
          el('td', { 'data-label': 'Next attempt', text: fmtTime(d.next_attempt_at) }),
          el('td', { 'data-label': 'Last HTTP status', class: 'num', text: fmtValue(d.last_status) }),
          el('td', { 'data-label': 'Last error', class: 'last-error', text: d.last_error || '—' }),
          el('td', { 'data-label': 'Finished', text: fmtTime(d.finished_at) }),
          el('td', { 'data-label': '' }, el('button', { type: 'button', class: 'secondary redeliver', text: 'Redeliver', onclick: () => redeliver(d) })))));
        if (!deliveries.length) rows.append(el('tr', {}, el('td', { colspan: 9, class: 'muted', text: 'No deliveries yet.' })));
      } catch (error) {
        if (rows.isConnected) showError(problem, error);
      } finally {
        loading = false;
      }
    };

    let hook;
    try {
      hook = await api('GET', base);
    } catch (error) {
      if (error.status === 404) {
        show(el('h1', { text: 'Webhook not found' }), el('p', { class: 'muted' }, el('a', { href: '#/webhooks', text: 'All webhooks' })));
        state.render = null;
        return;
      }
      throw error;
    }
    title.textContent = `Webhook ${hook.id}`;
    fields.replaceChildren(el('dl', { class: 'fields', id: 'webhook-fields' },
      el('dt', { text: 'ID' }), el('dd', { class: 'mono', text: hook.id }),
      el('dt', { text: 'URL' }), el('dd', { class: 'mono', 'data-field': 'url', text: hook.url }),
      el('dt', { text: 'Events' }), el('dd', { text: fmtValue(hook.events) }),
      el('dt', { text: 'Description' }), el('dd', { text: hook.description || '—' }),
      el('dt', { text: 'Created' }), el('dd', { text: fmtTime(hook.created_at) })));
    const remove = el('button', {
      id: 'webhook-remove', type: 'button', class: 'danger', text: 'Remove webhook',
      onclick: async () => {
        if (!(await confirmAction('Remove webhook', `Remove the webhook to ${hook.url}? Its pending deliveries are dropped.`))) return;
        try {
          await api('DELETE', base);
          toast('Webhook removed');
          location.hash = '#/webhooks';
        } catch (error) {
          showError(problem, error);
        }
      },
    });
    show(title, problem, fields, el('div', { class: 'actions' }, remove),
      el('h2', { text: 'Deliveries' }),
      el('p', { class: 'muted', text: 'Newest first (the last 100); refreshed every 5 s.' }),
      el('table', { class: 'cards', id: 'deliveries-table' },
        el('thead', {}, el('tr', {}, ['Event', 'Status', 'Attempts', 'Created', 'Next attempt', 'Last HTTP status', 'Last error', 'Finished', '']
          .map((t) => el('th', { text: t })))),
        rows),
      el('div', { class: 'pager' }, el('button', { type: 'button', class: 'secondary', id: 'deliveries-refresh', text: 'Refresh', onclick: () => { drawnFor = null; refresh(); } })));
    state.render = null;
    poll(rows, refresh, 5000);
    await refresh();
  }

  // ── routing ──────────────────────────────────────────────────────────────────────────────

  function route() {
    const hash = location.hash || '#/keys';
    const path = hash.replace(/^#\/?/, '').split('/');
    for (const link of document.querySelectorAll('#nav a')) {
      link.classList.toggle('current', link.dataset.route === (path[0] === 'webhook' ? 'webhooks' : path[0]));
    }
    state.render = null;
    if (!state.session) {
      renderLogin();
      return;
    }
    const fail = (error) => show(el('p', { class: 'error', text: error.message }));
    switch (path[0]) {
      case 'login':
      case 'keys': renderKeys().catch(fail); break;
      case 'create': renderCreate(); break;
      case 'key': renderKey(decodeURIComponent(path[1] || '')).catch(fail); break;
      case 'audit': renderAudit(); break;
      case 'signing-keys': (isAdmin() ? renderSigningKeys() : renderKeys()).catch(fail); break;
      case 'fleet': (isAdmin() ? renderFleet() : renderKeys()).catch(fail); break;
      case 'blocks': (isAdmin() ? renderBlocks() : renderKeys()).catch(fail); break;
      case 'webhooks': (isAdmin() ? renderWebhooks() : renderKeys()).catch(fail); break;
      case 'webhook': (isAdmin() ? renderWebhook(decodeURIComponent(path[1] || '')) : renderKeys()).catch(fail); break;
      default: renderKeys().catch(fail);
    }
  }

  async function start() {
    document.getElementById('logout').addEventListener('click', logout);
    window.addEventListener('hashchange', route);
    if (sessionStorage.getItem(HINT)) {
      try {
        loggedIn(await api('GET', '/ui/api/session'));
      } catch (_) {
        sessionStorage.removeItem(HINT);
      }
    }
    route();
  }

  start();
})();
