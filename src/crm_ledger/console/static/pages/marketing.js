// Marketing: campaigns with rules, budget, spent and remaining (a bar, and spend over time
// against the budget); create a campaign; a bulk award from a CSV file or a tag segment with a
// live progress bar; redemptions; points expiring in the next 30 days.
//
// Exports: render, parseCustomerIds.

import { api } from "../api.js";
import { badge, clear, fmtNumber, h, section, table } from "../dom.js";
import { barChart, lineChart } from "../charts.js";

const POLL_MS = 700;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Customer ids from CSV text: every cell that is a customer id (any column, header or not). */
export function parseCustomerIds(text) {
  const ids = [];
  for (const line of text.split(/\r?\n/)) {
    for (const cell of line.split(/[,;\t]/)) {
      const value = cell.trim().replace(/^"|"$/g, "");
      if (UUID.test(value)) ids.push(value.toLowerCase());
    }
  }
  return [...new Set(ids)];
}

function rulesText(rules) {
  return rules.map((r) => r.type === "order_total" ? `${r.points_per_unit} pts per ${r.currency || ""} unit of order`
    : r.type === "interaction" ? `${r.points} pts per ${r.interaction_type}`
    : r.type === "tag_multiplier" ? `×${r.multiplier} for tag ${r.tag}` : r.type).join("; ") || "awards only";
}

function campaignRows(campaigns, onSelect) {
  return campaigns.map((c) => [
    h("button", { type: "button", class: "link-dark secondary", onclick: () => onSelect(c) }, c.name),
    badge(c.status),
    rulesText(c.rules),
    fmtNumber(c.budget),
    fmtNumber(c.issued_points),
    fmtNumber(c.remaining),
    h("meter", { min: 0, max: c.budget, value: c.planned_points, "aria-label": `${c.name}: ${c.planned_points} of ${c.budget} points planned or spent` }),
  ]);
}

function createForm(onCreated) {
  const name = h("input", { id: "c-name", name: "name", required: true, maxlength: 200 });
  const budget = h("input", { id: "c-budget", name: "budget", type: "number", min: 1, required: true });
  const cap = h("input", { id: "c-cap", name: "cap", type: "number", min: 1 });
  const expiry = h("input", { id: "c-expiry", name: "expiry", placeholder: "P90D" });
  const perOrder = h("input", { id: "c-order", name: "per-order", type: "number", min: 0, step: "any" });
  const interactionType = h("input", { id: "c-itype", name: "interaction-type", placeholder: "review" });
  const interactionPoints = h("input", { id: "c-ipoints", name: "interaction-points", type: "number", min: 1 });
  const out = h("div", { "aria-live": "polite" });
  const label = (input, text) => h("label", { for: input.id }, h("span", {}, text), input);
  return h("form", { id: "create-campaign", onsubmit: async (event) => {
    event.preventDefault();
    const rules = [];
    if (perOrder.value) rules.push({ type: "order_total", points_per_unit: perOrder.value });
    if (interactionType.value && interactionPoints.value) {
      rules.push({ type: "interaction", interaction_type: interactionType.value, points: Number(interactionPoints.value) });
    }
    const body = { name: name.value, budget: Number(budget.value), rules };
    if (cap.value) body.per_customer_cap = Number(cap.value);
    if (expiry.value) body.points_expire_after = expiry.value;
    try {
      const made = await api("/v1/campaigns", { method: "POST", body });
      clear(out, h("p", { class: "flash flash-info" }, `Campaign "${made.name}" created; its budget is being set on chain.`));
      onCreated();
    } catch (error) {
      const fields = (error.problem && error.problem.errors) || [];
      clear(out, h("p", { class: "flash flash-error" }, error.message,
        fields.length ? h("ul", {}, fields.map((f) => h("li", {}, `${f.field}: ${f.message}`))) : null));
    }
  } },
  h("div", { class: "grid" }, label(name, "Name"), label(budget, "Budget (points)"), label(cap, "Cap per customer (optional)"),
    label(expiry, "Points expire after (ISO 8601, e.g. P90D; optional)"), label(perOrder, "Points per unit of order total (optional)"),
    label(interactionType, "Interaction type that earns (optional)"), label(interactionPoints, "Points per such interaction")),
  h("button", { type: "submit" }, "Create campaign"), out);
}

function awardForm(getCampaigns) {
  const campaign = h("select", { id: "a-campaign", name: "campaign", required: true });
  const refresh = () => clear(campaign, getCampaigns().filter((c) => c.status === "active").map((c) => h("option", { value: c.id }, c.name)));
  const points = h("input", { id: "a-points", name: "points", type: "number", min: 1, required: true });
  const csv = h("input", { id: "a-csv", name: "csv", type: "file", accept: ".csv,text/csv,text/plain" });
  const tag = h("input", { id: "a-tag", name: "tag", placeholder: "or every customer with this tag" });
  const status = h("div", { id: "award-status", "aria-live": "polite" });
  const form = h("form", { id: "award", onsubmit: async (event) => {
    event.preventDefault();
    const body = { points: Number(points.value) };
    if (csv.files[0]) {
      body.customer_ids = parseCustomerIds(await csv.files[0].text());
      if (!body.customer_ids.length) {
        clear(status, h("p", { class: "flash flash-error" }, "The CSV holds no customer id (the ids look like 3f0c6a52-5b7e-4c1a-9d2e-8f4b1c7a9e10)."));
        return;
      }
    } else if (tag.value) body.segment = { tag: tag.value };
    else {
      clear(status, h("p", { class: "flash flash-error" }, "Choose a CSV file of customer ids or give a tag."));
      return;
    }
    let job;
    try {
      job = await api(`/v1/campaigns/${campaign.value}/awards`, { method: "POST", body });
    } catch (error) {
      clear(status, h("p", { class: "flash flash-error" }, error.message));
      return;
    }
    const bar = h("progress", { id: "award-progress", max: job.recipients, value: job.issued });
    const text = h("p", {});
    clear(status, h("label", { for: "award-progress" }, h("span", {}, "Award progress"), bar), text);
    const show = (j) => {
      bar.value = j.issued;
      clear(text, badge(j.status), ` ${fmtNumber(j.issued)} of ${fmtNumber(j.recipients)} recipients issued on chain, ${fmtNumber(j.pending)} pending, ${fmtNumber(j.failed)} failed`,
        j.errors.length ? ` — ${j.errors.join("; ")}` : "");
    };
    show(job);
    while (job.status === "queued" || job.pending > 0) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      job = await api(job.progress_url);
      show(job);
      if (job.status === "failed") break;
    }
  } },
  h("div", { class: "grid" },
    h("label", { for: "a-campaign" }, h("span", {}, "Campaign"), campaign),
    h("label", { for: "a-points" }, h("span", {}, "Points per customer"), points),
    h("label", { for: "a-csv" }, h("span", {}, "CSV of customer ids"), csv),
    h("label", { for: "a-tag" }, h("span", {}, "Tag segment"), tag)),
  h("button", { type: "submit" }, "Award points"), status);
  return { form, refresh };
}

function redemptionForm() {
  const customer = h("input", { id: "r-customer", name: "customer", required: true, placeholder: "customer id" });
  const points = h("input", { id: "r-points", name: "points", type: "number", min: 1, required: true });
  const ref = h("input", { id: "r-ref", name: "reward", required: true, placeholder: "e.g. mug-2026" });
  const out = h("div", { "aria-live": "polite" });
  return h("form", { id: "redeem", onsubmit: async (event) => {
    event.preventDefault();
    try {
      let r = await api("/v1/redemptions", { method: "POST", body: { customer_id: customer.value.trim(), points: Number(points.value), reward_ref: ref.value } });
      clear(out, h("p", {}, badge(r.status), ` ${r.points} points for ${r.reward_ref}`));
      for (let i = 0; i < 60 && r.status === "pending"; i++) {
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        r = await api(`/v1/redemptions/${r.id}`);
        clear(out, h("p", {}, badge(r.status), ` ${r.points} points for ${r.reward_ref}`, r.error ? ` — ${r.error}` : ""));
      }
    } catch (error) {
      clear(out, h("p", { class: "flash flash-error" }, error.message));
    }
  } },
  h("div", { class: "grid" },
    h("label", { for: "r-customer" }, h("span", {}, "Customer id"), customer),
    h("label", { for: "r-points" }, h("span", {}, "Points"), points),
    h("label", { for: "r-ref" }, h("span", {}, "Reward reference"), ref)),
  h("button", { type: "submit" }, "Redeem"), out);
}

async function spendChart(container, campaign) {
  const spend = await api(`/v1/ops/campaigns/${campaign.id}/spend?bucket=hour&buckets=48`);
  clear(container,
    h("h3", {}, `${campaign.name}: spend over the last 48 hours`),
    lineChart(`${campaign.name}: points issued on chain (cumulative) against the budget`,
      spend.points.map((p) => p.cumulative_points), { unit: "points", limit: spend.budget, labels: spend.points.map((p) => p.at.slice(5, 16).replace("T", " ")) }),
    h("p", { class: "muted" }, `Budget ${fmtNumber(spend.budget)} (dashed), on-chain budget ${fmtNumber(campaign.chain_budget)}, issued ${fmtNumber(campaign.issued_points)}, remaining ${fmtNumber(campaign.remaining)}.`));
}

export async function render(main) {
  let campaigns = [];
  const list = h("div", { id: "campaigns" });
  const chart = h("div", { id: "spend" });
  const award = awardForm(() => campaigns);
  const expiring = h("div", { id: "expiring" });
  const load = async () => {
    campaigns = (await api("/v1/campaigns")).items;
    clear(list, campaigns.length
      ? table("Campaigns", ["Name", "Status", "Rules", "Budget", "Spent (on chain)", "Remaining", "Budget used"], campaignRows(campaigns, (c) => spendChart(chart, c)))
      : h("p", {}, "No campaign yet: create one below."));
    award.refresh();
    if (campaigns.length) await spendChart(chart, campaigns[0]);
  };
  clear(main, h("h1", {}, "Marketing"),
    section("Campaigns", list, chart),
    section("New campaign", createForm(load)),
    section("Bulk award", award.form),
    section("Redemption", redemptionForm()),
    section("Points expiring in the next 30 days", expiring));
  await load();
  const soon = await api("/v1/ops/loyalty/expiring?days=30");
  clear(expiring,
    h("p", {}, h("span", { class: "big" }, fmtNumber(soon.total_points)), " points expire in the next 30 days"),
    soon.by_day.length
      ? [barChart("Points expiring per day", soon.by_day.map((d) => d.points), { unit: "points", labels: soon.by_day.map((d) => d.day) }),
         table("By day", ["day", "points", "lots"], soon.by_day.map((d) => [d.day, fmtNumber(d.points), fmtNumber(d.lots)]))]
      : h("p", { class: "muted" }, "Nothing expires in the next 30 days."));
}
