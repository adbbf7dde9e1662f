// JetsonMind's dashboard: the little script the server-rendered pages need.
// Live figures, charts (uPlot), tool buttons, the playground's streamed chat
// and uploads. Every request that changes something carries the CSRF token.
(() => {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf"]')?.content || "";

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body),
    });
  }

  // A /ui/call answer, or why there is none (a refusal is plain text).
  async function outcomeOf(response) {
    const text = await response.text();
    try {
      return JSON.parse(text);
    } catch {
      return { ok: false, error: `${response.status}: ${text}` };
    }
  }

  // Server-sent events from a fetch response: onEvent(name, data) for each.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, data.join("\n"));
      }
    }
  }

  // Parts of a page that show live figures: fetched again every 5 s.
  for (const part of document.querySelectorAll("[data-refresh]")) {
    setInterval(async () => {
      const response = await fetch(part.dataset.refresh);
      if (response.ok) part.innerHTML = await response.text();
    }, 5000);
  }

  // Buttons that make a tool call: data-tool, data-arguments (JSON),
  // data-progress for a call whose progress is shown as it goes.
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-tool]");
    if (!button) return;
    event.preventDefault();
    const status = document.getElementById("action-status");
    const label = button.textContent;
    const call = {
      tool: button.dataset.tool,
      arguments: JSON.parse(button.dataset.arguments || "{}"),
      progress: button.hasAttribute("data-progress"),
    };
    button.disabled = true;
    status.className = "notice";
    status.textContent = `${label}…`;
    let outcome;
    try {
      const response = await post("/ui/call", call);
      if (call.progress && response.ok) {
        await readEvents(response, (name, data) => {
          const step = JSON.parse(data);
          if (name === "result") outcome = step;
          else if (step.total) status.textContent = `${label}: ${Math.round((100 * step.progress) / step.total)} % ${step.message || ""}`;
          else status.textContent = `${label}: ${step.message || step.progress}`;
        });
      } else {
        outcome = await outcomeOf(response);
      }
    } catch (error) {
      outcome = { ok: false, error: String(error) };
    }
    outcome ??= { ok: false, error: "no answer" };
    status.className = outcome.ok ? "notice" : "error";
    status.textContent = outcome.ok ? `${label}: done. ${outcome.text || ""}` : `${label}: ${outcome.error}`;
    button.disabled = false;
  });

  // Charts: the history, then a point per event.
  const chartsRoot = document.getElementById("charts");
  if (chartsRoot) startCharts(chartsRoot);

  function startCharts(root) {
    const samples = [];
    const charts = new Map();
    const status = document.getElementById("chart-status");
    const colours = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
    const source = new EventSource(root.dataset.events);
    source.addEventListener("history", (event) => {
      samples.splice(0, samples.length, ...JSON.parse(event.data));
      draw();
    });
    source.addEventListener("sample", (event) => {
      samples.push(JSON.parse(event.data));
      const oldest = samples[samples.length - 1].at_ms - 3600 * 1000;
      while (samples.length && samples[0].at_ms < oldest) samples.shift();
      draw();
    });

    const node = (sample, name) => sample.nodes.find((n) => n.name === name);
    const memoryPercent = (n) =>
      n && n.memory_total_bytes ? (100 * (n.memory_total_bytes - n.memory_available_bytes)) / n.memory_total_bytes : null;
    const toolName = (l) => (l.model ? `${l.tool} (${l.model})` : l.tool);

    function specs() {
      const nodes = [...new Set(samples.flatMap((s) => s.nodes.map((n) => n.name)))];
      const tools = [...new Set(samples.flatMap((s) => s.latency.map(toolName)))];
      const perNode = (field) => nodes.map((name) => [name, (s) => node(s, name)?.[field]]);
      return [
        { id: "cpu", title: "CPU %", series: perNode("cpu_percent") },
        { id: "gpu", title: "GPU %", series: perNode("gpu_percent") },
        { id: "memory", title: "Memory used %", series: nodes.map((name) => [name, (s) => memoryPercent(node(s, name))]) },
        { id: "temperature", title: "Temperature °C", series: perNode("temperature_c") },
        { id: "power", title: "Power W", series: perNode("power_watts") },
        {
          id: "rates",
          title: "Calls and tokens per second",
          series: [
            ["calls/s", (s) => s.calls_per_second],
            ["tokens/s", (s) => s.tokens_per_second],
          ],
        },
        ...tools.map((tool, i) => ({
          id: `latency-${i}`,
          title: `Latency of ${tool}, ms (last minute)`,
          series: ["p50", "p95", "p99"].map((p) => [p, (s) => s.latency.find((l) => toolName(l) === tool)?.[`${p}_ms`]]),
        })),
      ];
    }

    function draw() {
      const xs = samples.map((s) => s.at_ms / 1000);
      for (const spec of specs()) {
        const data = [xs, ...spec.series.map(([, value]) => samples.map((s) => value(s) ?? null))];
        // A device without a GPU, power rails or thermal zones gets no empty chart.
        if (!charts.has(spec.id) && data.slice(1).every((ys) => ys.every((y) => y === null))) continue;
        const labels = spec.series.map(([label]) => label).join("|");
        let chart = charts.get(spec.id);
        if (!chart || chart.labels !== labels) {
          chart?.plot.destroy();
          chart = { labels, plot: plot(spec, data) };
          charts.set(spec.id, chart);
        } else {
          chart.plot.setData(data);
        }
      }
      const last = samples[samples.length - 1];
      status.dataset.points = String(samples.length);
      status.textContent = last
        ? `${samples.length} points, the last at ${new Date(last.at_ms).toLocaleTimeString()}`
        : "waiting for the first point";
    }

    function plot(spec, data) {
      let box = document.getElementById(`chart-${spec.id}`);
      if (!box) {
        box = document.createElement("figure");
        box.id = `chart-${spec.id}`;
        box.className = "chart";
        root.appendChild(box);
      }
      box.replaceChildren();
      const options = {
        title: spec.title,
        width: 520,
        height: 200,
        scales: { x: { time: true } },
        series: [{}, ...spec.series.map(([label], i) => ({ label, stroke: colours[i % colours.length], width: 2 }))],
      };
      return new uPlot(options, data, box);
    }
  }

  // Playground: a chat streamed from the OpenAI-compatible API.
  const chatForm = document.getElementById("chat-form");
  if (chatForm) {
    const log = document.getElementById("chat-log");
    const messages = [];
    const turn = (role, text) => {
      const p = document.createElement("p");
      p.className = `turn ${role}`;
      p.textContent = text;
      log.appendChild(p);
      return p;
    };
    chatForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = new FormData(chatForm);
      const text = String(form.get("message")).trim();
      if (!text) return;
      messages.push({ role: "user", content: text });
      turn("user", text);
      const answer = turn("assistant", "");
      answer.classList.add("streaming");
      chatForm.querySelector("textarea").value = "";
      const button = chatForm.querySelector("button");
      button.disabled = true;
      const request = { messages, stream: true, max_tokens: Number(form.get("max_tokens")) || 128 };
      const model = String(form.get("model")).trim();
      if (model) request.model = model;
      try {
        const response = await post("/ui/api/v1/chat/completions", request);
        if (!response.ok) throw new Error((await outcomeOf(response)).error?.message || response.status);
        await readEvents(response, (_, data) => {
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          answer.textContent += chunk.choices?.[0]?.delta?.content || "";
        });
        messages.push({ role: "assistant", content: answer.textContent });
      } catch (error) {
        messages.pop();
        answer.classList.add("error");
        answer.textContent = `Error: ${error.message || error}`;
      }
      answer.classList.remove("streaming");
      answer.dataset.done = "true";
      button.disabled = false;
    });
  }

  // Playground: a picture or a recording, sent as a data URI to its tool.
  for (const form of document.querySelectorAll("form[data-tool]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const out = form.nextElementSibling;
      const fields = new FormData(form);
      const media = await dataUri(fields.get("file"));
      const args =
        form.dataset.tool === "image_analyze"
          ? { image_data: media, analysis_type: fields.get("analysis_type") }
          : { audio_data: media, operation: fields.get("operation") };
      out.className = "result";
      out.textContent = "working…";
      delete out.dataset.done;
      const outcome = await outcomeOf(await post("/ui/call", { tool: form.dataset.tool, arguments: args }));
      out.className = outcome.ok ? "result" : "result error";
      out.textContent = outcome.ok ? `${outcome.text}\n\n${JSON.stringify(outcome.result, null, 2)}` : `Error: ${outcome.error}`;
      out.dataset.done = "true";
    });
  }

  function dataUri(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }
})();
