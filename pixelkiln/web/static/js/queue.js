// /queue: my queued, running and paused batches, numbered in the order the scheduler
// claims them (GET /api/v1/queue). Reorder by dragging, by the buttons, or with
// Alt+↑ / Alt+↓ on a batch; every change is saved at once (PUT /api/v1/queue) and
// announced in a live region. My batches only trade places with each other: the
// server keeps other users' batches where they are.
import { api, badge, debounce, el, showError, t, when } from "./kiln.js";

const LIMIT = 500; // batches shown (and reordered) at most; the rest keep their places
const list = document.getElementById("queue-list");
const empty = document.getElementById("queue-empty");
const more = document.getElementById("queue-more");
const live = document.getElementById("queue-live");
const allUsers = document.getElementById("all-users");

let batches = []; // as shown, first to be claimed first
let total = 0;
let dragged = null; // id of the batch being dragged
let saving = Promise.resolve(); // saves run one after another, in the order made
let unsaved = 0; // saves not answered yet: an answer is shown only when none is left

const everyone = () => Boolean(allUsers && allUsers.checked);

function announce(text) {
  live.textContent = "";
  // a new text node each time, so the same words are read again
  requestAnimationFrame(() => { live.textContent = text; });
}

async function load() {
  try {
    const page = await api("/queue", { query: { limit: LIMIT, all_users: everyone() || null } });
    show(page, focusedControl());
  } catch (error) {
    showError(error);
  }
}

function show(page, focus) {
  batches = page.items;
  total = page.total ?? batches.length;
  render(focus);
}

function render(focus) {
  list.replaceChildren(...batches.map((batch, i) => item(batch, i)));
  list.setAttribute("aria-busy", "false");
  empty.hidden = batches.length > 0;
  more.hidden = total <= batches.length;
  more.textContent = t("queue.more", { shown: batches.length, total });
  if (focus) restoreFocus(focus);
}

const MOVES = [
  // action, arrow, the index it moves to from i (n batches)
  ["up", "↑", (i) => i - 1],
  ["down", "↓", (i) => i + 1],
  ["top", "⤒", () => 0],
  ["bottom", "⤓", (i, n) => n - 1],
];

function item(batch, i) {
  const n = batches.length;
  const name = batch.name;
  const c = batch.counts;
  const done = c.succeeded + c.failed + c.cancelled;
  const buttons = MOVES.map(([action, arrow, to]) => {
    const target = to(i, n);
    const label = t(`queue.move_${action}`, { name });
    return el(
      "button",
      {
        type: "button",
        class: "ghost move",
        "aria-label": label,
        title: label,
        dataset: { action },
        disabled: target < 0 || target >= n || target === i,
        onclick: () => moveTo(batch.id, target, action),
      },
      el("span", { "aria-hidden": "true" }, arrow),
      el("span", { class: "short" }, t(`queue.short_${action}`)),
    );
  });
  const facts = [badge(batch.status)];
  if (everyone()) facts.push(el("span", { class: "hint" }, t("queue.owner", { id: batch.owner_id ?? "—" })));
  if (batch.scheduled_at && batch.scheduled_at * 1000 > Date.now()) {
    facts.push(el("span", { class: "hint" }, t("queue.scheduled", { when: when(batch.scheduled_at) })));
  }
  return el(
    "li",
    { class: "qitem", draggable: "true", dataset: { id: batch.id } },
    el("span", { class: "handle", "aria-hidden": "true", title: t("queue.drag") }, "⠿"),
    el("span", { class: "pos", "aria-hidden": "true" }, String(batch.position)),
    el(
      "div",
      { class: "qmain" },
      el("div", { class: "qhead" }, el("a", { href: `/batches/${batch.id}`, class: "qname" }, name), ...facts),
      el(
        "div",
        { class: "qprogress" },
        el("progress", { max: Math.max(1, c.total), value: done, "aria-label": t("queue.progress_label", { name }) }),
        el("span", { class: "hint" }, t("queue.progress", { done, total: c.total })),
      ),
    ),
    el("div", { class: "actions qmoves" }, buttons),
  );
}

// -- moving -----------------------------------------------------------------------------------

function moveTo(id, to, focusAction) {
  const from = batches.findIndex((b) => b.id === id);
  if (from < 0 || to < 0 || to >= batches.length || to === from) return;
  const [batch] = batches.splice(from, 1);
  batches.splice(to, 0, batch);
  batches.forEach((b, i) => { b.position = i + 1; });
  render(focusAction ? { id, action: focusAction } : null);
  announce(t("queue.moved", { name: batch.name, position: to + 1, total: batches.length }));
  save(batches.map((b) => b.id));
}

function save(order) {
  unsaved += 1;
  const body = { batch_ids: order };
  if (everyone()) body.all_users = true;
  saving = saving.then(async () => {
    try {
      const page = await api("/queue", { method: "PUT", json: body, query: { limit: LIMIT } });
      unsaved -= 1;
      if (unsaved === 0 && dragged === null) show(page, focusedControl());
    } catch (error) {
      unsaved -= 1;
      showError(error);
      announce(t("queue.unsaved"));
      await load(); // what the server kept
    }
  });
}

/** The control with focus inside the list, as {id, action} ("link" for the name). */
function focusedControl() {
  const active = document.activeElement;
  const li = active && active.closest && active.closest("li[data-id]");
  if (!li || !list.contains(li)) return null;
  return { id: Number(li.dataset.id), action: active.dataset.action || "link" };
}

function restoreFocus({ id, action }) {
  const li = list.querySelector(`li[data-id="${id}"]`);
  if (!li) return;
  const button = action === "link" ? null : li.querySelector(`button[data-action="${action}"]`);
  (button && !button.disabled ? button : li.querySelector(".qname")).focus();
}

list.addEventListener("keydown", (event) => {
  if (!event.altKey || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
  const here = focusedControl();
  if (!here) return;
  event.preventDefault();
  const from = batches.findIndex((b) => b.id === here.id);
  moveTo(here.id, from + (event.key === "ArrowUp" ? -1 : 1), here.action);
});

// -- dragging (HTML5 drag and drop) ------------------------------------------------------------

function clearMarks() {
  for (const node of list.querySelectorAll(".drop-before, .drop-after, .dragging")) {
    node.classList.remove("drop-before", "drop-after", "dragging");
  }
}

function dropPlace(event) {
  const li = event.target.closest && event.target.closest("li[data-id]");
  if (!li) return null;
  const box = li.getBoundingClientRect();
  return { li, after: event.clientY > box.top + box.height / 2 };
}

list.addEventListener("dragstart", (event) => {
  const li = event.target.closest && event.target.closest("li[data-id]");
  if (!li) return;
  dragged = Number(li.dataset.id);
  event.dataTransfer.effectAllowed = "move";
  event.dataTransfer.setData("text/plain", li.querySelector(".qname").textContent);
  li.classList.add("dragging");
});

list.addEventListener("dragover", (event) => {
  if (dragged === null) return;
  const place = dropPlace(event);
  if (!place) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "move";
  for (const node of list.querySelectorAll(".drop-before, .drop-after")) {
    node.classList.remove("drop-before", "drop-after");
  }
  place.li.classList.add(place.after ? "drop-after" : "drop-before");
});

list.addEventListener("drop", (event) => {
  if (dragged === null) return;
  const place = dropPlace(event);
  if (!place) return;
  event.preventDefault();
  const id = dragged;
  dragged = null;
  clearMarks();
  const from = batches.findIndex((b) => b.id === id);
  let to = batches.findIndex((b) => b.id === Number(place.li.dataset.id)) + (place.after ? 1 : 0);
  if (from < to) to -= 1; // the batch leaves its own place first
  moveTo(id, to, null);
});

list.addEventListener("dragend", () => {
  dragged = null;
  clearMarks();
});

// -- live: progress and statuses from my batches' events ---------------------------------------

const reload = debounce(() => {
  if (dragged !== null || unsaved > 0) {
    reload();
    return;
  }
  load();
}, 500);

function followMine() {
  const source = new EventSource("/api/v1/events");
  for (const type of ["batch_update", "progress", "done"]) {
    source.addEventListener(type, () => { if (!everyone()) reload(); });
  }
  window.addEventListener("pagehide", () => source.close());
}

document.getElementById("queue-refresh").addEventListener("click", load);
allUsers?.addEventListener("change", load);
load();
followMine();
