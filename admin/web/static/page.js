/* Comfort only: the page works without it (plain forms, selectable values).
   - Copy buttons: copy a record's host or value to the clipboard and say so to screen readers.
   - Validate: the check takes a few seconds; say that it is checking, and do not send it twice. */
"use strict";

function announce(text) {
  const region = document.getElementById("copy-status");
  if (region) {
    region.textContent = "";
    window.setTimeout(() => { region.textContent = text; }, 50);
  }
}

function copyBySelection(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  const copied = document.execCommand("copy");
  selection.removeAllRanges();
  return copied;
}

async function copyText(element) {
  const text = element.textContent.trim();
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (error) {
      /* permission refused: fall back to a selection */
    }
  }
  return copyBySelection(element);
}

function setUpCopyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    if (!source) {
      continue;
    }
    const label = button.textContent;
    button.hidden = false;
    button.addEventListener("click", async () => {
      if (await copyText(source)) {
        button.textContent = button.dataset.done;
        button.classList.add("done");
        announce(button.dataset.done);
        window.setTimeout(() => {
          button.textContent = label;
          button.classList.remove("done");
        }, 2000);
      }
    });
  }
}

function setUpBusyForms() {
  for (const form of document.querySelectorAll("form[data-busy]")) {
    form.addEventListener("submit", (event) => {
      if (form.getAttribute("aria-busy") === "true") {
        event.preventDefault();
        return;
      }
      const button = form.querySelector("button[type=submit]");
      const note = form.querySelector("[data-busy-note]");
      form.setAttribute("aria-busy", "true");
      if (button && button.dataset.busyText) {
        button.textContent = button.dataset.busyText;
        button.setAttribute("aria-disabled", "true");
        button.classList.add("busy");
        if (note) {
          note.textContent = button.dataset.busyText;
        }
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setUpCopyButtons();
  setUpBusyForms();
});
