// The navigation bar's team switcher: choosing a team switches at once (the Switch button is the
// way without JavaScript, and stays for keyboard users who prefer it).
(function () {
  var select = document.getElementById("team-switch-select");
  if (!select) return;
  select.addEventListener("change", function () {
    if (select.value) select.form.submit();
  });
})();
