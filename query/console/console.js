// The console's page: the clusters, the charts and table of the chosen
// cluster's last windows, refreshed every few seconds, and the SQL box.

import * as api from './api.js';
import { WindowCharts } from './charts.js';
import { SqlBox, cell } from './sql.js';

const REFRESH_MS = 3000;
const WINDOWS_CHARTED = 50;
const WINDOWS_LISTED = 8;

const $ = (id) => document.getElementById(id);

/** The pulse nodes of the last answer of /api/v1/clusters. */
let pulseNodes = [];

const state = {
  cluster: new URLSearchParams(location.hash.slice(1)).get('cluster'),
  paused: false,
  waitingForToken: false,
  timer: null,
  refreshing: false,
  refreshAgain: false,
};

const charts = new WindowCharts($('charts'));
const sqlBox = new SqlBox({ onUnauthorized: askForToken });

$('pause').addEventListener('click', () => {
  state.paused = !state.paused;
  $('pause').textContent = state.paused ? 'Resume' : 'Pause';
  if (!state.paused) {
    refresh();
  } else {
    setLive('paused', 'paused');
  }
});

$('cluster-select').addEventListener('change', (event) => {
  chooseCluster(event.target.value);
  refresh();
});

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  api.setToken($('token-input').value.trim());
  $('token-input').value = '';
  $('token-panel').hidden = true;
  state.waitingForToken = false;
  refresh();
});

function askForToken() {
  api.setToken(null);
  state.waitingForToken = true;
  $('token-panel').hidden = false;
  $('token-input').focus();
  setLive('needs a token', 'failed');
}

function setLive(text, kind) {
  $('live-text').textContent = text;
  $('live-dot').className = `dot ${kind}`;
}

function chooseCluster(id) {
  state.cluster = id;
  history.replaceState(null, '', id ? `#cluster=${encodeURIComponent(id)}` : '#');
}

function showError(id, error) {
  const element = $(id);
  element.hidden = !error;
  element.textContent = error ? `${error.kind}: ${error.message}` : '';
}

/** A refresh now (after the one running, if any), then one every REFRESH_MS. */
async function refresh() {
  clearTimeout(state.timer);
  if (state.refreshing) {
    // One chain of refreshes only: the running one goes again when it ends.
    state.refreshAgain = true;
    return;
  }
  if (state.paused || state.waitingForToken) {
    return;
  }
  state.refreshing = true;
  try {
    await refreshOnce();
  } finally {
    state.refreshing = false;
  }
  if (state.refreshAgain) {
    state.refreshAgain = false;
    refresh();
  } else if (!state.paused && !state.waitingForToken) {
    state.timer = setTimeout(refresh, REFRESH_MS);
  }
}

/** The clusters, then the chosen cluster's windows. */
async function refreshOnce() {
  const clustersOk = await attempt('clusters-error', async () => {
    const answer = await api.clusters();
    pulseNodes = answer.pulse_nodes || [];
    renderClusters(answer.clusters);
  });
  const windowsOk =
    clustersOk &&
    (!state.cluster ||
      (await attempt('windows-error', async () => {
        const result = await api.sql(windowsQuery(state.cluster));
        renderWindows(api.objects(result).reverse());
      })));
  if (state.waitingForToken || state.paused) {
    return;
  }
  const time = new Date().toLocaleTimeString([], { hour12: false });
  if (clustersOk && windowsOk) {
    setLive(`live · updated ${time}`, 'ok');
  } else {
    setLive(`refresh failed at ${time}; retrying`, 'failed');
  }
}

/** Runs `work`; an API error is shown in the element `errorId` (or asks for a token). */
async function attempt(errorId, work) {
  try {
    await work();
    showError(errorId, null);
    return true;
  } catch (e) {
    if (!(e instanceof api.ApiError)) {
      throw e;
    }
    if (e.unauthorized) {
      askForToken();
    } else {
      showError(errorId, e);
    }
    return false;
  }
}

function windowsQuery(cluster) {
  return `SELECT window_index, window_id, agents_reporting, on_time_reviews, help_promises_fulfilled,
    tempo_drift_ms, claims_accepted, claims_late, claims_rejected, issues, published_at
  FROM bar_reports WHERE cluster_id = ${api.literal(cluster)}
  ORDER BY window_index DESC LIMIT ${WINDOWS_CHARTED}`;
}

function renderClusters(clusters) {
  const ids = clusters.map((c) => c.cluster_id);
  if (!ids.includes(state.cluster)) {
    const withWindows = clusters.find((c) => c.last_window);
    chooseCluster(withWindows ? withWindows.cluster_id : ids[0] || null);
  }
  const select = $('cluster-select');
  if (select.options.length !== ids.length || ids.some((id, i) => select.options[i].value !== id)) {
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
  }
  select.value = state.cluster || '';
  $('clusters-empty').hidden = clusters.length > 0;
  const silent = pulseNodes.filter((n) => n.error);
  $('clusters-empty').textContent =
    silent.length === 0
      ? 'No cluster yet: no beat, BarReport or pulse node seen.'
      : `No cluster yet: no beat or BarReport held, and ${silent.map((n) => `${n.url} (${n.error})`).join(', ')} did not answer.`;
  if (!state.cluster) {
    renderWindows([]);
  }

  const rows = clusters.map((c) => {
    const tr = document.createElement('tr');
    tr.dataset.cluster = c.cluster_id;
    tr.className = c.cluster_id === state.cluster ? 'chosen' : '';
    tr.addEventListener('click', () => {
      chooseCluster(c.cluster_id);
      refresh();
    });
    const name = document.createElement('td');
    name.textContent = c.cluster_id;
    name.className = 'name';
    const tempo = c.leader && c.leader.tempo_bpm != null ? c.leader.tempo_bpm : c.tempo_bpm;
    tr.append(
      name,
      leaderCell(c.leader),
      text(tempo == null ? '–' : `${tempo} BPM`, 'num'),
      beatCell(c),
      text(c.window_index ?? '–', 'num'),
      lastWindowCell(c.last_window),
      text(c.windows_held ?? 0, 'num'),
      nodesCell(c.cluster_id),
    );
    return tr;
  });
  $('clusters').tBodies[0].replaceChildren(...rows);
}

function nodesCell(cluster) {
  const nodes = pulseNodes.filter((n) => n.cluster_id === cluster || !n.cluster_id);
  if (nodes.length === 0) {
    const td = text('–', 'muted');
    td.title = 'the query service asks no pulse node (--pulse-urls)';
    return td;
  }
  const td = document.createElement('td');
  for (const node of nodes) {
    if (node.error) {
      const down = badge(new URL(node.url).host, 'badge down');
      down.title = `${node.url}: ${node.error}`;
      td.append(down);
    } else {
      const up = badge(`node ${node.node_id} · ${node.role}`, `badge ${node.role}${node.degraded ? ' degraded' : ''}`);
      up.title = `${node.url}  last beat ${node.last_beat ?? '–'}${node.degraded ? ' (degraded)' : ''}`;
      td.append(up);
    }
  }
  return td;
}

/** After this long without a beat, the cluster is marked silent. */
const SILENT_AFTER_MS = 30_000;

function beatCell(cluster) {
  const td = text(cluster.current_beat ?? '–', 'num');
  const at = Date.parse(cluster.beat_time);
  if (!Number.isNaN(at)) {
    td.title = `stamped ${cluster.beat_time}`;
    if (Date.now() - at > SILENT_AFTER_MS) {
      td.prepend(badge(`last beat ${ago(cluster.beat_time)}`, 'badge degraded'));
    }
  }
  return td;
}

function leaderCell(leader) {
  if (!leader) {
    return text('–', 'muted');
  }
  const td = text(`node ${leader.node_id}`);
  if (leader.term != null) {
    td.append(badge(` term ${leader.term}`, 'muted'));
  }
  if (leader.degraded) {
    td.append(badge('degraded', 'badge degraded'));
  }
  return td;
}

function lastWindowCell(window) {
  if (!window) {
    return text('none yet', 'muted');
  }
  const td = text(`#${window.window_index}`);
  td.title = window.window_id;
  td.append(badge(` · ${window.agents_reporting} agents · ${ago(window.published_at)}`, 'muted'));
  return td;
}

function renderWindows(rows) {
  charts.update(rows);
  $('windows-empty').hidden = rows.length > 0;
  $('charts').hidden = rows.length === 0;
  $('windows-note').textContent = rows.length
    ? `the last ${rows.length} BarReports (windows ${rows[0].window_index}–${rows[rows.length - 1].window_index})`
    : `the last ${WINDOWS_CHARTED} BarReports`;
  const listed = rows.slice(-WINDOWS_LISTED).reverse();
  $('windows').tBodies[0].replaceChildren(
    ...listed.map((r) => {
      const tr = document.createElement('tr');
      tr.dataset.window = r.window_index;
      const id = text(shorten(r.window_id), 'mono');
      id.title = r.window_id;
      tr.append(
        cell(r.window_index),
        id,
        cell(r.agents_reporting),
        cell(r.on_time_reviews),
        cell(r.help_promises_fulfilled),
        cell(r.tempo_drift_ms),
        cell(r.claims_accepted),
        cell(r.claims_late),
        cell(r.claims_rejected),
        issuesCell(r.issues),
        text(ago(r.published_at), 'muted'),
      );
      return tr;
    }),
  );
  $('windows').hidden = rows.length === 0;
}

function issuesCell(issues) {
  if (!issues || issues.length === 0) {
    return text('–', 'issues muted');
  }
  const td = text('', 'issues');
  for (const issue of issues) {
    const b = badge(`${issue.code} ×${issue.count}`, 'badge issue');
    b.title = (issue.sample || []).join(', ');
    td.append(b);
  }
  return td;
}

function text(value, className) {
  const td = document.createElement('td');
  td.textContent = String(value);
  td.className = className || '';
  return td;
}

function badge(label, className) {
  const span = document.createElement('span');
  span.className = className;
  span.textContent = label;
  return span;
}

function shorten(id) {
  return id && id.length > 14 ? `${id.slice(0, 12)}…` : id;
}

function ago(timestamp) {
  const then = Date.parse(timestamp);
  if (Number.isNaN(then)) {
    return '–';
  }
  const seconds = Math.max(0, Math.round((Date.now() - then) / 1000));
  if (seconds < 60) {
    return `${seconds} s ago`;
  }
  if (seconds < 3600) {
    return `${Math.round(seconds / 60)} min ago`;
  }
  return new Date(then).toLocaleString([], { hour12: false });
}

refresh();
sqlBox.execute();
