// Operations: anchoring lag and backlog, records per minute, gas per record, batch sizes,
// indexer lag and chain status, refreshed every 5 seconds; the latest reconciliation's drift.
//
// Exports: render.

import { api } from "../api.js";
import { badge, clear, fmtNumber, fmtTime, h, section, table } from "../dom.js";
import { barChart, lineChart } from "../charts.js";

const REFRESH_MS = 5000;

function hhmm(iso) {
  return iso ? iso.slice(11, 16) : "";
}

async function drift(container) {
  try {
    const run = await api("/v1/crm/reconciliation");
    const items = ((run.report && run.report.items) || []).slice(0, 20);
    clear(container,
      h("p", {}, badge(run.status), ` ${fmtTime(run.finished_at || run.requested_at)} · ${fmtNumber(run.drift_count)} drift items, ${fmtNumber(run.repaired_count)} repaired`),
      items.length
        ? table("Latest drift items", ["kind", "subject", "detail", "repaired"], items.map((d) => [d.kind, d.subject, d.detail, d.repaired ? "yes" : "no"]))
        : h("p", {}, "No drift: the chain and the journal agree."));
  } catch (error) {
    clear(container, h("p", { class: "muted" }, error.message));
  }
}

export async function render(main, params, ctx) {
  const body = h("div", { id: "ops" });
  const driftBox = h("div", { id: "drift" });
  clear(main, h("h1", {}, "Operations"), h("p", { class: "muted" }, `Refreshes every ${REFRESH_MS / 1000} s.`), body,
    section("Reconciliation", driftBox));
  const refresh = async () => {
    const o = await api("/v1/ops/overview?minutes=60&batches=100");
    const labels = o.per_minute.map((p) => hhmm(p.minute));
    const batchLabels = o.batches.map((b) => `#${b.id}`);
    const indexer = o.indexer;
    clear(body,
      h("div", { class: "grid" },
        section("Anchoring",
          h("p", {}, h("span", { class: "big", id: "lag" }, `${o.anchoring.lag_seconds.toFixed(1)} s`), " lag"),
          h("p", {}, `${fmtNumber(o.anchoring.pending_records)} records not on chain yet`)),
        section("Chain",
          h("p", {}, badge(String(o.chain.state || "unknown"))),
          h("p", { class: "muted" }, o.chain.message || `chain ${o.chain.chain_id ?? "?"}, contract ${o.chain.contract ?? "?"}`)),
        section("Indexer",
          h("p", {}, badge(String(indexer.state || "stopped")), " ",
            indexer.lag_blocks !== undefined ? `${fmtNumber(indexer.lag_blocks)} blocks, ${Number(indexer.lag_seconds || 0).toFixed(1)} s behind` : ""),
          h("p", { class: "muted" }, `indexed through block ${fmtNumber(indexer.indexed_through)} of ${fmtNumber(indexer.head)}`))),
      h("div", { class: "grid" },
        section("Records anchored per minute", barChart("Records anchored per minute, last hour", o.per_minute.map((p) => p.records), { unit: "records", labels })),
        section("Gas per record, by batch", lineChart("Gas per record of the last batches", o.batches.map((b) => b.gas_per_record), { unit: "gas", labels: batchLabels })),
        section("Batch sizes", barChart("Records per batch, last batches", o.batches.map((b) => b.count), { unit: "records", labels: batchLabels })),
        section("Cut to mined", lineChart("Seconds from cut to mined, by batch", o.batches.map((b) => b.anchoring_seconds), { unit: "s", labels: batchLabels }))),
      h("p", { class: "muted" }, `As of ${fmtTime(o.generated_at)}.`));
  };
  await refresh();
  await drift(driftBox);
  ctx.every(REFRESH_MS, () => {
    refresh().catch(() => {});
    drift(driftBox);
  });
}
