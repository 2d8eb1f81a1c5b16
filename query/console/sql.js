// The SQL box: runs the statement typed, shows the rows as a table, or the
// server's error (its kind and the message naming the rule or the limit)
// without touching the rest of the page.

import * as api from './api.js';

/** The most rows drawn; the rest are counted. */
const ROWS_SHOWN_MAX = 1000;

const EXAMPLES = [
  [
    'last windows',
    'SELECT window_index, agents_reporting, on_time_reviews, tempo_drift_ms, claims_late, claims_rejected\nFROM bar_reports ORDER BY window_index DESC LIMIT 10',
  ],
  [
    'claims by state',
    'SELECT cluster_id, state, count(*) AS claims\nFROM claims GROUP BY cluster_id, state ORDER BY claims DESC',
  ],
  [
    'rejects by reason',
    'SELECT cluster_id, reason, count(*) AS rejects\nFROM rejects GROUP BY cluster_id, reason ORDER BY rejects DESC',
  ],
  [
    'tempo changes',
    'SELECT cluster_id, tempo_bpm, min(beat_index) AS from_beat, max(beat_index) AS to_beat\nFROM beats GROUP BY cluster_id, tempo_bpm ORDER BY from_beat',
  ],
];

/** A value as the table shows it. */
export function formatValue(value) {
  if (value === null || value === undefined) {
    return { text: 'NULL', kind: 'null' };
  }
  if (typeof value === 'number') {
    return { text: String(value), kind: 'num' };
  }
  if (typeof value === 'boolean') {
    return { text: String(value), kind: 'bool' };
  }
  if (typeof value === 'object') {
    return { text: JSON.stringify(value), kind: 'json' };
  }
  return { text: String(value), kind: 'text' };
}

/** A table cell holding `value` (formatted), of class `kind`. */
export function cell(value, tag = 'td') {
  const element = document.createElement(tag);
  const { text, kind } = formatValue(value);
  element.textContent = text;
  element.className = kind;
  return element;
}

export class SqlBox {
  /** `onUnauthorized(error)` is told when the server wants a token. */
  constructor({ onUnauthorized }) {
    this.form = document.getElementById('sql-form');
    this.input = document.getElementById('sql-input');
    this.run = document.getElementById('sql-run');
    this.status = document.getElementById('sql-status');
    this.error = document.getElementById('sql-error');
    this.table = document.getElementById('sql-result');
    this.onUnauthorized = onUnauthorized;
    this.input.value = EXAMPLES[0][1];
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.execute();
    });
    this.input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.execute();
      }
    });
    const examples = document.getElementById('sql-examples');
    for (const [name, text] of EXAMPLES) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'chip';
      button.textContent = name;
      button.addEventListener('click', () => {
        this.input.value = text;
        this.execute();
      });
      examples.append(button);
    }
  }

  async execute() {
    const statement = this.input.value.trim();
    if (!statement) {
      return;
    }
    this.run.disabled = true;
    this.status.textContent = 'running…';
    this.status.className = 'status';
    const started = performance.now();
    try {
      const result = await api.sql(statement);
      const ms = Math.round(performance.now() - started);
      this.error.hidden = true;
      this.render(result);
      const rows = result.rows.length;
      this.status.textContent = `${rows} row${rows === 1 ? '' : 's'} in ${ms} ms`;
      this.status.className = 'status ok';
    } catch (e) {
      if (!(e instanceof api.ApiError)) {
        throw e;
      }
      this.status.textContent = 'failed';
      this.status.className = 'status failed';
      this.error.textContent = e.status ? `${e.kind} (HTTP ${e.status}): ${e.message}` : e.message;
      this.error.hidden = false;
      if (e.unauthorized) {
        this.onUnauthorized(e);
      }
    } finally {
      this.run.disabled = false;
    }
  }

  render(result) {
    const head = document.createElement('thead');
    const names = document.createElement('tr');
    for (const column of result.columns) {
      const th = document.createElement('th');
      th.textContent = column.name;
      th.title = column.type;
      if (/^(U?Int|Float|Decimal)/.test(column.type)) {
        th.className = 'num';
      }
      names.append(th);
    }
    head.append(names);
    const body = document.createElement('tbody');
    for (const row of result.rows.slice(0, ROWS_SHOWN_MAX)) {
      const tr = document.createElement('tr');
      tr.append(...row.map((value) => cell(value)));
      body.append(tr);
    }
    this.table.replaceChildren(head, body);
    if (result.rows.length > ROWS_SHOWN_MAX) {
      const foot = document.createElement('tfoot');
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = result.columns.length;
      td.textContent = `showing the first ${ROWS_SHOWN_MAX} of ${result.rows.length} rows`;
      tr.append(td);
      foot.append(tr);
      this.table.append(foot);
    }
  }
}
