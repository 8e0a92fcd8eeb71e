// The capstan dashboard: nodes, pods by phase, deployments with their rollout state,
// and the store's members, kept live from the apiserver on this same origin.
//
// Nodes, pods and deployments are read as any Kubernetes client reads them: a list,
// then a watch from the list's resourceVersion (the response is one JSON event per
// line, read as it streams), resumed after it ends and relisted after an error. The
// store's members come from /dashboard/api/store, polled, as a member's Raft state is
// no object to watch. Every request carries the user's bearer token; the token comes
// from the page's form or the URL fragment (#token=...), which browsers never send to
// the server, and is kept for the tab only (sessionStorage).
'use strict';

const TOKEN_KEY = 'capstan-dashboard-token';
const STORE_PATH = '/dashboard/api/store';
const STORE_EVERY_MS = 2000;
const PHASES = ['Pending', 'Running', 'Succeeded', 'Failed', 'Unknown'];

const state = {
  nodes: new Map(),
  pods: new Map(),
  deployments: new Map(),
  store: null,
  // Per source: null when live, else what went wrong.
  errors: { nodes: 'connecting', pods: 'connecting', deployments: 'connecting', store: 'connecting' },
};

// Aborted when the token changes, ending every loop of the previous session.
let session = new AbortController();

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

// Takes a token from the URL fragment, then removes it from the address bar (and so
// from the history and any bookmark).
function tokenFromFragment() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  history.replaceState(null, '', location.pathname + location.search);
}

async function request(path, signal) {
  const headers = { Accept: 'application/json' };
  if (token()) headers.Authorization = 'Bearer ' + token();
  const resp = await fetch(path, { headers, signal, cache: 'no-store', credentials: 'omit' });
  if (!resp.ok) {
    let message = resp.statusText || 'HTTP ' + resp.status;
    try {
      const status = await resp.json();
      if (status && status.message) message = status.message;
    } catch (_) {
      // Not a Status body: keep the status line.
    }
    throw new HttpError(resp.status, message);
  }
  return resp;
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });

const objectKey = (o) => (o.metadata.namespace || '') + '/' + o.metadata.name;

function describe(e) {
  if (e instanceof HttpError && e.status === 401) return 'Unauthorized: sign in with a bearer token';
  // A Status message reads as kubectl prints it ("pods is forbidden: User ...").
  if (e instanceof HttpError) return e.message;
  return String(e.message || e);
}

// Keeps state[name] equal to the collection at path: list, then watch; a watch that
// ends cleanly is resumed from the last resourceVersion seen, one that fails (an ERROR
// event such as 410 Gone, a broken connection) leads to a fresh list.
async function follow(name, path, signal) {
  const items = state[name];
  let pause = 1000;
  while (!signal.aborted) {
    try {
      const list = await (await request(path, signal)).json();
      items.clear();
      for (const o of list.items || []) items.set(objectKey(o), o);
      let rv = list.metadata.resourceVersion;
      setError(name, null);
      render();
      for (;;) {
        const q = '?watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion=' + encodeURIComponent(rv);
        const resp = await request(path + q, signal);
        rv = await readWatch(resp, items, rv);
        pause = 1000;
      }
    } catch (e) {
      if (signal.aborted) return;
      setError(name, describe(e));
      render();
      await sleep(pause, signal);
      pause = Math.min(pause * 2, 10000);
    }
  }
}

// Applies a watch response's events to items as they arrive; returns the last
// resourceVersion seen when the stream ends.
async function readWatch(resp, items, rv) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return rv;
    buf += decoder.decode(value, { stream: true });
    let nl;
    let changed = false;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      const ev = JSON.parse(line);
      if (ev.type === 'ERROR') throw new Error((ev.object && ev.object.message) || 'watch failed');
      if (ev.object && ev.object.metadata && ev.object.metadata.resourceVersion) rv = ev.object.metadata.resourceVersion;
      if (ev.type === 'BOOKMARK') continue;
      const k = objectKey(ev.object);
      if (ev.type === 'DELETED') items.delete(k);
      else items.set(k, ev.object);
      changed = true;
    }
    if (changed) render();
  }
}

async function pollStore(signal) {
  while (!signal.aborted) {
    try {
      state.store = await (await request(STORE_PATH, signal)).json();
      setError('store', null);
    } catch (e) {
      if (signal.aborted) return;
      state.store = null;
      setError('store', describe(e));
    }
    render();
    await sleep(STORE_EVERY_MS, signal);
  }
}

function setError(name, message) {
  state.errors[name] = message;
}

function start() {
  session.abort();
  session = new AbortController();
  const s = session.signal;
  state.nodes.clear();
  state.pods.clear();
  state.deployments.clear();
  state.store = null;
  for (const k of Object.keys(state.errors)) state.errors[k] = 'connecting';
  render();
  follow('nodes', '/api/v1/nodes', s);
  follow('pods', '/api/v1/pods', s);
  follow('deployments', '/apis/apps/v1/deployments', s);
  pollStore(s);
}

// ---- rendering: text only (textContent), never markup from the API ----

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, attrs) {
  const tr = document.createElement('tr');
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  for (const c of cells) tr.append(c instanceof Node ? c : el('td', c));
  return tr;
}

function age(ts) {
  if (!ts) return '<unknown>';
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(ts)) / 1000));
  if (s < 120) return s + 's';
  const m = Math.floor(s / 60);
  if (m < 10) return m + 'm' + (s % 60 ? (s % 60) + 's' : '');
  if (m < 180) return m + 'm';
  const h = Math.floor(m / 60);
  if (h < 48) return h + 'h';
  return Math.floor(h / 24) + 'd';
}

const sorted = (map) => [...map.values()].sort((a, b) => objectKey(a).localeCompare(objectKey(b)));

// As `kubectl get nodes` words it.
function nodeStatus(n) {
  const ready = ((n.status && n.status.conditions) || []).find((c) => c.type === 'Ready');
  let s = !ready ? 'Unknown' : ready.status === 'True' ? 'Ready' : 'NotReady';
  if (n.spec && n.spec.unschedulable) s += ',SchedulingDisabled';
  return s;
}

function nodeRoles(n) {
  const roles = Object.keys(n.metadata.labels || {})
    .filter((l) => l.startsWith('node-role.kubernetes.io/'))
    .map((l) => l.slice('node-role.kubernetes.io/'.length))
    .filter((r) => r);
  return roles.length ? roles.sort().join(',') : '<none>';
}

// `kubectl rollout status deployment/<name>`'s words for where a rollout stands.
function rolloutStatus(d) {
  const st = d.status || {};
  const name = d.metadata.name;
  if ((d.metadata.generation || 0) > (st.observedGeneration || 0)) {
    return { text: 'Waiting for deployment spec update to be observed...', done: false };
  }
  const progressing = (st.conditions || []).find((c) => c.type === 'Progressing');
  if (progressing && progressing.reason === 'ProgressDeadlineExceeded') {
    return { text: `error: deployment "${name}" exceeded its progress deadline`, failed: true };
  }
  const want = d.spec && d.spec.replicas !== undefined ? d.spec.replicas : 1;
  const updated = st.updatedReplicas || 0;
  const replicas = st.replicas || 0;
  const available = st.availableReplicas || 0;
  if (updated < want) {
    return { text: `Waiting for deployment "${name}" rollout to finish: ${updated} out of ${want} new replicas have been updated...` };
  }
  if (replicas > updated) {
    return { text: `Waiting for deployment "${name}" rollout to finish: ${replicas - updated} old replicas are pending termination...` };
  }
  if (available < updated) {
    return { text: `Waiting for deployment "${name}" rollout to finish: ${available} of ${updated} updated replicas are available...` };
  }
  return { text: `deployment "${name}" successfully rolled out`, done: true };
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
}

function showError(name) {
  const p = document.getElementById(name + '-error');
  const msg = state.errors[name];
  p.hidden = !msg || msg === 'connecting';
  p.textContent = msg && msg !== 'connecting' ? msg : '';
}

function renderNodes() {
  const body = document.querySelector('#nodes tbody');
  const rows = sorted(state.nodes).map((n) => {
    const status = nodeStatus(n);
    const ip = ((n.status && n.status.addresses) || []).find((a) => a.type === 'InternalIP');
    return row(
      [
        n.metadata.name,
        el('td', status, status.startsWith('Ready') ? 'ready' : 'notready'),
        nodeRoles(n),
        (n.status && n.status.nodeInfo && n.status.nodeInfo.kubeletVersion) || '',
        ip ? ip.address : '<none>',
        age(n.metadata.creationTimestamp),
      ],
      { 'data-node': n.metadata.name },
    );
  });
  body.replaceChildren(...rows);
  const ready = [...state.nodes.values()].filter((n) => nodeStatus(n).startsWith('Ready')).length;
  document.getElementById('nodes-summary').textContent = `${ready} of ${state.nodes.size} ready`;
  showError('nodes');
}

function renderPods() {
  const counts = Object.fromEntries(PHASES.map((p) => [p, 0]));
  for (const p of state.pods.values()) {
    const phase = (p.status && p.status.phase) || 'Pending';
    counts[PHASES.includes(phase) ? phase : 'Unknown']++;
  }
  for (const phase of PHASES) {
    document.querySelector(`#pods tr[data-phase="${phase}"] td:last-child`).textContent = counts[phase];
  }
  document.getElementById('pods-summary').textContent = `${state.pods.size} in total`;
  showError('pods');
}

function renderDeployments() {
  const body = document.querySelector('#deployments tbody');
  const rows = sorted(state.deployments).map((d) => {
    const st = d.status || {};
    const want = d.spec && d.spec.replicas !== undefined ? d.spec.replicas : 1;
    const r = rolloutStatus(d);
    return row(
      [
        d.metadata.namespace,
        d.metadata.name,
        `${st.readyReplicas || 0}/${want}`,
        st.updatedReplicas || 0,
        st.availableReplicas || 0,
        el('td', r.text, 'wrap ' + (r.done ? 'done' : r.failed ? 'failed' : '')),
      ],
      { 'data-deployment': objectKey(d) },
    );
  });
  body.replaceChildren(...rows);
  const done = [...state.deployments.values()].filter((d) => rolloutStatus(d).done).length;
  document.getElementById('deployments-summary').textContent = `${done} of ${state.deployments.size} rolled out`;
  showError('deployments');
}

function renderStore() {
  const body = document.querySelector('#store tbody');
  const st = state.store;
  const members = (st && st.members) || [];
  const rows = members.map((m) => {
    const s = m.status;
    const leader = st.leader && m.id === st.leader;
    const role = leader ? el('td') : el('td', m.error ? 'unreachable' : m.isLearner ? 'learner' : 'follower', m.error ? 'error' : '');
    if (leader) role.append(el('span', 'leader', 'badge'));
    return row(
      [
        m.name || '(not started)',
        m.id,
        role,
        s ? s.raftTerm : '',
        s ? s.raftIndex : '',
        s ? s.raftAppliedIndex : '',
        s ? bytes(s.dbSize) : '',
        s ? s.version : m.error || '',
        (m.clientURLs || [])[0] || '',
      ],
      { 'data-member': m.id, class: leader ? 'leader' : '' },
    );
  });
  body.replaceChildren(...rows);
  const leader = members.find((m) => st && st.leader && m.id === st.leader);
  document.getElementById('store-summary').textContent = st
    ? `${members.length} member${members.length === 1 ? '' : 's'}, leader ${leader ? leader.name : 'none'}, term ${st.raftTerm ?? '?'}`
    : '';
  showError('store');
}

function renderStatus() {
  const status = document.getElementById('status');
  const failing = Object.entries(state.errors).filter(([, m]) => m && m !== 'connecting');
  const connecting = Object.values(state.errors).some((m) => m === 'connecting');
  if (!token() && failing.length) {
    status.textContent = 'Not signed in: paste a bearer token, or open this page with #token=<token>';
  } else if (failing.length) {
    status.textContent = failing.map(([k, m]) => `${k}: ${m}`).join('; ');
  } else if (connecting) {
    status.textContent = 'Connecting…';
  } else {
    status.textContent = 'Live';
  }
  status.className = failing.length ? 'bad' : '';
}

function render() {
  renderNodes();
  renderPods();
  renderDeployments();
  renderStore();
  renderStatus();
}

document.addEventListener('DOMContentLoaded', () => {
  tokenFromFragment();
  document.getElementById('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = document.getElementById('token');
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = '';
    start();
  });
  document.getElementById('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    start();
  });
  window.addEventListener('hashchange', () => {
    if (/(?:^#|&)token=/.test(location.hash)) {
      tokenFromFragment();
      start();
    }
  });
  // Ages move on without any event.
  setInterval(renderNodes, 5000);
  start();
});
