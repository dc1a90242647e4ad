// Hand-drawn SVG charts: bars and a line, with an optional limit line. No library.
//
// Exports: barChart, lineChart.

const NS = "http://www.w3.org/2000/svg";
const W = 600;
const H = 160;
const PAD = 24;

function svg(tag, attrs = {}, text = null) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== null) el.textContent = text;
  return el;
}

function frame(title, max, unit) {
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  root.append(svg("title", {}, title));
  root.append(svg("text", { x: 4, y: 12 }, `${Number(max).toLocaleString("en")} ${unit}`));
  root.append(svg("line", { x1: PAD, y1: H - PAD, x2: W, y2: H - PAD, stroke: "#8a939d" }));
  return root;
}

/** Bars of `values` (numbers), labelled by `labels` at both ends. */
export function barChart(title, values, { unit = "", labels = [] } = {}) {
  const max = Math.max(1, ...values);
  const root = frame(title, max, unit);
  const width = (W - PAD) / Math.max(1, values.length);
  values.forEach((value, i) => {
    const height = ((H - 2 * PAD) * value) / max;
    const bar = svg("rect", { class: "bar", x: PAD + i * width + 1, y: H - PAD - height, width: Math.max(1, width - 2), height });
    bar.append(svg("title", {}, `${labels[i] || i}: ${value.toLocaleString("en")} ${unit}`));
    root.append(bar);
  });
  if (labels.length) {
    root.append(svg("text", { x: PAD, y: H - 6 }, labels[0]));
    root.append(svg("text", { x: W - 4, y: H - 6, "text-anchor": "end" }, labels[labels.length - 1]));
  }
  return root;
}

/** A line through `values`; `limit` draws a dashed horizontal line (a budget, say). */
export function lineChart(title, values, { unit = "", labels = [], limit = null } = {}) {
  const max = Math.max(1, limit || 0, ...values.filter((v) => v !== null));
  const root = frame(title, max, unit);
  const x = (i) => PAD + ((W - PAD - 4) * i) / Math.max(1, values.length - 1);
  const y = (v) => H - PAD - ((H - 2 * PAD) * v) / max;
  if (limit !== null) root.append(svg("line", { class: "limit", x1: PAD, x2: W, y1: y(limit), y2: y(limit) }));
  const points = values.map((v, i) => (v === null ? null : `${x(i)},${y(v)}`)).filter(Boolean);
  root.append(svg("polyline", { class: "line", points: points.join(" ") }));
  values.forEach((v, i) => {
    if (v === null) return;
    const dot = svg("circle", { class: "dot", cx: x(i), cy: y(v), r: 3 });
    dot.append(svg("title", {}, `${labels[i] || i}: ${v.toLocaleString("en")} ${unit}`));
    root.append(dot);
  });
  if (labels.length) {
    root.append(svg("text", { x: PAD, y: H - 6 }, labels[0]));
    root.append(svg("text", { x: W - 4, y: H - 6, "text-anchor": "end" }, labels[labels.length - 1]));
  }
  return root;
}
