// Every page's frame: the language switch, light/dark, sign-out.
import { api, showError, t } from "./kiln.js";

const root = document.documentElement;
const YEAR = 31536000;

// The server renders data-theme from this cookie (pages.py), so the chosen theme is
// there before the first paint; a script setting it after load would flash the other.
document.getElementById("theme-switch")?.addEventListener("click", () => {
  const dark = root.dataset.theme
    ? root.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  document.cookie = `kiln_theme=${root.dataset.theme}; path=/; max-age=${YEAR}; samesite=strict`;
});

document.getElementById("lang-switch")?.addEventListener("click", (event) => {
  const lang = event.currentTarget.dataset.lang;
  document.cookie = `kiln_lang=${lang}; path=/; max-age=${YEAR}; samesite=strict`;
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

// The balance beside the name (credits on): read once per page, and again when a page
// says it changed (a batch started, an image edited) with a "kiln:balance" event.
const balance = document.getElementById("balance");
async function showBalance() {
  try {
    const me = await api("/me");
    balance.textContent = t("user.balance", { n: me.balance.toLocaleString() });
    balance.hidden = false;
  } catch {
    balance.hidden = true; // the page itself says what went wrong with the session
  }
}
if (balance) {
  showBalance();
  document.addEventListener("kiln:balance", showBalance);
}
