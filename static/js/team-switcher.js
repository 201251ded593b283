// The navigation bar's team switcher: choosing a team switches at once, so the Switch button (the
// way without JavaScript) is hidden.
(function () {
  var select = document.getElementById("team-switch-select");
  var button = document.getElementById("team-switch-button");
  if (!select) return;
  if (button) button.hidden = true;
  select.addEventListener("change", function () {
    if (select.value) select.form.submit();
  });
})();
