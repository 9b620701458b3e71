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

// Show a block only while its controlling checkbox or radio is ticked (or its select has a value).
function syncConditional() {
  document.querySelectorAll("[data-show-when]").forEach((block) => {
    const control = document.querySelector(block.dataset.showWhen);
    if (!control) return;
    const wanted = block.dataset.showValue;
    const shown = ["checkbox", "radio"].includes(control.type) ? control.checked : (wanted ? control.value === wanted : !!control.value);
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

// Logs tab: poll for newer rows every 2 s and put them on top; pausable; keeps at most 500
// rows so a page left open for hours stays light.
(() => {
  const body = document.getElementById("log-rows");
  if (!body || !body.dataset.feedUrl) return;
  const toggle = document.getElementById("live-toggle");
  const status = document.getElementById("live-status");
  let paused = false;
  let delay = 2000;
  toggle.addEventListener("click", () => {
    paused = !paused;
    toggle.textContent = paused ? "Resume" : "Pause";
    toggle.setAttribute("aria-pressed", String(paused));
    status.textContent = paused ? "Paused" : "Live";
  });
  async function poll() {
    if (!paused) {
      try {
        const url = `${body.dataset.feedUrl}&after=${body.dataset.lastId}`;
        const response = await fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" });
        if (response.ok) {
          const html = (await response.text()).trim();
          body.dataset.lastId = response.headers.get("X-Last-Id") || body.dataset.lastId;
          if (html) {
            body.insertAdjacentHTML("afterbegin", html);
            const empty = document.getElementById("log-empty");
            if (empty) empty.remove();
            while (body.rows.length > 500) body.deleteRow(-1);
          }
          status.textContent = `Live · ${new Date().toLocaleTimeString()}`;
          delay = 2000;
        } else if (response.status === 403) {
          status.textContent = "Signed out: reload the page";
          return;
        }
      } catch (err) {
        status.textContent = "Reconnecting…";
        delay = Math.min(delay * 2, 30000); // back off while the server is unreachable
      }
    }
    setTimeout(poll, delay);
  }
  setTimeout(poll, delay);
})();
