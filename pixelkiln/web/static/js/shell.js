// Every page's frame: the language switch, light/dark, sign-out.
import { api, showError } from "./kiln.js";

const root = document.documentElement;
const THEME = "kiln-theme";
const saved = localStorage.getItem(THEME);
if (saved === "light" || saved === "dark") root.dataset.theme = saved;

document.getElementById("theme-switch")?.addEventListener("click", () => {
  const dark = root.dataset.theme
    ? root.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  localStorage.setItem(THEME, root.dataset.theme);
});

document.getElementById("lang-switch")?.addEventListener("click", (event) => {
  const lang = event.currentTarget.dataset.lang;
  document.cookie = `kiln_lang=${lang}; path=/; max-age=31536000; samesite=strict`;
  location.reload();
});

document.getElementById("sign-out")?.addEventListener("click", async () => {
  try {
    await api("/session", { method: "DELETE" });
    location.assign("/login");
  } catch (error) {
    showError(error);
  }
});
