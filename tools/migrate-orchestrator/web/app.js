// The orchestrator's dashboard: renders the registry document the
// orchestrator pushes over its WebSocket, asks for migrations with
// POST /api/migrations and cancels them with POST /api/migrations/ID/cancel.
// The operator token comes from the page's URL fragment (#token=...) or the
// form, and stays in this tab's sessionStorage.
'use strict';

const PHASES = ['requested', 'begin', 'precopy', 'final', 'prepare', 'commit', 'done'];
let token = '';
let state = null;
let socket = null;
let retryMs = 500;
let timer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function ms(us) {
  if (us === null || us === undefined) return '';
  return (us / 1000).toFixed(1) + ' ms';
}

function setLink(up, text) {
  const l = document.getElementById('link');
  l.className = 'link ' + (up ? 'up' : 'down');
  l.textContent = text;
}

async function move(user, to) {
  const out = document.getElementById('move-result');
  out.className = '';
  out.textContent = 'asking…';
  try {
    const r = await fetch('/api/migrations', {
      method: 'POST',
      headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + token},
      body: JSON.stringify({user, to}),
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    out.textContent = `migration #${body.id}: ${body.user} from ${body.from} to ${body.to}`;
  } catch (e) {
    out.className = 'error';
    out.textContent = 'refused: ' + e.message;
  }
}

async function cancelMigration(id) {
  const out = document.getElementById('move-result');
  out.className = '';
  out.textContent = 'asking…';
  try {
    const r = await fetch(`/api/migrations/${id}/cancel`, {
      method: 'POST',
      headers: {'Authorization': 'Bearer ' + token},
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    out.textContent = `migration #${body.id}: cancel requested`;
  } catch (e) {
    out.className = 'error';
    out.textContent = 'refused: ' + e.message;
  }
}

function renderEngines() {
  const box = document.getElementById('engines');
  box.replaceChildren();
  if (!state.engines.length) {
    box.append(el('p', {class: 'empty'}, 'No engine has announced itself yet.'));
    return;
  }
  const healthy = state.engines.filter(e => e.health === 'healthy');
  for (const eng of state.engines) {
    const users = state.users.filter(u => u.engine === eng.id);
    const list = el('ul', {class: 'users'});
    for (const u of users) {
      const others = healthy.filter(e => e.id !== eng.id);
      const actions = el('span', {});
      for (const dst of others) {
        actions.append(el('button', {
          'data-user': u.user, 'data-to': dst.id, class: 'move',
          onclick: () => move(u.user, dst.id),
        }, `move to ${dst.id}`));
      }
      list.append(el('li', {'data-user': u.user},
        el('span', {}, el('b', {}, u.user), ' ', el('span', {class: 'state'}, u.state)),
        u.state === 'active' && eng.health === 'healthy' ? actions : ''));
    }
    if (!users.length) list.append(el('li', {class: 'empty'}, 'no users'));
    const age = eng.last_heartbeat_ms ? ((Date.now() - eng.last_heartbeat_ms) / 1000).toFixed(1) + ' s ago' : 'never';
    box.append(el('div', {class: 'engine ' + eng.health, id: 'engine-' + eng.id,
                          'data-engine': eng.id, 'data-health': eng.health},
      el('h3', {}, eng.id, el('span', {class: 'health'}, eng.health)),
      el('div', {class: 'meta'}, eng.url),
      el('div', {class: 'meta'}, eng.app_url ? 'app ' + eng.app_url : 'no app URL'),
      el('div', {class: 'meta'},
        `libmigrate ${eng.version} · heartbeat every ${eng.heartbeat_ms} ms, last ${age} · ` +
        `${eng.users} users · ${eng.migrations} migrating`),
      list));
  }
}

function renderForm() {
  const userSel = document.getElementById('move-user');
  const toSel = document.getElementById('move-to');
  const keepUser = userSel.value, keepTo = toSel.value;
  userSel.replaceChildren(...state.users.filter(u => u.state === 'active')
    .map(u => el('option', {value: u.user}, `${u.user} (on ${u.engine})`)));
  toSel.replaceChildren(...state.engines.filter(e => e.health === 'healthy')
    .map(e => el('option', {value: e.id}, e.id)));
  if ([...userSel.options].some(o => o.value === keepUser)) userSel.value = keepUser;
  if ([...toSel.options].some(o => o.value === keepTo)) toSel.value = keepTo;
}

function renderMigrations() {
  const body = document.querySelector('#migrations tbody');
  body.replaceChildren();
  for (const m of state.migrations) {
    const step = Math.max(0, PHASES.indexOf(m.phase));
    const bar = el('progress', {max: PHASES.length - 1, value: m.state === 'committed' ? PHASES.length - 1 : step});
    const kb = m.bytes_sent ? ` ${(m.bytes_sent / 1024).toFixed(1)} KiB` : '';
    body.append(el('tr', {class: m.state, 'data-migration': m.id},
      el('td', {}, m.id), el('td', {}, m.user), el('td', {}, m.from), el('td', {}, m.to),
      el('td', {class: 'state'}, m.state + (m.error ? ': ' + m.error : '')),
      el('td', {}, m.phase || ''), el('td', {}, bar, kb),
      el('td', {}, ms(m.duration_us)), el('td', {}, ms(m.downtime_us)),
      el('td', {}, m.state === 'requested' || m.state === 'running'
        ? el('button', {class: 'cancel', 'data-migration': m.id,
                        onclick: () => cancelMigration(m.id)}, 'cancel')
        : '')));
  }
}

function render() {
  if (!state) return;
  renderEngines();
  renderForm();
  renderMigrations();
}

function connect() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  socket = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(token)}`,
                         'mig-dashboard');
  let opened = false;
  socket.onopen = () => { opened = true; retryMs = 500; setLink(true, 'live'); };
  socket.onmessage = (m) => { state = JSON.parse(m.data); render(); };
  socket.onclose = () => {
    if (!opened) {
      // Refused at the handshake: most likely a wrong token.
      document.getElementById('token-box').hidden = false;
    }
    setLink(false, opened ? 'disconnected, retrying' : 'refused (token?), retrying');
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 5000);
  };
}

function start() {
  const frag = new URLSearchParams(location.hash.slice(1));
  token = frag.get('token') || sessionStorage.getItem('mig-token') || '';
  if (frag.get('token')) {
    sessionStorage.setItem('mig-token', token);
    history.replaceState(null, '', location.pathname); // keep it out of the address bar
  }
  document.getElementById('move-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    move(document.getElementById('move-user').value, document.getElementById('move-to').value);
  });
  document.getElementById('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = document.getElementById('token-input').value;
    sessionStorage.setItem('mig-token', token);
    document.getElementById('token-box').hidden = true;
    if (socket) socket.close(); else connect();
    if (!timer) timer = setInterval(render, 1000);
  });
  if (!token) {
    document.getElementById('token-box').hidden = false;
    return;
  }
  connect();
  timer = setInterval(render, 1000); // heartbeat ages
}

start();
