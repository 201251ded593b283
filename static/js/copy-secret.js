// The "Copy key" button of a new API key's one-time secret (accounts/keys.html). Progressive: the
// button is hidden until this script runs, so without JavaScript the page simply shows the key.
(function () {
  "use strict";
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Plain-HTTP origins (not localhost) have no async clipboard: select and copy the old way.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      var ok = document.execCommand("copy");
      document.body.removeChild(area);
      if (ok) { resolve(); } else { reject(new Error("copy refused")); }
    });
  }
  document.querySelectorAll("[data-copy-target]").forEach(function (button) {
    var target = document.getElementById(button.getAttribute("data-copy-target"));
    var status = document.getElementById(button.id + "-status");
    if (!target) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      copyText(target.textContent.trim()).then(
        function () { button.textContent = "Copied"; if (status) { status.textContent = "The key is on your clipboard."; } },
        function () { if (status) { status.textContent = "Could not copy: select the key and copy it."; } }
      );
    });
  });
})();
