// The console's entry point: sign-in, the role's navigation, and a hash router over pages.
//
// Exports: nothing (it runs on load). Pages live in pages/*.js, each exporting
// `render(main, params, ctx)`; ctx = {role, chain (from /v1/ops/chain), flash, every (an
// interval that stops when the user leaves the page)}.

import { api, ApiError, forgetKey, getKey, setKey } from "./api.js";
import { clear, h } from "./dom.js";

const EVERYONE = ["recorder", "auditor", "marketing", "admin"];
// Which roles see which page; the API enforces the same rules on every call.
const PAGES = [
  { path: "customers", label: "Customers", roles: EVERYONE, load: () => import("./pages/customers.js") },
  { path: "audit", label: "Audit", roles: ["auditor", "admin"], load: () => import("./pages/audit.js") },
  { path: "marketing", label: "Marketing", roles: ["marketing", "admin"], load: () => import("./pages/marketing.js") },
  { path: "ops", label: "Operations", roles: EVERYONE, load: () => import("./pages/ops.js") },
  { path: "verify", label: "Verify a file", roles: EVERYONE, open: true, load: () => import("./pages/verify.js") },
];
const HIDDEN = {
  customer: { roles: EVERYONE, load: () => import("./pages/customer.js") },
  records: { roles: EVERYONE, load: () => import("./pages/receipt.js") },
};

const ctx = { role: null, keyId: null, chain: null, flash };
let timers = [];
// A 401 sends the user to the sign-in page; its message must survive that navigation.
let keepFlash = false;

/** Show a message above the page; kind is "error" or "info". */
function flash(message, kind = "error") {
  const box = document.getElementById("flash");
  clear(box, message ? h("p", { class: `flash flash-${kind}` }, message) : null);
}

window.addEventListener("api-error", (event) => {
  const error = event.detail;
  if (error.status === 401) {
    forgetKey();
    ctx.role = null;
    flash(`The API refused the key (401 Unauthorized): ${error.message}. Sign in again with a valid key.`);
    keepFlash = true;
    renderNav();
    location.hash = "#/signin";
  } else if (error.status === 403) {
    flash(`Not allowed for your key's role, ${ctx.role} (403 Forbidden): ${error.message}`);
  }
});

function renderNav() {
  const nav = document.getElementById("nav");
  const allowed = PAGES.filter((p) => (ctx.role ? p.roles.includes(ctx.role) : p.open));
  clear(nav, h("ul", {}, allowed.map((p) => h("li", {}, h("a", { href: `#/${p.path}` }, p.label)))));
  const who = document.getElementById("who");
  clear(
    who,
    ctx.role
      ? [
          h("span", {}, "Signed in as ", h("strong", {}, ctx.role)),
          h("button", { type: "button", class: "link", onclick: signOut }, "Sign out"),
        ]
      : h("a", { href: "#/signin" }, "Sign in"),
  );
}

function signOut() {
  forgetKey();
  ctx.role = null;
  renderNav();
  location.hash = "#/signin";
}

async function loadIdentity() {
  if (!getKey()) return false;
  try {
    const me = await api("/v1/me");
    ctx.role = me.role;
    ctx.keyId = me.key_id;
    ctx.chain = await api("/v1/ops/chain");
    return true;
  } catch (error) {
    if (!(error instanceof ApiError)) flash(`The service cannot be reached: ${error.message}`);
    return false;
  }
}

function renderSignIn(main) {
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true,
    placeholder: "crml_…", spellcheck: "false",
  });
  const form = h(
    "form",
    { class: "card signin", onsubmit: async (event) => {
      event.preventDefault();
      setKey(input.value.trim());
      if (await loadIdentity()) {
        flash(null);
        renderNav();
        location.hash = "#/customers";
      }
    } },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API key (from ", h("code", {}, "crm-ledger keys create --role ROLE"),
      "). It is kept in this tab only and sent to the API as a Bearer token; closing the tab forgets it."),
    h("label", { for: "api-key" }, h("span", {}, "API key"), input),
    h("button", { type: "submit" }, "Sign in"),
    h("p", {}, "No key? ", h("a", { href: "#/verify" }, "Verify a receipt or bundle file"), " without one."),
  );
  clear(main, form);
  input.focus();
}

function renderHome(main) {
  const allowed = PAGES.filter((p) => p.roles.includes(ctx.role));
  clear(
    main,
    h("h1", {}, "crm-ledger console"),
    h("p", {}, `Signed in with a ${ctx.role} key. Pick a page:`),
    h("ul", { class: "tiles" }, allowed.map((p) => h("li", {}, h("a", { href: `#/${p.path}` }, p.label)))),
  );
}

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  // Each route renders into a view of its own: a slower, older route that finishes late
  // writes into a detached element instead of over the page the user went to since.
  const main = h("div", { class: "view" });
  document.getElementById("main").replaceChildren(main);
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  const params = { id: rest.length ? decodeURIComponent(rest.join("/")) : null, query: new URLSearchParams(query) };
  if (name === "signin") return renderSignIn(main);
  const page = PAGES.find((p) => p.path === name) || HIDDEN[name];
  if (!ctx.role && !(page && page.open)) return renderSignIn(main);
  if (!page) return renderHome(main);
  if (ctx.role && !page.roles.includes(ctx.role)) {
    clear(main, h("h1", {}, "Not available"), h("p", {}, `A ${ctx.role} key cannot open this page.`));
    return;
  }
  const module = await page.load();
  clear(main);
  try {
    // Timers of a route that has been left already are never started.
    const every = (ms, fn) => main.isConnected && timers.push(setInterval(fn, ms));
    await module.render(main, params, { ...ctx, every });
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (error.status !== 401 && error.status !== 403) {
      main.append(h("p", { class: "flash flash-error", role: "alert" }, `${error.status}: ${error.message}`));
    }
  }
}

window.addEventListener("hashchange", () => {
  if (!keepFlash) flash(null);
  keepFlash = false;
  route();
});

await loadIdentity();
renderNav();
route();
