// Audit: start a ledger audit and watch it, read the latest report with its discrepancies and
// the seqs they name; the current digest with "save", and "check that the ledger only grew
// since a saved digest"; the reconciliation report with "reconcile now".
//
// Exports: render.

import { api } from "../api.js";
import { badge, clear, fmtNumber, fmtTime, h, section, table } from "../dom.js";

const POLL_MS = 1000;

function seqs(d) {
  if (d.seq !== undefined) return `seq ${d.seq}`;
  if (d.first_seq !== undefined) return `seqs ${d.first_seq}–${d.last_seq}`;
  if (d.batch_id !== undefined) return `batch ${d.batch_id}`;
  return "—";
}

function renderReport(container, run) {
  const report = run.report || {};
  const listed = report.discrepancies || [];
  const verdict = run.status !== "done" ? run.status : run.clean ? "clean" : "discrepancies";
  clear(container,
    h("p", {}, badge(verdict), ` started ${fmtTime(run.started_at)}`, run.finished_at ? `, finished ${fmtTime(run.finished_at)}` : ""),
    h("label", { for: "audit-progress" }, h("span", {}, `${fmtNumber(run.records_checked)} records checked`),
      h("progress", { id: "audit-progress", max: 1, value: run.status === "running" ? null : 1 })),
    run.error ? h("p", { class: "flash flash-error" }, run.error) : null,
    run.status === "done"
      ? h("p", {}, `${fmtNumber(run.discrepancy_count)} discrepancies`)
      : null,
    listed.length
      ? table("Discrepancies", ["kind", "where", "detail"], listed.map((d) => [d.kind, seqs(d), d.detail]))
      : null);
}

async function ledgerAudit(card) {
  const out = h("div", { id: "ledger-audit", "aria-live": "polite" });
  let polling = false;
  // Polls while a run is in progress and the page is still shown.
  const poll = async () => {
    try {
      const run = await api("/v1/audit/ledger");
      renderReport(out, run);
      polling = run.status === "running" && card.isConnected;
      if (polling) setTimeout(poll, POLL_MS);
    } catch (error) {
      polling = false;
      if (error.status === 404) clear(out, h("p", {}, "No ledger audit has run yet."));
      else throw error;
    }
  };
  const start = h("button", { type: "button", id: "start-audit", onclick: async () => {
    const run = await api("/v1/audit/ledger", { method: "POST" });
    renderReport(out, run);
    if (!polling) {
      polling = true;
      setTimeout(poll, POLL_MS);
    }
  } }, "Audit the whole ledger now");
  card.append(h("p", {}, "Recomputes every leaf, root and head from the journal and compares them with the chain."), start, out);
  await poll();
}

async function digests(card) {
  const current = h("pre", { id: "digest" }, "…");
  const save = h("a", { href: "#", id: "save-digest", download: "crm-ledger-digest.json" }, "Save this digest");
  try {
    const digest = await api("/v1/audit/digest");
    const text = JSON.stringify(digest, null, 2);
    current.textContent = text;
    save.addEventListener("click", () => {
      save.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    });
  } catch (error) {
    current.textContent = error.message;
  }
  const saved = h("textarea", { id: "saved-digest", name: "saved-digest", rows: 6, spellcheck: "false" });
  const file = h("input", { id: "saved-digest-file", name: "saved-digest-file", type: "file", accept: ".json" });
  file.addEventListener("change", async () => {
    if (file.files[0]) saved.value = await file.files[0].text();
  });
  const result = h("div", { id: "grew", "aria-live": "polite" });
  const check = h("button", { type: "button", id: "check-grew", onclick: async () => {
    let body;
    try {
      body = JSON.parse(saved.value);
    } catch {
      clear(result, h("p", { class: "flash flash-error" }, "The saved digest is not JSON: paste or load the file you saved."));
      return;
    }
    try {
      const answer = await api("/v1/audit/digest/verify", { method: "POST", body });
      clear(result,
        h("p", { class: `verdict ${answer.extends ? "ok" : "failed"}` },
          answer.extends ? `✓ The ledger only grew: ${answer.batches_added} batches, ${answer.records_added} records added since.` : "✗ The ledger does not extend this digest"),
        answer.failures.length ? h("ul", {}, answer.failures.map((f) => h("li", {}, f))) : null);
    } catch (error) {
      if (error.status === 422) clear(result, h("p", { class: "flash flash-error" }, error.message));
      else throw error;
    }
  } }, "Check that the ledger only grew");
  card.append(
    h("p", {}, "The head after the latest anchored batch: save it, and later prove that history was only appended to."),
    current, save,
    h("label", { for: "saved-digest" }, h("span", {}, "A digest you saved earlier"), saved),
    h("label", { for: "saved-digest-file" }, h("span", {}, "…or load it from a file"), file),
    check, result);
}

async function reconciliation(card) {
  const out = h("div", { id: "reconciliation", "aria-live": "polite" });
  const show = async () => {
    try {
      const run = await api("/v1/crm/reconciliation");
      const items = (run.report && run.report.items) || [];
      clear(out,
        h("p", {}, badge(run.status), ` ${run.trigger}, ${fmtTime(run.finished_at || run.requested_at)}: ${fmtNumber(run.drift_count)} drift items, ${fmtNumber(run.repaired_count)} repaired`),
        run.error ? h("p", { class: "flash flash-error" }, run.error) : null,
        items.length ? table("Drift", ["kind", "subject", "detail", "tampering?", "repaired"], items.map((d) => [
          d.kind, d.subject, d.detail, d.evidence_of_tampering ? "yes" : "no", d.repaired ? "yes" : "no"])) : null);
    } catch (error) {
      if (error.status === 404) clear(out, h("p", {}, "No reconciliation has run yet."));
      else throw error;
    }
  };
  card.append(h("button", { type: "button", class: "secondary", onclick: async () => {
    await api("/v1/crm/reconciliation", { method: "POST" });
    setTimeout(show, POLL_MS);
  } }, "Reconcile now"), out);
  await show();
}

export async function render(main) {
  const ledger = section("Ledger audit");
  const digest = section("Digest");
  const recon = section("Reconciliation (journal ↔ chain)");
  clear(main, h("h1", {}, "Audit"), ledger, digest, recon);
  await Promise.all([ledgerAudit(ledger), digests(digest), reconciliation(recon)]);
}
