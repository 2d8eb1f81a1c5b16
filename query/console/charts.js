// The charts over windows: one small uPlot chart per measure of the last
// BarReports of a cluster, the window index on the x axis.

import uPlot from './vendor/uPlot.esm.js';

const CHART_HEIGHT = 170;
/** Tick steps: whole numbers only (every measure charted is a count or whole milliseconds). */
const WHOLE_STEPS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000];

/** What is drawn: a title and the report's columns, each a line. */
const CHARTS = [
  { title: 'Agents reporting', series: [{ column: 'agents_reporting', label: 'agents', color: '#2563eb' }] },
  {
    title: 'On-time reviews',
    series: [
      { column: 'on_time_reviews', label: 'on time', color: '#059669' },
      { column: 'help_promises_fulfilled', label: 'help kept', color: '#a3a3a3' },
    ],
  },
  {
    title: 'Tempo drift (ms)',
    series: [{ column: 'tempo_drift_ms', label: 'drift ms', color: '#d97706' }],
    zero: true,
  },
  {
    title: 'Late and rejected claims',
    series: [
      { column: 'claims_late', label: 'late', color: '#7c3aed' },
      { column: 'claims_rejected', label: 'rejected', color: '#dc2626' },
    ],
  },
];

/** The window charts in `container`; `update(rows)` redraws them (rows in window order). */
export class WindowCharts {
  constructor(container) {
    this.container = container;
    this.charts = CHARTS.map((spec) => this.#create(spec));
    new ResizeObserver(() => this.#resize()).observe(container);
  }

  #create(spec) {
    const box = document.createElement('figure');
    box.className = 'chart';
    const caption = document.createElement('figcaption');
    caption.textContent = spec.title;
    const latest = document.createElement('span');
    latest.className = 'latest';
    caption.append(latest);
    const plot = document.createElement('div');
    box.append(caption, plot);
    this.container.append(box);
    const axis = { stroke: '#64748b', grid: { stroke: '#e2e8f0', width: 1 }, ticks: { stroke: '#cbd5e1', width: 1 } };
    const options = {
      width: this.#width(box),
      height: CHART_HEIGHT,
      scales: { x: { time: false }, y: spec.zero ? { range: symmetric } : { range: fromZero } },
      axes: [
        { ...axis, incrs: WHOLE_STEPS },
        { ...axis, size: 50, incrs: WHOLE_STEPS },
      ],
      series: [
        { label: 'window' },
        ...spec.series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 2,
          fill: `${s.color}14`,
          points: { size: 5 },
        })),
      ],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    };
    const chart = new uPlot(options, [[], ...spec.series.map(() => [])], plot);
    return { spec, chart, box, latest };
  }

  #width(box) {
    return Math.max(240, Math.floor((box.clientWidth || this.container.clientWidth / 2) - 16));
  }

  #resize() {
    for (const { chart, box } of this.charts) {
      const width = this.#width(box);
      if (Math.abs(chart.width - width) > 2) {
        chart.setSize({ width, height: CHART_HEIGHT });
      }
    }
  }

  /** `rows`: objects with window_index and the charted columns, oldest first. */
  update(rows) {
    const x = rows.map((r) => r.window_index);
    for (const { spec, chart, latest } of this.charts) {
      chart.setData([x, ...spec.series.map((s) => rows.map((r) => r[s.column]))]);
      const last = rows[rows.length - 1];
      latest.textContent = last
        ? spec.series.map((s) => `${s.label} ${last[s.column]}`).join(' · ') + ` (window ${last.window_index})`
        : '';
    }
  }
}

/** A y range from zero (these counts are never negative) with room above. */
function fromZero(_, min, max) {
  const top = Math.max(1, max ?? 1);
  return [Math.min(0, min ?? 0), Math.ceil(top * 1.15)];
}

/** A y range around zero (drift is signed). */
function symmetric(_, min, max) {
  const extent = Math.max(2, Math.abs(min ?? 0), Math.abs(max ?? 0));
  return [-Math.ceil(extent * 1.15), Math.ceil(extent * 1.15)];
}
