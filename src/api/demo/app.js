// ringcast demo page: one WebSocket client (the node's listener), the client commands of
// docs/api.md, and the HTTP API of the page's own origin. No framework, no build step.
//
// Every text that comes from the network (messages from other clients, pushes, error
// reasons, group ids) reaches the DOM through textContent or a form control's value only.
'use strict';

const $ = (id) => document.getElementById(id);

const LOG_LINES_MAX = 500;          // oldest lines go first
const COMMAND_TIMEOUT_MS = 5000;    // a command without an answer by then is reported
const POLL_INTERVAL_MS = 1000;
const RECONNECT_DELAY_MAX_MS = 10000;

const state = {
  config: null,          // /demo/config.json
  ws: null,
  url: '',
  clientId: null,
  nextRequest: 1,
  pending: new Map(),    // request id -> resolve
  groups: new Map(),     // group id -> {li, count}
  token: sessionStorage.getItem('ringcast-demo-token') || '',
  // The token the API last refused (401): polling waits for another one rather than adding
  // a refused request (and a daemon log line) every second.
  refusedToken: null,
  reconnectDelayMs: 500,
  reconnectTimer: null,
};

// ---- DOM helpers ------------------------------------------------------------------------

/** An element with text content (never HTML). */
function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (className) e.className = className;
  return e;
}

function clock() {
  return new Date().toLocaleTimeString([], { hour12: false });
}

/**
 * Append a line to the message log: kind is 'in' (received), 'out' (sent), 'sys', 'err'.
 * Returns the line's detail element, to be filled in later (a command's answer).
 */
function log(kind, text, detail) {
  const list = $('log');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const li = el('li', null, kind);
  li.append(el('time', clock()));
  li.append(el('span', text, 'text'));
  const d = el('span', detail ?? '', 'detail');
  li.append(d);
  list.append(li);
  while (list.childElementCount > LOG_LINES_MAX) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
  return d;
}

function setStatus(id, text, isError) {
  const p = $(id);
  p.textContent = text;
  p.classList.toggle('error', Boolean(isError));
}

// ---- WebSocket ----------------------------------------------------------------------------

function wsUrl() {
  // A URL in the fragment wins (#ws=ws://host:port/), for set-ups behind a proxy.
  const fragment = new URLSearchParams(location.hash.slice(1)).get('ws');
  if (fragment) return fragment;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  // ws_host is null when the node listens on every address: use the host this page came
  // from (location.hostname keeps an IPv6 address in brackets).
  const host = state.config.ws_host ?? location.hostname;
  return `${scheme}//${host}:${state.config.ws_port}/`;
}

function setConn(kind, text) {
  $('conn').dataset.state = kind;
  $('conn-text').textContent = text;
  $('reconnect').hidden = kind !== 'closed';
}

function connect() {
  clearTimeout(state.reconnectTimer);
  state.url = wsUrl();
  $('ws-url').textContent = state.url;
  setConn('connecting', 'connecting…');
  let ws;
  try {
    ws = new WebSocket(state.url);
  } catch (e) {
    setConn('closed', `cannot connect: ${e.message}`);
    return;
  }
  ws.binaryType = 'arraybuffer';
  state.ws = ws;
  ws.onopen = () => {
    state.reconnectDelayMs = 500;
    setConn('open', 'connected');
  };
  ws.onmessage = (e) => onFrame(e.data);
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    state.ws = null;
    state.clientId = null;
    for (const id of ['client-id', 'worker-id', 'connection-id']) $(id).textContent = '…';
    for (const resolve of state.pending.values()) resolve({ type: 'error', reason: 'disconnected' });
    state.pending.clear();
    const why = e.code === 1006 ? 'connection lost' : `closed ${e.code}${e.reason ? ' ' + e.reason : ''}`;
    const secs = Math.round(state.reconnectDelayMs / 100) / 10;
    setConn('closed', `${why}; retrying in ${secs} s`);
    log('sys', `WebSocket ${why}`);
    state.reconnectTimer = setTimeout(connect, state.reconnectDelayMs);
    state.reconnectDelayMs = Math.min(state.reconnectDelayMs * 2, RECONNECT_DELAY_MAX_MS);
  };
}

/** A frame from the server: the welcome, an answer to one of our commands, or a message. */
function onFrame(data) {
  if (typeof data !== 'string') {
    const bytes = new Uint8Array(data);
    const hex = Array.from(bytes.slice(0, 32), (b) => b.toString(16).padStart(2, '0')).join(' ');
    log('in', `[binary, ${bytes.length} bytes] ${hex}${bytes.length > 32 ? ' …' : ''}`);
    return;
  }
  let obj = null;
  if (data.startsWith('{')) {
    try { obj = JSON.parse(data); } catch { obj = null; }
  }
  if (obj && obj.type === 'welcome' && state.clientId === null && typeof obj.client_id === 'string') {
    welcome(obj);
    return;
  }
  // Only answers to requests this page made are taken as answers; anything else, even if it
  // looks like one, is a message someone sent.
  if (obj && (obj.type === 'ok' || obj.type === 'error' || obj.type === 'pong')
      && typeof obj.id === 'string' && state.pending.has(obj.id)) {
    const resolve = state.pending.get(obj.id);
    state.pending.delete(obj.id);
    resolve(obj);
    return;
  }
  log('in', data);
}

function welcome(w) {
  state.clientId = w.client_id;
  $('client-id').textContent = w.client_id;
  $('worker-id').textContent = String(w.worker_id);
  $('connection-id').textContent = String(w.connection_id);
  setConn('open', 'connected');
  log('sys', `connected as ${w.client_id}`);
  // A new connection is in no group: join again the ones this page was in.
  const groups = [...state.groups.keys()];
  for (const g of groups) {
    command({ cmd: 'add_group', group_id: g }).then((r) => {
      if (r.type !== 'ok') log('err', `rejoining ${g}: ${r.reason}`);
    });
  }
}

/** Send a command with a request id; resolves with the server's answer (or a local error). */
function command(cmd) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    return Promise.resolve({ type: 'error', reason: 'not connected' });
  }
  const id = `r${state.nextRequest++}`;
  ws.send(JSON.stringify({ ...cmd, id }));
  return new Promise((resolve) => {
    state.pending.set(id, resolve);
    setTimeout(() => {
      if (state.pending.delete(id)) resolve({ type: 'error', reason: `no answer in ${COMMAND_TIMEOUT_MS / 1000} s` });
    }, COMMAND_TIMEOUT_MS);
  });
}

// ---- groups ---------------------------------------------------------------------------------

function renderTargets() {
  for (const [selectId, fixed] of [['chat-target', 1], ['push-target', 2]]) {
    const select = $(selectId);
    const chosen = select.value;
    while (select.options.length > fixed) select.remove(fixed);
    for (const g of state.groups.keys()) {
      const o = el('option', `group ${g}`);
      o.value = `group:${g}`;
      select.append(o);
    }
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : select.options[0].value;
  }
  $('group-empty').hidden = state.groups.size > 0;
}

async function join(group) {
  if (state.groups.has(group)) {
    setStatus('group-status', `already in ${group}`);
    return;
  }
  const r = await command({ cmd: 'add_group', group_id: group });
  if (r.type !== 'ok') {
    setStatus('group-status', `could not join ${group}: ${r.reason}`, true);
    return;
  }
  setStatus('group-status', `joined ${group}`);
  const li = el('li');
  li.dataset.group = group;
  li.append(el('span', group, 'name'));
  const count = el('span', '…', 'count');
  count.title = 'members on this node (GET /api/groups/{group})';
  li.append(count, el('span', 'members', 'unit'));
  const leaveButton = el('button', 'Leave', 'small');
  leaveButton.type = 'button';
  leaveButton.addEventListener('click', () => leave(group));
  li.append(leaveButton);
  $('group-list').append(li);
  state.groups.set(group, { li, count });
  renderTargets();
  // The chat box now talks to this group.
  $('chat-target').value = `group:${group}`;
  poll();
}

async function leave(group) {
  const entry = state.groups.get(group);
  if (!entry) return;
  const r = await command({ cmd: 'leave_group', group_id: group });
  if (r.type !== 'ok' && r.reason !== 'not connected' && r.reason !== 'disconnected') {
    setStatus('group-status', `could not leave ${group}: ${r.reason}`, true);
    return;
  }
  entry.li.remove();
  state.groups.delete(group);
  setStatus('group-status', `left ${group}`);
  renderTargets();
}

// ---- chat -----------------------------------------------------------------------------------

async function chat(target, message) {
  const cmd = target === '*'
    ? { cmd: 'send_to_all', message }
    : { cmd: 'send_to_group', group_id: target.slice('group:'.length), message };
  const where = target === '*' ? 'everyone' : `group ${cmd.group_id}`;
  // Logged before it is sent: the copies (yours too, when you are a recipient) may arrive
  // before the command's answer.
  const detail = log('out', `to ${where}: ${message}`, `${cmd.cmd}…`);
  const r = await command(cmd);
  if (r.type === 'ok') {
    const queued = typeof r.queued === 'number' ? `, queued to ${r.queued}` : '';
    detail.textContent = `${cmd.cmd}: accepted${queued}`;
  } else {
    detail.textContent = `${cmd.cmd}: refused`;
    detail.parentElement.className = 'err';
    log('err', `not sent to ${where}: ${r.reason}`);
  }
}

// ---- HTTP API -------------------------------------------------------------------------------

/** fetch() with the token, if any; resolves with {status, body} (body parsed from JSON). */
async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  let parsed = null;
  try { parsed = await r.json(); } catch { parsed = null; }
  if (r.status === 401) {
    state.refusedToken = state.token;
    needToken(parsed && parsed.error);
  }
  return { status: r.status, body: parsed };
}

function errorText(r) {
  return (r.body && typeof r.body.error === 'string') ? `${r.status}: ${r.body.error}` : `HTTP ${r.status}`;
}

function needToken(reason) {
  $('token-form').hidden = false;
  $('token-hint').hidden = false;
  if (reason) setStatus('stats-status', `API: ${reason}; enter the token`, true);
}

/** A shell-quoted word for the curl line. */
function shellQuote(s) {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

async function push(target, message) {
  let to;
  if (target === '*') to = { all: true };
  else if (target === 'me') {
    if (!state.clientId) {
      setStatus('push-result', 'not connected: no client id to push to', true);
      return;
    }
    to = { clients: [state.clientId] };
  } else to = { groups: [target.slice('group:'.length)] };
  const body = { data: message, to };
  setStatus('push-result', 'sending…');
  const curl = $('push-curl');
  curl.hidden = false;
  curl.textContent = `curl -X POST ${location.origin}/api/publish ${state.token ? '-H "Authorization: Bearer $TOKEN" ' : ''}`
    + `\\\n     -H 'Content-Type: application/json' -d ${shellQuote(JSON.stringify(body))}`;
  try {
    const r = await api('POST', '/api/publish', body);
    if (r.status === 200 && r.body) {
      const missed = r.body.shards_missed ? `, ${r.body.shards_missed} shard(s) missed` : '';
      const slow = r.body.slow_consumers ? `, ${r.body.slow_consumers} slow consumer(s)` : '';
      setStatus('push-result', `200: queued to ${r.body.queued} connection(s)${missed}${slow}`);
    } else {
      setStatus('push-result', errorText(r), true);
    }
  } catch (e) {
    setStatus('push-result', `request failed: ${e.message}`, true);
  }
}

// ---- live counts ----------------------------------------------------------------------------

let polling = false;

async function poll() {
  if (polling || state.refusedToken === state.token) return;
  polling = true;
  try {
    const s = await api('GET', '/api/stats');
    if (s.status === 200 && s.body) {
      $('stat-connections').textContent = String(s.body.connections);
      $('stat-groups').textContent = String(s.body.groups);
      $('stat-published').textContent = String(s.body.api ? s.body.api.messages_published : '–');
      $('node-id').textContent = `node ${s.body.node_id}`;
      const rows = (s.body.shards || []).map((sh) => {
        const tr = el('tr');
        for (const v of [sh.shard, sh.connections, sh.groups, sh.memberships]) tr.append(el('td', v));
        return tr;
      });
      $('shard-rows').replaceChildren(...rows);
      setStatus('stats-status', `updated ${clock()}`);
    } else {
      setStatus('stats-status', `GET /api/stats: ${errorText(s)}`, true);
    }
    for (const [g, entry] of state.groups) {
      const r = await api('GET', `/api/groups/${encodeURIComponent(g)}`);
      entry.count.textContent = r.status === 200 && r.body ? String(r.body.count) : '?';
    }
  } catch (e) {
    setStatus('stats-status', `API unreachable: ${e.message}`, true);
  } finally {
    polling = false;
  }
}

// ---- start ----------------------------------------------------------------------------------

function onSubmit(formId, handler) {
  $(formId).addEventListener('submit', (e) => {
    e.preventDefault();
    handler();
  });
}

async function start() {
  onSubmit('join-form', () => {
    const g = $('group-input').value.trim();
    if (g) join(g);
    $('group-input').value = '';
  });
  onSubmit('chat-form', () => {
    const m = $('chat-input').value;
    if (m) chat($('chat-target').value, m);
    $('chat-input').value = '';
  });
  onSubmit('push-form', () => {
    const m = $('push-input').value;
    if (m) push($('push-target').value, m);
    $('push-input').value = '';
  });
  onSubmit('token-form', () => {
    state.token = $('token-input').value.trim();
    $('token-input').value = '';
    state.refusedToken = null;
    if (state.token) sessionStorage.setItem('ringcast-demo-token', state.token);
    else sessionStorage.removeItem('ringcast-demo-token');
    setStatus('stats-status', state.token ? 'token set' : 'token cleared');
    poll();
  });
  $('reconnect').addEventListener('click', () => {
    state.reconnectDelayMs = 500;
    connect();
  });
  renderTargets();

  try {
    const r = await fetch('/demo/config.json', { cache: 'no-store' });
    state.config = await r.json();
  } catch (e) {
    setConn('closed', `cannot read /demo/config.json: ${e.message}`);
    return;
  }
  if (state.config.token_required && !state.token) needToken();
  connect();
  poll();
  setInterval(() => { if (!document.hidden) poll(); }, POLL_INTERVAL_MS);
}

start();
