// Accessibility fixes to markup the stock Django admin's scripts build (no TierLab behaviour here).
(function () {
  "use strict";
  function fix() {
    // SelectFilter2.js (filter_horizontal) gives its search-icon <span>s an aria-label; a label on an
    // element without a role is not announced (axe: aria-prohibited-attr). They are icons: role img.
    document.querySelectorAll(".search-label-icon[aria-label]:not([role])").forEach(function (icon) {
      icon.setAttribute("role", "img");
    });
  }
  // SelectFilter2 builds its widgets in a window "load" listener: run after every such listener.
  window.addEventListener("load", function () { window.setTimeout(fix, 0); });
})();
