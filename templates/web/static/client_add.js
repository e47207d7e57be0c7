// Add client: Payroll is only for the wholesale billing discount, so its choices are disabled
// (and reset to "No payroll") while another billing is chosen. The server checks the same rule.
(function () {
  var form = document.querySelector('form[action="/clients/new"]');
  if (!form) return;
  var payroll = document.getElementById("payroll");
  var none = document.getElementById("product-no-payroll");
  function update() {
    var chosen = form.querySelector('input[name="billing"]:checked');
    var allowed = !chosen || chosen.value === "wholesale";
    payroll.disabled = !allowed;
    if (!allowed && none) none.checked = true;
  }
  form.addEventListener("change", function (event) {
    if (event.target.name === "billing") update();
  });
  update();
})();
