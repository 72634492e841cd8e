// /records: search my generated images by prompt and filters, browse their thumbnails
// page by page, and look at one in a lightbox (← / → walk, across pages too; Esc closes).
//
// Everything comes from GET /api/v1/images (newest first; `before` is the cursor of the
// next, older page) and goes back by DELETE /api/v1/images/{id}. The filters live in
// the URL (/records?q=moth&backend=placeholder&before=120): a search is a bookmark, and
// Back / Forward walk the searches and pages a person went through.
import { ApiFailure, api, confirmDialog, debounce, el, imageUrl, showError, t, thumbUrl, toast, when } from "./kiln.js";

const PAGE = 48; // thumbnails per page
const FILTERS = ["q", "batch_id", "since", "until", "backend", "status"];
const THUMB = 256; // thumbnail size asked for (the grid's tiles are smaller: sharp on HiDPI)

const $ = (id) => document.getElementById(id);
const form = $("records-search");
const grid = $("rec-grid");
const summary = $("rec-summary");
const batchInput = $("rec-batch");
const lightbox = $("lightbox");

let items = []; // the page shown, newest first
let next = null; // the cursor of the next (older) page, null on the last one
let total = null; // every match, when the server could say cheaply
let shown = -1; // the index open in the lightbox
let loading = null; // the AbortController of the page being loaded

// -- the URL: filters, cursor, and the cursors of the newer pages walked through ---------------

/** The search in the URL: {filters, before}. */
function fromUrl() {
  const params = new URLSearchParams(location.search);
  const filters = Object.fromEntries(FILTERS.map((k) => [k, params.get(k) || ""]));
  const before = Number(params.get("before")) || null;
  return { filters, before };
}

function urlOf(filters, before) {
  const params = new URLSearchParams();
  for (const key of FILTERS) if (filters[key]) params.set(key, filters[key]);
  if (before) params.set("before", String(before));
  const query = params.toString();
  return `/records${query ? `?${query}` : ""}`;
}

/** The cursors of the newer pages, kept in the history entry (null: the newest page). */
const trail = () => (history.state && Array.isArray(history.state.trail) ? history.state.trail : null);

/** Show a search (a new history entry; `typed`: one entry for a run of typing). */
function go(filters, before, newerTrail, { typed = false } = {}) {
  const state = { trail: newerTrail, typed };
  const url = urlOf(filters, before);
  if (typed && history.state && history.state.typed) history.replaceState(state, "", url);
  else history.pushState(state, "", url);
  return load();
}

// -- the form -------------------------------------------------------------------------------

function fill(filters) {
  for (const key of FILTERS) form.elements[key].value = filters[key] || "";
  batchInput.removeAttribute("aria-invalid");
  $("rec-batch-error").hidden = true;
}

/** The form's filters, or null when the batch is not an id (said beside it). */
function filtersOfForm() {
  const filters = Object.fromEntries(FILTERS.map((k) => [k, form.elements[k].value.trim()]));
  const batch = filters.batch_id.match(/^#?(\d{1,18})\b/); // "12", "#12", "12 my batch"
  const valid = !filters.batch_id || Boolean(batch && Number(batch[1]) > 0);
  if (valid) batchInput.removeAttribute("aria-invalid");
  else batchInput.setAttribute("aria-invalid", "true");
  $("rec-batch-error").hidden = valid;
  if (!valid) return null;
  filters.batch_id = batch ? batch[1] : "";
  return filters;
}

function search({ typed = false } = {}) {
  const filters = filtersOfForm();
  if (!filters) return;
  const current = fromUrl();
  const same = FILTERS.every((k) => (current.filters[k] || "") === filters[k]);
  if (same && !current.before) return; // nothing changed: no new history entry
  go(filters, null, [], { typed });
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  search();
});
// typing searches as it goes, in one history entry per run of typing (one per letter
// would bury Back); Enter or a filter changed makes a new entry
const typed = debounce(() => search({ typed: true }), 350);
$("rec-q").addEventListener("input", typed);
for (const key of ["since", "until", "backend", "status"]) {
  form.elements[key].addEventListener("change", () => search());
}
batchInput.addEventListener("change", () => search());
$("rec-clear").addEventListener("click", () => {
  fill({});
  search();
  $("rec-q").focus();
});

/** A date input's day as the API's instant: its local midnight (`until`: the day after). */
function instant(day, after = false) {
  if (!day) return null;
  const at = new Date(`${day}T00:00:00`);
  if (Number.isNaN(at.getTime())) return null;
  if (after) at.setDate(at.getDate() + 1);
  return at.toISOString();
}

// -- a page of thumbnails ------------------------------------------------------------------

async function load() {
  const { filters, before } = fromUrl();
  fill(filters);
  loading?.abort();
  const mine = (loading = new AbortController());
  grid.setAttribute("aria-busy", "true");
  grid.classList.add("loading");
  summary.textContent = t("records.loading");
  const query = {
    q: filters.q,
    batch_id: filters.batch_id,
    backend: filters.backend,
    status: filters.status,
    since: instant(filters.since),
    until: instant(filters.until, true),
    before,
    limit: PAGE,
  };
  try {
    const found = await api("/images", { query, signal: mine.signal });
    items = found.items;
    next = found.next_cursor;
    total = found.total;
    render(filters, before);
  } catch (error) {
    if (error.name === "AbortError") return;
    items = [];
    next = null;
    render(filters, before);
    summary.textContent = t("records.failed");
    showError(error);
  } finally {
    if (loading === mine) {
      loading = null;
      grid.setAttribute("aria-busy", "false");
      grid.classList.remove("loading");
    }
  }
}

function render(filters, before) {
  grid.replaceChildren(...items.map(tile));
  const filtered = FILTERS.some((k) => filters[k]);
  const empty = items.length === 0;
  $("rec-empty").hidden = !empty;
  $("rec-empty-text").textContent = filtered || before ? t("records.empty_filtered") : t("records.empty");
  $("rec-empty-start").hidden = filtered || Boolean(before);
  summary.textContent = empty ? "" : describe(filtered, before);
  const newer = trail();
  $("rec-newer").hidden = !before;
  $("rec-newest").hidden = !before || !newer || newer.length < 2;
  $("rec-older").hidden = !next;
  $("rec-page").textContent = newer && (before || next) ? t("records.page", { n: newer.length + 1 }) : "";
}

function describe(filtered, before) {
  let known = total;
  if (known === null && !next && !before) known = items.length; // the one page holds all
  if (known === null) return t("records.count_unknown", { shown: items.length });
  return t(filtered ? "records.count_matches" : "records.count", { total: known, shown: items.length });
}

function tile(image, index) {
  const prompt = image.prompt || "";
  return el(
    "li",
    { class: "rec-tile" },
    el(
      "button",
      {
        type: "button",
        class: "thumb",
        dataset: { id: image.id },
        "aria-label": t("records.open", { id: image.id, prompt: clip(prompt, 80) }),
        onclick: () => open(index),
      },
      el("img", { src: thumbUrl(image.id, THUMB), loading: "lazy", decoding: "async", width: THUMB, height: THUMB, alt: "" }),
    ),
    el("p", { class: "rec-caption", title: prompt }, prompt || "—"),
  );
}

const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

// -- pages ----------------------------------------------------------------------------------

async function older() {
  if (!next) return false;
  const { filters, before } = fromUrl();
  await go(filters, next, [...(trail() || []), before]);
  return true;
}

async function newer() {
  const { filters } = fromUrl();
  const walked = trail();
  if (!walked || walked.length === 0) {
    await go(filters, null, []); // came here by a bookmark: back to the newest
    return;
  }
  await go(filters, walked[walked.length - 1], walked.slice(0, -1));
}

$("rec-older").addEventListener("click", async () => {
  await older();
  grid.querySelector("button.thumb")?.focus();
});
$("rec-newer").addEventListener("click", async () => {
  await newer();
  grid.querySelector("button.thumb")?.focus();
});
$("rec-newest").addEventListener("click", async () => {
  await go(fromUrl().filters, null, []);
  grid.querySelector("button.thumb")?.focus();
});
window.addEventListener("popstate", () => {
  if (lightbox.open) lightbox.close();
  load();
});

// -- the lightbox -----------------------------------------------------------------------------

function open(index) {
  show(index);
  if (!lightbox.open) lightbox.showModal();
}

function show(index) {
  shown = index;
  const image = items[index];
  $("lb-title").textContent = t("records.image_title", { id: image.id });
  const img = $("lb-img");
  img.src = imageUrl(image.id);
  img.width = image.width;
  img.height = image.height;
  img.alt = clip(image.prompt || "", 200);
  $("lb-prompt").textContent = image.prompt || "—";
  $("lb-negative").textContent = image.negative_prompt || "—";
  $("lb-size").textContent = `${image.width} × ${image.height}`;
  $("lb-seed").textContent = image.seed ?? "—";
  $("lb-backend").textContent = [image.backend, image.model].filter(Boolean).join(" · ") || "—";
  const link = el("a", { href: `/batches/${image.batch_id}` }, image.batch_name || `#${image.batch_id}`);
  $("lb-batch").replaceChildren(link, ` (#${image.batch_id})`);
  $("lb-created").textContent = when(image.created_at);
  showInputs(image.inputs || []);
  const download = $("lb-download");
  download.href = imageUrl(image.id);
  download.setAttribute("download", ""); // the server's Content-Disposition names the file
  const first = index === 0 && !fromUrl().before;
  $("lb-prev").disabled = first;
  $("lb-next").disabled = index === items.length - 1 && !next;
  $("lb-position").textContent = t("records.position", { n: index + 1, count: items.length });
}

function showInputs(inputs) {
  $("lb-inputs").hidden = inputs.length === 0;
  let references = 0;
  $("lb-inputs-list").replaceChildren(
    ...inputs.map((input) => {
      const label = input.role === "init_image" ? t("records.init_image") : t("records.reference", { n: ++references });
      return el(
        "li",
        {},
        el(
          "a",
          { href: input.url, target: "_blank", rel: "noopener", "aria-label": label },
          el("img", { src: input.url, alt: "", width: 96, height: 96, loading: "lazy" }),
        ),
        el("span", { class: "hint" }, label),
      );
    }),
  );
}

async function step(by) {
  const target = shown + by;
  if (target >= 0 && target < items.length) return show(target);
  if (by > 0 && next) {
    if (await older()) show(0);
  } else if (by < 0 && fromUrl().before) {
    await newer();
    if (items.length) show(items.length - 1);
  }
}

$("lb-next").addEventListener("click", () => step(1));
$("lb-prev").addEventListener("click", () => step(-1));
$("lb-close").addEventListener("click", () => lightbox.close());
lightbox.addEventListener("keydown", (event) => {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.key === "ArrowRight") {
    event.preventDefault();
    if (!$("lb-next").disabled) step(1);
  } else if (event.key === "ArrowLeft") {
    event.preventDefault();
    if (!$("lb-prev").disabled) step(-1);
  }
});
lightbox.addEventListener("close", () => {
  const image = items[shown];
  const thumb = image && grid.querySelector(`button.thumb[data-id="${image.id}"]`);
  (thumb || $("rec-q")).focus();
});
lightbox.addEventListener("click", (event) => {
  if (event.target === lightbox) lightbox.close(); // a click on the backdrop
});

$("lb-delete").addEventListener("click", async () => {
  const image = items[shown];
  if (!image) return;
  const ok = await confirmDialog(t("records.delete_confirm", { id: image.id }), t("action.delete"));
  if (!ok) return $("lb-delete").focus();
  try {
    await api(`/images/${image.id}`, { method: "DELETE" });
  } catch (error) {
    if (!(error instanceof ApiFailure && error.status === 404)) {
      showError(error);
      return $("lb-delete").focus();
    }
  }
  toast(t("records.deleted", { id: image.id }), "ok");
  const at = shown;
  await load(); // the same page again: the next older image moves up into it
  if (items.length === 0) return lightbox.close();
  show(Math.min(at, items.length - 1));
  $("lb-delete").focus();
});

// -- choices: my batches, the backends --------------------------------------------------------

async function choices() {
  try {
    const [batches, backends] = await Promise.all([
      api("/batches", { query: { limit: 100 } }),
      api("/backends"),
    ]);
    $("rec-batches").replaceChildren(
      ...batches.items.map((b) => el("option", { value: String(b.id), label: `#${b.id} ${b.name}` })),
    );
    const select = $("rec-backend");
    const chosen = fromUrl().filters.backend;
    const names = backends.map((b) => b.name);
    if (chosen && !names.includes(chosen)) names.push(chosen); // a backend since removed
    select.append(...names.map((name) => el("option", { value: name }, name)));
    select.value = chosen;
  } catch (error) {
    showError(error);
  }
}

if (!trail() && !fromUrl().before) history.replaceState({ trail: [] }, "", location.href);
load().then(choices); // the thumbnails first: the choices' requests would queue before them
