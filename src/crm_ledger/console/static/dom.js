// Small DOM helpers shared by the pages: element builder, formatting, badges, tables.
//
// Exports: h, clear, fmtTime, fmtNumber, badge, table, section.

/** Build an element: h("a", {href: "#/x", class: "link"}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Remove every child of `el` and append `children`. */
export function clear(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return el;
}

/** An RFC 3339 time as "2026-12-06 20:31:05 UTC". */
export function fmtTime(value) {
  if (!value) return "—";
  return value.replace("T", " ").replace(/\.\d+/, "").replace(/Z|\+00:00$/, " UTC");
}

/** A number with thousands separators, "—" for null. */
export function fmtNumber(value) {
  return value === null || value === undefined ? "—" : Number(value).toLocaleString("en");
}

/** A ledger state badge: pending, anchored, confirmed, erased, failed. */
export function badge(state, title = undefined) {
  return h("span", { class: `badge badge-${state}`, title }, state);
}

/** A table from column headers and rows of cells (strings or nodes). */
export function table(caption, headers, rows) {
  return h(
    "table",
    {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, row.map((cell) => h("td", {}, cell))))),
  );
}

/** A titled section. */
export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}
