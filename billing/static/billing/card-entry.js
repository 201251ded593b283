/* Card entry with Stripe.js Elements on the checkout and billing pages.
 *
 * Every form marked data-card-form gets a card Element (Stripe's own Stripe.js in Stripe test mode,
 * localstripe's stand-in by default: the page loads whichever the server names). On submit, when a
 * new card is wanted, the page asks the server for a SetupIntent (POST data-setup-intent-url), lets
 * Stripe.js confirm it with the card (3-D Secure dialog included), and posts only the SetupIntent's
 * and payment method's ids; the server checks them with Stripe. A decline or a failed authentication
 * is shown in the form and nothing is posted.
 *
 * data-payment-intent-secret on a form: the checkout's charge asks for 3-D Secure. Stripe.js runs it
 * at once (confirmCardPayment) and the PaymentIntent's id is posted, whatever the outcome: the server
 * asks Stripe what happened and says so.
 */
(function () {
  "use strict";

  // localstripe's card Element is plain inputs named only by placeholders (Stripe's own is an iframe
  // with its own labels): give them accessible names and autofill hints.
  var STAND_IN_FIELDS = {
    number: ["Card number", "cc-number"],
    exp_month: ["Expiry month (MM)", "cc-exp-month"],
    exp_year: ["Expiry year (YY)", "cc-exp-year"],
    cvc: ["CVC", "cc-csc"],
    postal_code: ["Postal code", "postal-code"],
  };

  function csrfToken(form) {
    var input = form.querySelector("input[name='csrfmiddlewaretoken']");
    return input ? input.value : "";
  }

  function showError(form, message) {
    var box = form.querySelector("[data-card-errors]");
    if (!box) return;
    box.textContent = "";
    if (message) {
      var span = document.createElement("span");
      span.className = "error";
      span.textContent = message;
      box.appendChild(span);
    }
    var fieldset = form.querySelector("[data-card-entry]");
    if (fieldset) {
      fieldset.classList.toggle("field-error", Boolean(message));
      if (message) fieldset.setAttribute("aria-invalid", "true");
      else fieldset.removeAttribute("aria-invalid");
    }
  }

  function setBusy(form, busy) {
    form.querySelectorAll("button[type=submit]").forEach(function (button) {
      button.disabled = busy;
    });
    form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function wantsNewCard(form) {
    var chosen = form.querySelector("input[name='card']:checked");
    return !chosen || chosen.value === "new";
  }

  function syncCardChoice(form) {
    var entry = form.querySelector("[data-card-new]");
    if (entry) entry.hidden = !wantsNewCard(form);
  }

  function labelStandIn(container) {
    // People type card numbers in groups ("4242 4242 4242 4242"), as Stripe's own Element accepts;
    // the stand-in wants 16 digits. A capturing listener on the container runs before the stand-in's
    // own input handler, so it reads the digits only.
    container.addEventListener(
      "input",
      function (event) {
        var input = event.target;
        if (input.getAttribute && input.getAttribute("placeholder") === "number") {
          input.value = input.value.replace(/\D+/g, "");
        }
      },
      true
    );
    container.querySelectorAll("input").forEach(function (input) {
      var field = STAND_IN_FIELDS[input.getAttribute("placeholder")];
      if (field) {
        input.setAttribute("aria-label", field[0]);
        input.setAttribute("autocomplete", field[1]);
        input.setAttribute("inputmode", "numeric");
      }
    });
  }

  function submitWith(form, values) {
    Object.keys(values).forEach(function (name) {
      var input = form.querySelector("input[name='" + name + "']");
      if (input) input.value = values[name];
    });
    form.dataset.cardConfirmed = "true";
    form.submit();
  }

  function startSetupIntent(form) {
    return fetch(form.dataset.setupIntentUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken(form), Accept: "application/json" },
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok || !body.client_secret) {
          var error = (body && body.error && body.error.message) || "The payment provider could not be reached.";
          throw new Error(error);
        }
        return body.client_secret;
      });
    });
  }

  function setUpCardForm(form, stripe) {
    var mount = form.querySelector("[data-card-element]");
    var card = null;
    if (mount) {
      card = stripe.elements().create("card", { hidePostalCode: true });
      card.mount(mount);
      labelStandIn(mount);
    }
    form.querySelectorAll("input[name='card']").forEach(function (radio) {
      radio.addEventListener("change", function () {
        syncCardChoice(form);
      });
    });
    syncCardChoice(form);

    form.addEventListener("submit", function (event) {
      if (form.dataset.cardConfirmed === "true" || !card || !wantsNewCard(form)) return;
      event.preventDefault();
      showError(form, "");
      setBusy(form, true);
      startSetupIntent(form)
        .then(function (clientSecret) {
          return stripe.confirmCardSetup(clientSecret, { payment_method: { card: card } });
        })
        .then(function (result) {
          if (result.error) {
            throw new Error(result.error.message || "Your card could not be saved.");
          }
          var intent = result.setupIntent;
          var paymentMethod = typeof intent.payment_method === "string" ? intent.payment_method : intent.payment_method.id;
          submitWith(form, { setup_intent: intent.id, payment_method: paymentMethod });
        })
        .catch(function (error) {
          setBusy(form, false);
          showError(form, (error && error.message) || "Your card could not be saved.");
        });
    });
  }

  function authenticatePayment(form, stripe) {
    var secret = form.dataset.paymentIntentSecret;
    var intentId = secret.split("_secret_")[0];
    setBusy(form, true);
    stripe
      .confirmCardPayment(secret)
      .catch(function () {
        return null;
      })
      .then(function () {
        // The server asks Stripe for the outcome: success, or authentication failed.
        submitWith(form, { payment_intent: intentId });
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var forms = document.querySelectorAll("form[data-card-form]");
    if (!forms.length) return;
    if (typeof window.Stripe !== "function") {
      forms.forEach(function (form) {
        showError(form, "The card form could not load (Stripe.js is unavailable). Try again later.");
      });
      return;
    }
    forms.forEach(function (form) {
      var stripe = window.Stripe(form.dataset.stripeKey);
      if (form.dataset.paymentIntentSecret) authenticatePayment(form, stripe);
      else setUpCardForm(form, stripe);
    });
  });
})();
