// "Verify a file": drop a receipt (JSON) or an export bundle (JSON Lines) and verify it in
// this browser against the chain, asking the crm-ledger service nothing. Also exports the
// verifier panel the receipt page uses.
//
// Exports: render, verifierPanel, renderSteps.

import { clear, h } from "../dom.js";
import { verifyBundle, verifyReceipt } from "../verifier.js";

const LABELS = {
  format: "Format",
  leaf_input: "Leaf input decodes",
  leaf_hash: "Leaf hash = SHA-256(0x00 ‖ leaf input)",
  position: "Position in the batch",
  inclusion: "RFC 9162 root from the audit path = batch root",
  head: "Ledger head = SHA-256(previous head ‖ root ‖ first seq ‖ count)",
  network: "The node is the receipt's chain and contract",
  root_on_chain: "The contract's batch(id) holds this root",
  transaction: "The anchoring transaction emitted this batch and head",
  block: "Its block is still on the canonical chain",
  chain: "Chain",
  records: "Every record",
  batches: "Every batch",
};

/** The list of steps, each ✓ or ✗ with what was expected and found. */
export function renderSteps(container, result) {
  clear(
    container,
    h("p", { class: `verdict ${result.ok ? "ok" : "failed"}`, role: "status" },
      result.ok ? "✓ Verified in this browser" : "✗ Verification failed"),
    h("ol", { class: "steps" }, result.steps.map((s) =>
      h("li", { class: s.status, dataset: { step: s.name, status: s.status } },
        h("span", { class: "mark", "aria-hidden": "true" }, s.status === "ok" ? "✓" : s.status === "failed" ? "✗" : "–"),
        h("strong", {}, LABELS[s.name] || s.name),
        h("span", { class: "sr-only" }, ` (${s.status})`),
        h("div", {}, s.detail),
        s.expected !== undefined
          ? h("dl", { class: "kv" }, h("dt", {}, "expected"), h("dd", { class: "mono" }, s.expected),
              h("dt", {}, "found"), h("dd", { class: "mono" }, s.found))
          : null))),
  );
}

/** RPC URL and contract inputs and a button that runs `verify(rpcUrl, contract)`. */
export function verifierPanel(ctx, { getInput, buttonLabel = "Verify in this browser" }) {
  const rpc = h("input", { id: "rpc-url", name: "rpc-url", type: "url", value: (ctx.chain && ctx.chain.rpc_url) || "http://127.0.0.1:8545" });
  const contract = h("input", { id: "contract", name: "contract", value: (ctx.chain && ctx.chain.contract) || "", placeholder: "the receipt's own", spellcheck: "false" });
  const out = h("div", { class: "result", "aria-live": "polite" });
  const button = h("button", { type: "button", id: "verify" }, buttonLabel);
  button.addEventListener("click", async () => {
    button.disabled = true;
    clear(out, h("p", {}, "Verifying…"));
    try {
      const input = getInput();
      const options = { rpcUrl: rpc.value.trim() || null, contract: contract.value.trim() || null };
      let result;
      if (input.kind === "bundle") result = await verifyBundle(input.text, options);
      else {
        let parsed;
        try {
          parsed = JSON.parse(input.text);
        } catch (error) {
          result = { ok: false, steps: [{ name: "format", status: "failed", detail: `not JSON: ${error.message}` }] };
        }
        if (!result) result = await verifyReceipt(parsed, options);
      }
      renderSteps(out, result);
    } finally {
      button.disabled = false;
    }
  });
  return h("div", { class: "verifier" },
    h("div", { class: "grid" },
      h("label", { for: "rpc-url" }, h("span", {}, "JSON-RPC URL the browser reads the chain from"), rpc),
      h("label", { for: "contract" }, h("span", {}, "AuditLedger contract you trust (empty: the receipt's)"), contract)),
    button, out);
}

function kindOf(text) {
  const first = text.trimStart().split("\n", 1)[0];
  try {
    return JSON.parse(first).format === "crm-ledger/bundle/v1" ? "bundle" : "receipt";
  } catch {
    return "receipt";
  }
}

export async function render(main, params, ctx) {
  let loaded = null;
  const status = h("p", { id: "file-status", class: "muted" }, "No file yet.");
  const input = h("input", { id: "file", name: "file", type: "file", accept: ".json,.jsonl,application/json" });
  const zone = h("div", { class: "dropzone", id: "dropzone" },
    h("p", {}, "Drop a receipt (.json) or an export bundle (.jsonl) here, or choose one:"),
    h("label", { for: "file" }, h("span", {}, "File"), input), status);
  const take = async (file) => {
    const text = await file.text();
    loaded = { kind: kindOf(text), text };
    clear(status, `${file.name}: a ${loaded.kind}, ${text.length.toLocaleString("en")} characters. Nothing was sent anywhere.`);
  };
  input.addEventListener("change", () => input.files[0] && take(input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files[0]) take(e.dataTransfer.files[0]);
  });
  const panel = verifierPanel(ctx, {
    getInput: () => loaded || { kind: "receipt", text: "" },
    buttonLabel: "Verify this file in the browser",
  });
  clear(main,
    h("h1", {}, "Verify a receipt or bundle"),
    h("p", {}, "Everything below runs in this browser: SHA-256 by WebCrypto, the chain read over JSON-RPC. The crm-ledger service is not asked anything."),
    h("section", { class: "card" }, h("h2", {}, "File"), zone),
    h("section", { class: "card" }, h("h2", {}, "Verification"), panel));
}
