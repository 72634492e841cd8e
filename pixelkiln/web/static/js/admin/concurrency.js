// Admin → Concurrency: the global limit (1–max) and each backend's per-server limit,
// applied at once by the scheduler; what kiln.toml says beside what runs now.
import { api, el, showError, t, toast } from "../kiln.js";
import { actionFor, clearError, count, figures, formError, integer } from "./ui.js";

const form = document.getElementById("global-form");
const input = document.getElementById("global-value");
const error = document.getElementById("global-error");
const numbers = document.getElementById("global-figures");
const rows = document.querySelector("#backend-limits tbody");

function render(view) {
  input.max = String(view.max);
  input.value = String(view.concurrency);
  figures(numbers, [
    [t("conc.now"), count(view.concurrency)],
    [t("conc.max"), count(view.max)],
    [t("conc.effective_all"), count(view.effective)],
  ]);
  rows.replaceChildren(...view.backends.map(row));
}

function row(b) {
  const field = el("input", {
    type: "number",
    min: 1,
    max: 256,
    step: 1,
    inputmode: "numeric",
    class: "num-input",
    value: String(b.per_url),
    "aria-label": t("conc.per_server_for", { name: b.name }),
  });
  const save = () => setBackend(b.name, field);
  field.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      save();
    }
  });
  // a backend without a server pool (placeholder, local) does not count servers up
  const up = b.servers_up === null ? "—" : t("conc.up_of", { up: count(b.servers_up), n: count(b.servers) });
  return el(
    "tr",
    { dataset: { backend: b.name } },
    el("th", { scope: "row" }, b.name),
    el("td", {}, field, b.overridden ? el("span", { class: "tag" }, t("conc.overridden")) : null),
    el("td", { class: "num" }, count(b.configured)),
    el("td", { class: "num" }, up),
    el("td", { class: "num" }, count(b.effective)),
    el("td", {}, t(`conc.by.${b.limited_by}`)),
    el("td", { class: "num" }, count(b.running)),
    el(
      "td",
      {},
      el(
        "div",
        { class: "actions" },
        el("button", { type: "button", onclick: save, "aria-label": actionFor(t("action.save"), b.name) }, t("action.save")),
        b.overridden
          ? el(
              "button",
              {
                type: "button",
                class: "ghost",
                onclick: () => resetBackend(b.name),
                "aria-label": actionFor(t("conc.reset"), b.name),
              },
              t("conc.reset"),
            )
          : null,
      ),
    ),
  );
}

async function setBackend(name, field) {
  const value = integer(field);
  if (value === null || value < 1 || value > 256) {
    field.setAttribute("aria-invalid", "true");
    toast(t("conc.backend_range", { name }), "bad");
    field.focus();
    return;
  }
  try {
    render(await api(`/admin/concurrency/backends/${encodeURIComponent(name)}`, { method: "PUT", json: { concurrency: value } }));
    toast(t("conc.backend_saved", { name, value }), "ok");
    rows.querySelector(`tr[data-backend="${CSS.escape(name)}"] input`)?.focus();
  } catch (failure) {
    field.setAttribute("aria-invalid", "true");
    showError(failure);
  }
}

async function resetBackend(name) {
  try {
    render(await api(`/admin/concurrency/backends/${encodeURIComponent(name)}`, { method: "DELETE" }));
    toast(t("conc.backend_reset", { name }), "ok");
    rows.querySelector(`tr[data-backend="${CSS.escape(name)}"] input`)?.focus();
  } catch (failure) {
    showError(failure);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(error, form);
  const value = integer(input);
  const top = Number(input.max) || 10;
  if (value === null || value < 1 || value > top) {
    formError(error, t("conc.global_range", { max: top }), input);
    return;
  }
  try {
    render(await api("/admin/concurrency", { method: "PUT", json: { concurrency: value } }));
    toast(t("conc.global_saved", { value }), "ok");
  } catch (failure) {
    formError(error, failure, input);
  }
});

document.getElementById("global-reset").addEventListener("click", async () => {
  clearError(error, form);
  try {
    const view = await api("/admin/concurrency", { method: "DELETE" });
    render(view);
    toast(t("conc.global_reset", { value: view.concurrency }), "ok");
  } catch (failure) {
    formError(error, failure);
  }
});

async function load() {
  try {
    render(await api("/admin/concurrency"));
  } catch (failure) {
    showError(failure);
  }
}

export default { show: load };
