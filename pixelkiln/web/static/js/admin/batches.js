// Admin → All batches: every user's batches with owner, status and progress; filters
// (status, owner, text) and the page live in the hash (#batches?status=failed&owner=2).
import { api, badge, el, showError, t, when } from "../kiln.js";
import { allUsers, count, goTo } from "./ui.js";

const PAGE = 25;
const form = document.getElementById("batch-filters");
const status = document.getElementById("filter-status");
const owner = document.getElementById("filter-owner");
const text = document.getElementById("filter-q");
const rows = document.querySelector("#batches-table tbody");
const summary = document.getElementById("batches-summary");
const prev = document.getElementById("batches-prev");
const next = document.getElementById("batches-next");

let shown = { status: "", owner: "", q: "", offset: 0 };

function row(b, names) {
  const percent = Math.round(b.progress * 100);
  const who = b.owner_id === null ? t("batches.no_owner") : names.get(b.owner_id) ?? `#${b.owner_id}`;
  const tasks = t("batches.task_counts", {
    done: count(b.counts.succeeded),
    total: count(b.counts.total),
    failed: count(b.counts.failed),
  });
  return el(
    "tr",
    {},
    el("td", {}, el("a", { href: `/batches/${b.id}` }, `#${b.id}`)),
    el("td", { class: "clip" }, b.name || "—"),
    el("td", {}, who),
    el("td", {}, badge(b.status)),
    el(
      "td",
      { class: "progress-cell" },
      el("progress", { max: 1, value: b.progress, "aria-label": t("batches.progress_of", { id: b.id }) }),
      el("span", { class: "num" }, `${percent}%`),
    ),
    el("td", {}, tasks),
    el("td", {}, when(b.created_at)),
  );
}

async function ownerChoices() {
  const users = await allUsers();
  const keep = owner.value;
  owner.replaceChildren(
    el("option", { value: "" }, t("batches.anyone")),
    ...users.map((u) => el("option", { value: String(u.id) }, u.name)),
  );
  owner.value = keep;
  return new Map(users.map((u) => [u.id, u.name]));
}

let asked = 0; // the newest request: an older answer arriving later is dropped

async function load() {
  const mine = ++asked;
  try {
    const names = await ownerChoices();
    owner.value = shown.owner;
    const found = await api("/admin/batches", {
      query: { status: shown.status, owner_id: shown.owner, q: shown.q, limit: PAGE, offset: shown.offset },
    });
    if (mine !== asked) return;
    rows.replaceChildren(...found.items.map((b) => row(b, names)));
    summary.textContent = found.items.length
      ? t("batches.showing", {
          from: count(found.offset + 1),
          to: count(found.offset + found.items.length),
          total: count(found.total ?? found.offset + found.items.length),
        })
      : t("batches.none");
    prev.disabled = shown.offset === 0;
    next.disabled = found.next_offset === null || found.next_offset === undefined;
  } catch (failure) {
    showError(failure);
  }
}

function show(params) {
  const offset = Number(params.get("offset"));
  const known = [...status.options].map((o) => o.value);
  shown = {
    status: known.includes(params.get("status")) ? params.get("status") : "",
    owner: /^\d{1,18}$/.test(params.get("owner") || "") ? params.get("owner") : "",
    q: params.get("q") || "",
    offset: Number.isSafeInteger(offset) && offset > 0 ? offset : 0,
  };
  status.value = shown.status;
  text.value = shown.q;
  load();
}

function go(changes) {
  const next = { ...shown, ...changes };
  goTo("batches", { ...next, offset: next.offset || null }, load);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  go({ status: status.value, owner: owner.value, q: text.value.trim(), offset: 0 });
});
prev.addEventListener("click", () => go({ offset: Math.max(0, shown.offset - PAGE) }));
next.addEventListener("click", () => go({ offset: shown.offset + PAGE }));

export default { show };
