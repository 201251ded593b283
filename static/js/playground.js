// The playground (/playground/): sends a message to the same-origin chat endpoint (session cookie +
// CSRF token), reads the answer as it is generated (JSON lines through a ReadableStream), then shows
// the tokens used and what is left of each limit. A refusal comes back in the model API's error shape
// and is shown in the page. "View code" shows the same request for the model API.
(function () {
  "use strict";
  var root = document.getElementById("playground");
  var form = document.getElementById("chat-form");
  if (!root || !form) return;

  var log = document.getElementById("chat-log");
  var errorBox = document.getElementById("chat-error");
  var statusBox = document.getElementById("chat-status");
  var sendButton = document.getElementById("chat-send");
  var messageInput = document.getElementById("chat-message");
  var modelInput = document.getElementById("chat-model");
  var systemInput = document.getElementById("chat-system");
  var temperatureInput = document.getElementById("chat-temperature");
  var maxTokensInput = document.getElementById("chat-max-tokens");
  var usagePanel = document.getElementById("usage-panel");
  var codePanel = document.getElementById("code-panel");
  var codeToggle = document.getElementById("code-toggle");
  var historyData = document.getElementById("playground-history");
  var history = historyData ? JSON.parse(historyData.textContent) : [];
  var conversationId = root.dataset.conversation ? parseInt(root.dataset.conversation, 10) : null;
  var apiBase = root.dataset.apiBase;

  function csrfToken() {
    var input = form.querySelector("[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function showError(message, code) {
    errorBox.textContent = message;
    errorBox.dataset.code = code || "";
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.textContent = "";
    errorBox.dataset.code = "";
    errorBox.hidden = true;
  }

  function bubble(role, text) {
    var item = document.createElement("li");
    item.className = "chat-message chat-" + role;
    item.dataset.role = role;
    var who = document.createElement("span");
    who.className = "chat-role";
    who.textContent = role === "user" ? "You" : "Model";
    var body = document.createElement("div");
    body.className = "chat-text";
    body.textContent = text;
    item.appendChild(who);
    item.appendChild(body);
    log.appendChild(item);
    return body;
  }

  function settings() {
    var temperature = temperatureInput.value.trim();
    var maxTokens = maxTokensInput.value.trim();
    return {
      model: modelInput.value,
      system_prompt: systemInput.value.trim(),
      temperature: temperature === "" ? null : Number(temperature),
      max_tokens: maxTokens === "" ? null : Number(maxTokens)
    };
  }

  // --- The request as code ------------------------------------------------------------------------
  // The message being written, or else the last one sent (the history up to the last answer): the
  // simulated model is deterministic, so running it gives the answer shown here.
  function codeRequest() {
    var s = settings();
    var turns = history.slice();
    var draft = messageInput.value.trim() ? messageInput.value : null;
    if (draft !== null) {
      turns.push({ role: "user", content: draft });
    } else if (turns.length && turns[turns.length - 1].role === "assistant") {
      turns.pop();
    }
    if (!turns.length) turns.push({ role: "user", content: "Hello" });
    var messages = (s.system_prompt ? [{ role: "system", content: s.system_prompt }] : []).concat(turns);
    var body = { model: s.model, messages: messages };
    if (s.max_tokens !== null) body.max_completion_tokens = s.max_tokens;
    if (s.temperature !== null) body.temperature = s.temperature;
    return body;
  }

  function shellQuote(text) {
    return "'" + text.replace(/'/g, "'\"'\"'") + "'";
  }

  function pyString(text) {
    return JSON.stringify(text);
  }

  function pyArgs(body) {
    // JSON of strings and numbers is valid Python, apart from true/false/null, which never occur here.
    var lines = ["    model=" + pyString(body.model) + ","];
    lines.push("    messages=" + JSON.stringify(body.messages, null, 4).replace(/\n/g, "\n    ") + ",");
    if (body.max_completion_tokens !== undefined) lines.push("    max_completion_tokens=" + body.max_completion_tokens + ",");
    if (body.temperature !== undefined) lines.push("    temperature=" + body.temperature + ",");
    return lines.join("\n");
  }

  function renderCode() {
    var body = codeRequest();
    document.getElementById("code-curl").textContent =
      "curl " + apiBase + "/v1/chat/completions \\\n" +
      "  -H \"Authorization: Bearer $TIERLAB_API_KEY\" \\\n" +
      "  -H \"Content-Type: application/json\" \\\n" +
      "  -d " + shellQuote(JSON.stringify(body));
    document.getElementById("code-llama").textContent =
      "import os\n\nfrom llama_api_client import LlamaAPIClient\n\n" +
      "client = LlamaAPIClient(api_key=os.environ[\"TIERLAB_API_KEY\"], base_url=\"" + apiBase + "/v1\")\n" +
      "response = client.chat.completions.create(\n" + pyArgs(body) + "\n)\n" +
      "print(response.completion_message.content.text)\n";
    document.getElementById("code-openai").textContent =
      "import os\n\nfrom openai import OpenAI\n\n" +
      "client = OpenAI(api_key=os.environ[\"TIERLAB_API_KEY\"], base_url=\"" + apiBase + "/compat/v1\")\n" +
      "completion = client.chat.completions.create(\n" + pyArgs(body) + "\n)\n" +
      "print(completion.choices[0].message.content)\n";
  }

  codeToggle.addEventListener("click", function () {
    var open = codePanel.hidden;
    codePanel.hidden = !open;
    codeToggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) renderCode();
  });
  form.addEventListener("input", function () {
    if (!codePanel.hidden) renderCode();
  });
  codePanel.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var text = document.getElementById(button.dataset.copy).textContent;
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 2000);
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () { showError("Copying was refused by the browser: select the text instead."); });
    } else {
      showError("This browser cannot copy from the page: select the text instead.");
    }
  });

  // --- Usage after an answer --------------------------------------------------------------------------
  function duration(seconds) {
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h";
    return Math.round(seconds / 86400) + " days";
  }

  function showUsage(done) {
    document.getElementById("usage-prompt").textContent = done.usage.prompt_tokens;
    document.getElementById("usage-completion").textContent = done.usage.completion_tokens;
    document.getElementById("usage-total").textContent = done.usage.total_tokens;
    var tbody = document.querySelector("#limits-table tbody");
    tbody.textContent = "";
    done.limits.forEach(function (limit) {
      var row = document.createElement("tr");
      row.dataset.limit = limit.name;
      row.dataset.remaining = limit.remaining;
      [limit.label, limit.remaining.toLocaleString("en-US"), limit.limit.toLocaleString("en-US"), duration(limit.resets_in_seconds)]
        .forEach(function (text, index) {
          var cell = document.createElement(index === 0 ? "th" : "td");
          if (index === 0) cell.scope = "row";
          cell.textContent = text;
          if (index === 1) cell.className = "limit-remaining";
          row.appendChild(cell);
        });
      tbody.appendChild(row);
    });
    usagePanel.hidden = false;
  }

  function conversationStarted(conversation) {
    if (conversationId === conversation.id) return;
    conversationId = conversation.id;
    root.dataset.conversation = String(conversation.id);
    var path = root.dataset.pageUrl + "c/" + conversation.id + "/";
    window.history.replaceState(null, "", path);
    var empty = document.getElementById("no-conversations");
    if (empty) empty.remove();
    var item = document.createElement("li");
    item.dataset.conversationId = conversation.id;
    item.className = "current";
    var link = document.createElement("a");
    link.href = path;
    link.textContent = conversation.title;
    link.setAttribute("aria-current", "page");
    item.appendChild(link);
    var list = document.getElementById("conversation-list");
    list.insertBefore(item, list.firstChild);
  }

  // --- Sending ----------------------------------------------------------------------------------------
  function handleEvent(event, state) {
    if (event.type === "start") {
      conversationStarted(event.conversation);
    } else if (event.type === "delta") {
      state.text += event.text;
      state.target.textContent = state.text;
    } else if (event.type === "done") {
      state.done = true;
      history.push({ role: "user", content: state.message }, { role: "assistant", content: state.text });
      showUsage(event);
    } else if (event.type === "error") {
      state.failed = true;
      showError(event.error.message, event.error.code);
    }
  }

  async function send(message) {
    var s = settings();
    var payload = { message: message, model: s.model, system_prompt: s.system_prompt, temperature: s.temperature, max_tokens: s.max_tokens, conversation: conversationId };
    var response = await fetch(root.dataset.chatUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), Accept: "application/x-ndjson" },
      body: JSON.stringify(payload)
    });
    if (!response.ok) {
      var error = null;
      try { error = (await response.json()).error; } catch (ignored) { /* not JSON: a CSRF or server page */ }
      if (error) showError(error.message, error.code);
      else showError("The message was not sent (HTTP " + response.status + "). Reload the page and try again.", "http_" + response.status);
      return;
    }
    messageInput.value = "";
    bubble("user", message);
    var state = { message: message, text: "", target: bubble("assistant", ""), done: false, failed: false };
    state.target.parentNode.setAttribute("aria-busy", "true");
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      var lines = buffer.split("\n");
      buffer = lines.pop();
      lines.forEach(function (line) { if (line.trim()) handleEvent(JSON.parse(line), state); });
    }
    if (buffer.trim()) handleEvent(JSON.parse(buffer), state);
    state.target.parentNode.removeAttribute("aria-busy");
    if (!state.done && !state.failed) showError("The answer was cut off: the connection closed early.", "stream_cut");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var message = messageInput.value;
    if (!message.trim()) {
      showError("Write a message first.", "invalid_request");
      messageInput.focus();
      return;
    }
    clearError();
    sendButton.disabled = true;
    statusBox.textContent = "Generating…";
    send(message)
      .catch(function (error) { showError("The message could not be sent: " + error.message, "network_error"); })
      .finally(function () {
        sendButton.disabled = false;
        statusBox.textContent = "";
        if (!codePanel.hidden) renderCode();
      });
  });
  messageInput.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
})();
