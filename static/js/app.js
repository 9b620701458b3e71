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
    const shown = ["checkbox", "radio"].includes(control.type) ? control.checked : (wanted ? wanted.split(",").includes(control.value) : !!control.value);
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
  if (form) syncSelection(form);
});

// Bulk actions stay disabled until a device is selected.
function syncSelection(form) {
  const counter = form.querySelector("#selected-count");
  if (!counter) return;
  const n = form.querySelectorAll('input[name="identity"]:checked').length;
  counter.textContent = n ? `${n} selected` : "Select devices for bulk actions";
  form.querySelectorAll("[data-needs-selection]").forEach((button) => { button.disabled = !n; });
}
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form#bulk").forEach(syncSelection);
});

// Menus (<details class="menu">) close on Escape and on a click outside them.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  document.querySelectorAll("details.menu[open]").forEach((menu) => {
    menu.open = false;
    menu.querySelector("summary").focus();
  });
});
document.addEventListener("click", (event) => {
  document.querySelectorAll("details.menu[open]").forEach((menu) => {
    if (!menu.contains(event.target)) menu.open = false;
  });
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
          status.textContent = `Live · ${new Date().toISOString().slice(11, 19)} UTC`;
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

// Content tab: drop or pick a file, then upload it through a descriptor (as the management
// API's clients do: straight to the store on S3) with a progress bar. The sha256 is computed
// here when the browser can (crypto.subtle needs HTTPS or localhost) and checked by the server.
(() => {
  const form = document.querySelector("[data-content-upload]");
  if (!form || !window.XMLHttpRequest || !window.FormData) return;
  const input = form.querySelector('input[type="file"]');
  const zone = form.querySelector("[data-dropzone]");
  const summary = form.querySelector("[data-file-summary]");
  const bar = form.querySelector("[data-progress]");
  const status = form.querySelector("[data-upload-status]");
  const maxBytes = Number(form.dataset.maxBytes);
  const csrf = form.querySelector('input[name="csrfmiddlewaretoken"]').value;
  let file = null;

  function size(n) {
    const units = [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
    for (const [unit, scale] of units) {
      if (n >= scale) return `${(n / scale).toFixed(1).replace(/\.0$/, "")} ${unit}`;
    }
    return `${n} bytes`;
  }
  function say(text, bad) {
    status.textContent = text;
    status.className = `small ${bad ? "bad" : ""}`;
  }
  function choose(chosen) {
    file = chosen || null;
    summary.textContent = file ? `${file.name} · ${size(file.size)}${file.size > maxBytes ? ` — over the ${size(maxBytes)} limit` : ""}` : "";
    const name = form.querySelector("#content-name");
    if (file && !name.value) name.placeholder = file.name.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 128);
  }
  input.addEventListener("change", () => choose(input.files[0]));
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("dragging")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      choose(event.dataTransfer.files[0]);
    }
  });

  async function digest(chosen) {
    if (!window.crypto || !crypto.subtle) return "";
    const hash = await crypto.subtle.digest("SHA-256", await chosen.arrayBuffer());
    return Array.from(new Uint8Array(hash), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!file) { say("Choose a file to upload.", true); return; }
    if (file.size > maxBytes) { say(`The file is larger than ${size(maxBytes)}.`, true); return; }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      say("Checking the file…");
      const asked = new FormData();
      asked.set("name", form.querySelector("#content-name").value || form.querySelector("#content-name").placeholder);
      asked.set("type", form.querySelector("#content-type").value || file.type || "application/octet-stream");
      asked.set("description", form.querySelector("#content-description").value);
      asked.set("sha256", await digest(file));
      const response = await fetch(form.dataset.descriptorUrl, {
        method: "POST", body: asked, headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      });
      const descriptor = await response.json();
      if (!response.ok) throw new Error(Object.values(descriptor).join(" "));
      const body = new FormData();
      Object.entries(descriptor.inputs).forEach(([name, value]) => body.append(name, value));
      body.append(descriptor.field, file);
      bar.hidden = false;
      bar.value = 0;
      const result = await new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open(descriptor.method, descriptor.url);
        xhr.upload.addEventListener("progress", (progress) => {
          if (!progress.lengthComputable) return;
          bar.value = Math.round((100 * progress.loaded) / progress.total);
          say(`Uploading… ${bar.value}% (${size(progress.loaded)} of ${size(progress.total)})`);
        });
        xhr.addEventListener("load", () => resolve(xhr));
        xhr.addEventListener("error", () => reject(new Error("the upload was interrupted")));
        xhr.send(body);
      });
      if (result.status >= 300) {
        let reason = result.responseText;
        try { reason = Object.values(JSON.parse(reason)).join(" "); } catch (err) { /* text as sent */ }
        throw new Error(reason || `the store answered ${result.status}`);
      }
      bar.value = 100;
      say("Uploaded.");
      window.location.reload();
    } catch (err) {
      say(`Nothing was uploaded: ${err.message}`, true);
      button.disabled = false;
    }
  });
})();

// A page that failed to save: move to its error summary (a screen reader reads it first).
document.addEventListener("DOMContentLoaded", () => {
  const summary = document.querySelector("[data-focus-on-load]");
  if (summary) {
    summary.scrollIntoView({block: "start"});
    summary.focus({preventScroll: true});
  }
});
