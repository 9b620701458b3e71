// Small progressive enhancements; every page works without JavaScript.
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  const text = source.value || source.textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {
    // Clipboard API needs a secure context; fall back to selecting the text.
    source.select();
    document.execCommand("copy");
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1500);
});

// Show a block only while its controlling checkbox is ticked (or its select has a value).
function syncConditional() {
  document.querySelectorAll("[data-show-when]").forEach((block) => {
    const control = document.querySelector(block.dataset.showWhen);
    if (!control) return;
    const wanted = block.dataset.showValue;
    const shown = control.type === "checkbox" ? control.checked : (wanted ? control.value === wanted : !!control.value);
    block.hidden = !shown && !block.querySelector(".has-error");
  });
}
document.addEventListener("change", syncConditional);
document.addEventListener("DOMContentLoaded", syncConditional);

// Devices list: "select all" and a live count of the selected rows.
document.addEventListener("change", (event) => {
  const all = event.target.closest("[data-select-all]");
  const form = event.target.form;
  if (all) {
    form.querySelectorAll(`input[name="${all.dataset.selectAll}"]`).forEach((box) => { box.checked = all.checked; });
  }
  const counter = form && form.querySelector("#selected-count");
  if (counter) {
    const n = form.querySelectorAll('input[name="identity"]:checked').length;
    counter.textContent = n ? `${n} selected` : "Select devices for bulk actions";
  }
});

// Add one device: check the identity against the connector's format while typing.
(() => {
  let timer;
  document.addEventListener("input", (event) => {
    const input = event.target.closest("[data-check-url]");
    if (!input) return;
    const out = document.getElementById("identity-live");
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (!input.value) { out.textContent = ""; out.className = "help"; return; }
      const url = `${input.dataset.checkUrl}?identity=${encodeURIComponent(input.value)}`;
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const result = await response.json();
      out.textContent = result.valid ? "✓ Valid identity" : `✗ ${result.reason}`;
      out.className = `help ${result.valid ? "ok" : "bad"}`;
      input.setAttribute("aria-invalid", result.valid ? "false" : "true");
    }, 200);
  });
})();
