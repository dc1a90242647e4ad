// The customer 360 page: profile and external ids, ledger states, loyalty balance (the
// chain's) and lots, the last audit result with "audit now", and the timeline, each item with
// its ledger state and a link to its receipt. The timeline is paged (50 at a time).
//
// Exports: render.

import { api } from "../api.js";
import { badge, clear, fmtNumber, fmtTime, h, section, table } from "../dom.js";

const TIMELINE_PAGE = 50;
const RECORD_KINDS = new Set(["interaction", "order", "erasure"]);
const AUDITORS = ["auditor", "admin"];

function summary(item) {
  if (item.content) {
    const body = item.content.body || item.content;
    const text = body.type || body.summary || body.number || body.channel || item.kind;
    const extra = body.total !== undefined ? ` · ${body.total} ${body.currency || ""}` : "";
    return `${text}${extra}`;
  }
  if (RECORD_KINDS.has(item.kind)) return "content erased";
  const d = item.details || {};
  return `${d.points ?? ""} points${d.reward_ref ? ` · ${d.reward_ref}` : ""}${d.reason ? ` · ${d.reason}` : ""}`;
}

function ledgerCell(item, erased) {
  const state = erased && RECORD_KINDS.has(item.kind) && !item.content ? "erased" : item.ledger.state;
  const where = item.ledger.batch_id !== null && item.ledger.batch_id !== undefined
    ? `batch ${item.ledger.batch_id}, seq ${item.ledger.seq}` : item.ledger.tx_hash || "";
  return [badge(state, where || undefined), item.ledger.drift ? h("span", { class: "badge badge-failed" }, "drift") : null];
}

function integrityCard(view, ctx, customerId) {
  const integrity = view.integrity;
  const out = h("div", { id: "customer-audit", "aria-live": "polite" });
  const button = AUDITORS.includes(ctx.role)
    ? h("button", { type: "button", id: "audit-now", onclick: async () => {
        button.disabled = true;
        clear(out, h("p", {}, "Auditing every record of this customer against the chain…"));
        try {
          const report = await api(`/v1/audit/customers/${encodeURIComponent(customerId)}`);
          clear(out,
            h("p", {}, "Verdict: ", badge(report.verdict === "ok" ? "ok" : report.verdict), " ",
              Object.entries(report.counts).map(([k, v]) => `${k} ${v}`).join(", ")),
            report.problems.length ? h("ul", {}, report.problems.map((p) => h("li", {}, p))) : null,
            table("Records", ["seq", "kind", "status", "problems"], report.records.slice(0, 200).map((r) => [
              r.seq ?? "—", r.kind, badge(r.status), (r.problems || []).join("; ") || r.detail || ""])));
        } finally {
          button.disabled = false;
        }
      } }, "Audit now")
    : h("p", { class: "muted" }, "An auditor or admin key can audit this customer now.");
  return section("Integrity",
    h("p", {}, badge(integrity.status), " ", integrity.detail),
    integrity.finished_at ? h("p", { class: "muted" }, `Last ledger audit finished ${fmtTime(integrity.finished_at)}`) : null,
    integrity.discrepancies.length
      ? h("ul", {}, integrity.discrepancies.map((d) => h("li", {}, `${d.kind}: ${d.detail}`)))
      : null,
    button, out);
}

async function loyaltyCard(customerId) {
  const card = section("Loyalty");
  try {
    const account = await api(`/v1/customers/${encodeURIComponent(customerId)}/loyalty`);
    card.append(
      h("p", {}, h("span", { class: "big", id: "chain-balance" }, fmtNumber(account.chain_balance)),
        " points on chain", account.chain_error ? ` (chain: ${account.chain_error})` : ""),
      h("dl", { class: "kv" },
        h("dt", {}, "address"), h("dd", { class: "mono" }, account.address || "none yet"),
        h("dt", {}, "available"), h("dd", {}, fmtNumber(account.available)),
        h("dt", {}, "pending"), h("dd", {}, fmtNumber(account.pending)),
        h("dt", {}, "reserved"), h("dd", {}, fmtNumber(account.reserved))),
      table("Lots", ["earned", "points", "remaining", "state", "expires"], account.lots.slice(0, 100).map((lot) => [
        fmtTime(lot.earned_at), fmtNumber(lot.points), fmtNumber(lot.remaining), badge(lot.status), fmtTime(lot.expires_at)])));
  } catch (error) {
    card.append(h("p", { class: "muted" }, `Loyalty account: ${error.message}`));
  }
  return card;
}

export async function render(main, params, ctx) {
  const customerId = params.id;
  const started = performance.now();
  const view = await api(`/v1/crm/customers/${encodeURIComponent(customerId)}?timeline_limit=${TIMELINE_PAGE}`);
  const c = view.customer;
  const erased = Boolean(c.erased_at);
  const body = h("tbody");
  const addItems = (items) => body.append(...items.map((item) => h("tr", {},
    h("td", {}, fmtTime(item.at)),
    h("td", {}, item.kind),
    h("td", {}, summary(item)),
    h("td", {}, ledgerCell(item, erased)),
    h("td", {}, RECORD_KINDS.has(item.kind) ? h("a", { href: `#/records/${item.id}` }, "receipt") : (item.ledger.tx_hash ? h("code", { title: item.ledger.tx_hash }, item.ledger.tx_hash.slice(0, 10)) : "—")))));
  addItems(view.timeline.items);
  let cursor = view.timeline.next_cursor;
  const more = h("button", { type: "button", class: "secondary", id: "older", disabled: !cursor, onclick: async () => {
    const page = await api(`/v1/crm/customers/${encodeURIComponent(customerId)}?timeline_limit=${TIMELINE_PAGE}&timeline_cursor=${encodeURIComponent(cursor)}`);
    addItems(page.timeline.items);
    cursor = page.timeline.next_cursor;
    more.disabled = !cursor;
  } }, "Older items");
  const timeline = h("table", { id: "timeline" },
    h("caption", {}, "Timeline, newest first"),
    h("thead", {}, h("tr", {}, ["When", "Kind", "What", "Ledger state", "Receipt / tx"].map((x) => h("th", { scope: "col" }, x)))),
    body);
  clear(main,
    h("h1", {}, c.name || (erased ? "Erased customer" : "Customer")),
    h("div", { class: "grid" },
      section("Profile",
        h("dl", { class: "kv" },
          h("dt", {}, "id"), h("dd", { class: "mono" }, c.id),
          h("dt", {}, "email"), h("dd", {}, c.email || "—"),
          h("dt", {}, "phone"), h("dd", {}, c.phone || "—"),
          h("dt", {}, "external ref"), h("dd", {}, c.external_ref || "—"),
          h("dt", {}, "loyalty address"), h("dd", { class: "mono" }, view.loyalty ? view.loyalty.address : "—"),
          h("dt", {}, "tags"), h("dd", {}, c.tags.join(", ") || "—"),
          h("dt", {}, "created"), h("dd", {}, fmtTime(c.created_at)),
          erased ? [h("dt", {}, "erased"), h("dd", {}, badge("erased"), " ", fmtTime(c.erased_at))] : null)),
      section("Ledger",
        h("p", {}, badge("pending"), ` ${fmtNumber(view.records.pending)} `, badge("anchored"), ` ${fmtNumber(view.records.anchored)} `,
          badge("confirmed"), ` ${fmtNumber(view.records.confirmed)}`),
        h("p", { class: "muted" }, "Pending: in the journal, not on chain yet. Anchored: its batch transaction is mined. Confirmed: the indexer read it back from the chain.")),
      integrityCard(view, ctx, customerId)),
    await loyaltyCard(customerId),
    h("section", { class: "card" }, timeline, h("div", { class: "pager" }, more)));
  main.dataset.renderMs = String(Math.round(performance.now() - started));
}
