// /admin: concurrency, presets, users and credits, every batch, stats, backend health.
// One section shows at a time; which one (and its filters) lives in the URL hash, so
// /admin#batches?status=failed can be bookmarked. Every call goes to the public /api/v1.
import { t } from "./kiln.js";
import concurrency from "./admin/concurrency.js";
import presets from "./admin/presets.js";
import users from "./admin/users.js";
import batches from "./admin/batches.js";
import stats from "./admin/stats.js";
import health from "./admin/health.js";
import { readHash } from "./admin/ui.js";

const SECTIONS = { concurrency, presets, users, batches, stats, health };
const FIRST = "concurrency";
const TITLE = document.title;
let current = null;

/** Show the section the hash names (its parameters too); focus its heading on a switch. */
function route() {
  const { name: asked, params } = readHash();
  const name = asked in SECTIONS ? asked : FIRST;
  for (const node of document.querySelectorAll(".admin-section")) {
    node.hidden = node.dataset.section !== name;
  }
  for (const link of document.querySelectorAll(".admin-menu a")) {
    if (link.dataset.section === name) link.setAttribute("aria-current", "true");
    else link.removeAttribute("aria-current");
  }
  const switched = current !== null && current !== name;
  if (current !== null && current !== name) SECTIONS[current].hide?.();
  current = name;
  document.title = `${t(`admin.${name}`)} · ${TITLE}`;
  SECTIONS[name].show(params);
  if (switched) document.getElementById(`h-${name}`)?.focus();
}

// a dialog's Cancel is type=button, so that Enter in a field submits its form (Save)
for (const button of document.querySelectorAll("dialog [data-close]")) {
  button.addEventListener("click", () => button.closest("dialog").close());
}

window.addEventListener("hashchange", route);
route();
