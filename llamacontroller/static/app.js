// LlamaController dashboard: live model state and log tails over server-sent events, and the
// copy button. Everything works without this file; it only saves reloading the page.
(function () {
  "use strict";

  function refreshRow(model) {
    const row = document.querySelector('tr[data-model="' + CSS.escape(model) + '"]');
    if (row && window.htmx) {
      htmx.ajax("GET", row.dataset.rowUrl, { target: row, swap: "outerHTML" });
    }
  }

  function followEvents(table) {
    const source = new EventSource(table.dataset.events);
    source.onmessage = function (message) {
      const event = JSON.parse(message.data);
      if (event.type === "model_state") refreshRow(event.model);
    };
  }

  function followLog(pre) {
    const source = new EventSource(pre.dataset.follow);
    source.onmessage = function (message) {
      const line = JSON.parse(message.data);
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.appendChild(document.createTextNode(line.text + "\n"));  // text, never HTML
      while (pre.childNodes.length > 2000) pre.removeChild(pre.firstChild);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table[data-events]").forEach(followEvents);
    document.querySelectorAll("pre[data-follow]").forEach(followLog);
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        const text = document.querySelector(button.dataset.copy).textContent;
        navigator.clipboard.writeText(text).then(function () { button.textContent = "Copied"; });
      });
    });
  });

  // An expired session during an htmx request: the server answers 401 with HX-Redirect.
  document.addEventListener("htmx:responseError", function (event) {
    if (event.detail.xhr.status === 401) window.location.reload();
  });
})();
