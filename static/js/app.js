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
