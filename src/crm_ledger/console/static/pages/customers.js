// Customers: search and filter (text, tag, balance, last interaction), sorted, paged by cursor.
//
// Exports: render.

import { api } from "../api.js";
import { clear, fmtNumber, fmtTime, h, table } from "../dom.js";

const PAGE_SIZE = 50;
const FILTERS = ["q", "tag", "balance_min", "balance_max", "last_interaction_after", "last_interaction_before", "sort"];
// The API has no sort by name (names are sealed at rest). The last two are computed for every
// customer on each page, so they are slower on a large list than the first two (index order).
const SORTS = [
  ["-created_at", "newest first"], ["created_at", "oldest first"],
  ["-last_interaction_at", "last interaction, latest first (slower)"], ["-balance", "balance, highest first (slower)"],
];

function toApiTime(value) {
  return value ? new Date(value).toISOString() : "";
}

export async function render(main, params) {
  const query = params.query;
  const inputs = {
    q: h("input", { id: "f-q", name: "q", type: "search", value: query.get("q") || "", placeholder: "exact email, ref or id" }),
    tag: h("input", { id: "f-tag", name: "tag", value: query.get("tag") || "" }),
    balance_min: h("input", { id: "f-balance_min", name: "balance_min", type: "number", min: 0, value: query.get("balance_min") || "" }),
    balance_max: h("input", { id: "f-balance_max", name: "balance_max", type: "number", min: 0, value: query.get("balance_max") || "" }),
    last_interaction_after: h("input", { id: "f-last_interaction_after", name: "last_interaction_after", type: "date", value: query.get("last_interaction_after") || "" }),
    last_interaction_before: h("input", { id: "f-last_interaction_before", name: "last_interaction_before", type: "date", value: query.get("last_interaction_before") || "" }),
    sort: h("select", { id: "f-sort", name: "sort" }, SORTS.map(([value, label]) =>
      h("option", { value, selected: (query.get("sort") || "-created_at") === value }, label))),
  };
  const labels = { q: "Search", tag: "Tag", balance_min: "Balance at least", balance_max: "Balance at most",
    last_interaction_after: "Last interaction after", last_interaction_before: "Last interaction before", sort: "Sort" };
  const form = h("form", { class: "filters card", role: "search", onsubmit: (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of FILTERS) if (inputs[name].value) next.set(name, inputs[name].value);
    location.hash = `#/customers?${next}`;
  } },
  FILTERS.map((name) => h("label", { for: inputs[name].id }, h("span", {}, labels[name]), inputs[name])),
  h("button", { type: "submit" }, "Search"));
  const results = h("div", { id: "results", "aria-live": "polite" });
  clear(main, h("h1", {}, "Customers"), form, results);

  const cursors = [null];
  const load = async (cursor) => {
    const apiQuery = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const name of FILTERS) {
      const value = query.get(name);
      if (!value) continue;
      apiQuery.set(name, name.startsWith("last_interaction") ? toApiTime(value) : value);
    }
    if (cursor) apiQuery.set("cursor", cursor);
    const started = performance.now();
    const page = await api(`/v1/crm/customers?${apiQuery}`);
    const rows = page.items.map((c) => [
      h("a", { href: `#/customer/${c.id}` }, c.name || (c.erased_at ? "(erased)" : c.id.slice(0, 8))),
      c.email || "—",
      c.external_ref || "—",
      c.tags.join(", ") || "—",
      fmtTime(c.last_interaction_at),
      fmtNumber(c.loyalty_balance),
    ]);
    const pager = h("div", { class: "pager" },
      h("button", { type: "button", class: "secondary", disabled: cursors.length < 2, onclick: () => {
        cursors.pop();
        load(cursors[cursors.length - 1]);
      } }, "Previous"),
      h("span", {}, `Page ${cursors.length}`),
      h("button", { type: "button", class: "secondary", disabled: !page.next_cursor, onclick: () => {
        cursors.push(page.next_cursor);
        load(page.next_cursor);
      } }, "Next"));
    clear(results,
      table(`${page.items.length} customers on this page`, ["Name", "Email", "External ref", "Tags", "Last interaction", "Balance"], rows),
      pager);
    results.dataset.renderMs = String(Math.round(performance.now() - started));
  };
  await load(null);
}
