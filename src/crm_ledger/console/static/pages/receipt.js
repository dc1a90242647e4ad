// A record's receipt: the record, its receipt (editable, to see the verifier catch a change),
// and "verify in this browser".
//
// Exports: render.

import { api } from "../api.js";
import { clear, fmtTime, h, section } from "../dom.js";
import { verifierPanel } from "./verify.js";

export async function render(main, params, ctx) {
  const recordId = params.id;
  const record = await api(`/v1/records/${encodeURIComponent(recordId)}`);
  const receipt = await api(`/v1/records/${encodeURIComponent(recordId)}/receipt`);
  const pending = receipt._status === 202;
  const text = h("textarea", { id: "receipt-json", name: "receipt-json", rows: 18, cols: 90, spellcheck: "false" },
    JSON.stringify(receipt, null, 2));
  const download = h("a", { href: "#", download: `receipt-${recordId}.json` }, "Download the receipt");
  download.addEventListener("click", () => {
    download.href = URL.createObjectURL(new Blob([text.value], { type: "application/json" }));
  });
  clear(main,
    h("h1", {}, "Receipt"),
    section("Record",
      h("dl", { class: "kv" },
        h("dt", {}, "id"), h("dd", { class: "mono" }, record.id),
        h("dt", {}, "customer"), h("dd", {}, h("a", { href: `#/customer/${record.customer_id}` }, record.customer_id)),
        h("dt", {}, "kind"), h("dd", {}, record.kind),
        h("dt", {}, "status"), h("dd", {}, record.status),
        h("dt", {}, "recorded"), h("dd", {}, fmtTime(record.recorded_at)),
        h("dt", {}, "seq"), h("dd", {}, record.seq ?? "not anchored yet"))),
    pending
      ? section("Not anchored yet", h("p", {}, "The record is in the journal; its batch is not on chain yet. Reload in a moment."))
      : [
          section("Receipt (crm-ledger/receipt/v1)",
            h("label", { for: "receipt-json" }, h("span", {}, "Receipt JSON: edit it to see the verifier catch the change"), text),
            download),
          section("Verify in this browser", verifierPanel(ctx, { getInput: () => ({ kind: "receipt", text: text.value }) })),
        ]);
}
