#include "diag/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>

#include "diag/taps.h"

namespace tandem {
namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

// Green at or below the tolerance, then yellow to red over three decades above it; grey when not compared.
std::string heat_color(const ReportCell* c, double tol) {
  if (!c) return "#dddddd";
  if (!std::isfinite(c->rel_l2) || (c->bad && c->rel_l2 <= tol)) return "#7f0000";
  if (c->rel_l2 <= tol) return "#4caf50";
  const double t = std::clamp(std::log10(c->rel_l2 / tol) / 3.0, 0.0, 1.0);
  return fmt::format("rgb(255,{},0)", int(220 * (1 - t)));
}

// A layer x stage heat map (layers down, the per-layer stages across) appended to h as <svg id="heatmap">, after
// an <h2> heading; cell(tap) styles each cell.
struct HeatCell {
  std::string cls, fill = "#dddddd", stroke = "#fff";
  int stroke_width = 1;
  std::string title;
};
void heat_map(std::string& h, const std::string& heading, int n_layers,
              const std::function<HeatCell(const std::string& tap)>& cell) {
  const int cw = 56, ch = 16, left = 40, top = 60;
  const int n_stages = int(Stage::mlp_residual) - int(Stage::attn_norm) + 1;
  h += fmt::format("<h2>{}</h2><svg id=\"heatmap\" width=\"{}\" height=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
                   heading, left + cw * n_stages + 10, top + ch * n_layers + 10);
  for (int s = 0; s < n_stages; ++s)
    h += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"9\" transform=\"rotate(-40 {} {})\">{}</text>",
                     left + s * cw + 4, top - 4, left + s * cw + 4, top - 4,
                     stage_name(Stage(int(Stage::attn_norm) + s)));
  for (int l = 0; l < n_layers; ++l) {
    h += fmt::format("<text x=\"2\" y=\"{}\" font-size=\"10\">L{}</text>", top + l * ch + 12, l);
    for (int s = 0; s < n_stages; ++s) {
      const std::string tap = tap_name(Stage(int(Stage::attn_norm) + s), l);
      const HeatCell c = cell(tap);
      h += fmt::format("<rect class=\"cell{}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" "
                       "stroke=\"{}\" stroke-width=\"{}\"><title>{}: {}</title></rect>",
                       c.cls, left + s * cw, top + l * ch, cw, ch, c.fill, c.stroke, c.stroke_width, tap, c.title);
    }
  }
  h += "</svg>";
}

}  // namespace

std::string diff_report_html(const DiffReport& r) {
  std::map<std::string, const ReportCell*> by_tap;
  for (const ReportCell& c : r.cells) by_tap[c.tap] = &c;
  std::string h = fmt::format(
      "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0}</title><style>"
      "body{{font-family:sans-serif;margin:20px}}pre{{background:#f4f4f4;padding:8px}}"
      "table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}"
      ".bad{{color:#b00}}</style></head><body><h1>{0}</h1><p>a = {1}, b = {2} (reference side); step {3}; "
      "tolerance rel_l2 &le; {4:.1e}</p>",
      esc(r.title), esc(r.label_a), esc(r.label_b), r.step, r.tol);

  // Per-layer absmax of the residual stream (L*.mlp_residual), both plans, log scale.
  const int W = 640, H = 240, pad = 40, L = std::max(1, r.n_layers);
  double lo = INFINITY, hi = 0;
  for (int l = 0; l < r.n_layers; ++l)
    if (const auto it = by_tap.find(tap_name(Stage::mlp_residual, l)); it != by_tap.end())
      for (double v : {it->second->absmax_a, it->second->absmax_b})
        if (v > 0 && std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(hi > 0)) lo = 1, hi = 10;
  const double llo = std::floor(std::log10(lo)), lhi = std::max(llo + 1, std::ceil(std::log10(hi)));
  auto px = [&](int l) { return pad + (W - 2 * pad) * (L == 1 ? 0.5 : double(l) / double(L - 1)); };
  auto py = [&](double v) {
    const double lv = v > 0 && std::isfinite(v) ? std::log10(v) : llo;
    return H - pad - (H - 2 * pad) * (lv - llo) / (lhi - llo);
  };
  h += fmt::format("<h2>absmax per layer (L*.mlp_residual), log scale</h2><svg id=\"absmax\" width=\"{}\" "
                   "height=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
                   W, H);
  for (double d = llo; d <= lhi; d += 1)
    h += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eee\"/><text x=\"2\" "
                     "y=\"{:.1f}\" font-size=\"10\">1e{}</text>",
                     pad, W - pad, py(std::pow(10, d)), py(std::pow(10, d)), py(std::pow(10, d)) + 3, int(d));
  for (int side = 0; side < 2; ++side) {
    std::string pts;
    for (int l = 0; l < r.n_layers; ++l)
      if (const auto it = by_tap.find(tap_name(Stage::mlp_residual, l)); it != by_tap.end())
        pts += fmt::format("{:.1f},{:.1f} ", px(l), py(side ? it->second->absmax_b : it->second->absmax_a));
    h += fmt::format("<polyline class=\"series\" points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" "
                     "stroke-dasharray=\"{}\"><title>{}</title></polyline>",
                     pts, side ? "#1f77b4" : "#d62728", side ? "4,3" : "", side ? "b" : "a");
  }
  h += fmt::format("<text x=\"{}\" y=\"14\" font-size=\"12\" fill=\"#d62728\">a: {}</text><text x=\"{}\" y=\"28\" "
                   "font-size=\"12\" fill=\"#1f77b4\">b: {}</text></svg>",
                   pad, esc(r.label_a), pad, esc(r.label_b));

  heat_map(h, "rel_l2 / tolerance, layer x stage", r.n_layers, [&](const std::string& tap) {
    const auto it = by_tap.find(tap);
    const ReportCell* c = it == by_tap.end() ? nullptr : it->second;
    HeatCell hc;
    hc.cls = c && c->bad ? " bad" : "";
    hc.fill = heat_color(c, r.tol);
    hc.title = c ? fmt::format("rel_l2 {:.3e}", c->rel_l2) : std::string("not published by both plans");
    return hc;
  });
  h += "<h2>report</h2><pre>" + esc(r.text) + "</pre><h2>taps of this step</h2><table><tr><th>tap</th>"
       "<th>rel_l2</th><th>absmax a</th><th>absmax b</th></tr>";
  for (const ReportCell& c : r.cells)
    h += fmt::format("<tr{}><td>{}</td><td>{:.3e}</td><td>{:.3e}</td><td>{:.3e}</td></tr>",
                     c.bad ? " class=\"bad\"" : "", c.tap, c.rel_l2, c.absmax_a, c.absmax_b);
  return h + "</table></body></html>\n";
}

std::string trace_report_html(const TraceReport& r) {
  const TapStats* first_bad = nullptr;
  int steps = 0;
  std::map<std::pair<int, std::string>, const TapStats*> by;  // (step, tap)
  for (const TapStats& t : r.stats) {
    by[{t.step, t.tap}] = &t;
    steps = std::max(steps, t.step + 1);
    if (!first_bad && !t.finite()) first_bad = &t;
  }
  std::string h = fmt::format(
      "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0}</title><style>"
      "body{{font-family:sans-serif;margin:20px}}pre{{background:#f4f4f4;padding:8px}}"
      "table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}"
      ".bad{{color:#b00}}</style></head><body><h1>{0}</h1><p>{1} steps; {2}</p>",
      esc(r.title), steps,
      first_bad ? fmt::format("<span class=\"bad\" id=\"first-non-finite\">first non-finite tap: {} at step {} "
                              "({} NaN, {} Inf of {})</span>",
                              esc(first_bad->tap), first_bad->step, first_bad->nan, first_bad->inf, first_bad->count)
                : std::string("every tap finite"));

  // One log plot: the residual stream's absmax per layer for each step, and the largest |scaled logit| per layer.
  const int W = 640, H = 260, pad = 40, L = std::max(1, r.n_layers);
  std::vector<std::pair<std::string, std::vector<double>>> series;
  for (int s = 0; s < steps; ++s) {
    std::vector<double> v(size_t(r.n_layers), 0.0);
    for (int l = 0; l < r.n_layers; ++l)
      if (const auto it = by.find({s, tap_name(Stage::mlp_residual, l)}); it != by.end())
        v[size_t(l)] = it->second->nan + it->second->inf > 0 ? INFINITY : it->second->absmax;
    series.push_back({fmt::format("absmax L*.mlp_residual, step {}", s), v});
  }
  std::vector<double> lm(size_t(r.n_layers), 0.0);
  for (const LogitMax& m : r.logit_max)
    if (m.layer >= 0 && m.layer < r.n_layers) lm[size_t(m.layer)] = std::max(lm[size_t(m.layer)], std::fabs(m.value));
  series.push_back({"largest |q.k|/sqrt(d) per layer, any step and head", lm});
  double lo = INFINITY, hi = 0;
  for (const auto& [name, v] : series)
    for (double x : v)
      if (x > 0 && std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
  if (!(hi > 0)) lo = 1, hi = 10;
  const double llo = std::floor(std::log10(lo)), lhi = std::max(llo + 1, std::ceil(std::log10(hi)));
  auto px = [&](int l) { return pad + (W - 2 * pad) * (L == 1 ? 0.5 : double(l) / double(L - 1)); };
  auto py = [&](double v) {  // non-finite values sit on the top edge, zeros on the bottom
    if (!std::isfinite(v)) return double(pad) / 2;
    const double lv = v > 0 ? std::log10(v) : llo;
    return H - pad - (H - 2 * pad) * (lv - llo) / (lhi - llo);
  };
  h += fmt::format("<h2>absmax per layer and the largest attention logit, log scale</h2><svg id=\"absmax\" "
                   "width=\"{}\" height=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
                   W, H + 16 * int(series.size()));
  for (double d = llo; d <= lhi; d += 1)
    h += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eee\"/><text x=\"2\" "
                     "y=\"{:.1f}\" font-size=\"10\">1e{}</text>",
                     pad, W - pad, py(std::pow(10, d)), py(std::pow(10, d)), py(std::pow(10, d)) + 3, int(d));
  const char* colors[] = {"#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"};
  for (size_t k = 0; k < series.size(); ++k) {
    const bool logits = k + 1 == series.size();
    const std::string color = logits ? "#1f77b4" : colors[k % 8];
    std::string pts;
    for (int l = 0; l < r.n_layers; ++l) pts += fmt::format("{:.1f},{:.1f} ", px(l), py(series[k].second[size_t(l)]));
    h += fmt::format("<polyline class=\"series\" points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" "
                     "stroke-dasharray=\"{}\"><title>{}</title></polyline><text x=\"{}\" y=\"{}\" font-size=\"11\" "
                     "fill=\"{}\">{}</text>",
                     pts, color, logits ? "4,3" : "", esc(series[k].first), pad, H + 12 + 16 * int(k), color,
                     esc(series[k].first));
  }
  h += "</svg>";

  // Heat map of the step with the first non-finite tap (else the last), colour = log10(absmax).
  const int shown = first_bad ? first_bad->step : std::max(0, steps - 1);
  heat_map(h, fmt::format("absmax, layer x stage (step {}; first step with a non-finite tap: {})", shown,
                          first_bad ? std::to_string(first_bad->step) : "none"),
           r.n_layers, [&](const std::string& tap) {
             const auto it = by.find({shown, tap});
             const TapStats* t = it == by.end() ? nullptr : it->second;
             HeatCell hc;
             if (t && !t->finite()) {
               hc.cls = " bad";
               hc.fill = "#7f0000";
             } else if (t) {
               const double f = std::clamp((std::log10(std::max(t->absmax, 1e-30)) - llo) / (lhi - llo), 0.0, 1.0);
               hc.fill = fmt::format("rgb({},{},{})", int(255 * f), int(200 * (1 - f)), int(255 * (1 - f)));
             }
             if (t && t == first_bad) hc.stroke = "#000", hc.stroke_width = 3;
             hc.title = t ? fmt::format("absmax {:.3e}, {} NaN, {} Inf", t->absmax, t->nan, t->inf)
                          : std::string("no statistics");
             return hc;
           });
  h += "<h2>trace</h2><pre>" + esc(r.text) + "</pre><h2>taps</h2><table><tr><th>step</th><th>tap</th>"
       "<th>absmax</th><th>rms</th><th>NaN</th><th>Inf</th><th>headroom</th></tr>";
  for (const TapStats& t : r.stats)
    h += fmt::format("<tr{}><td>{}</td><td>{}</td><td>{:.3e}</td><td>{:.3e}</td><td>{}</td><td>{}</td><td>{:.2e}</td>"
                     "</tr>",
                     t.finite() ? "" : " class=\"bad\"", t.step, esc(t.tap), t.absmax, t.rms, t.nan, t.inf,
                     t.headroom);
  return h + "</table></body></html>\n";
}

}  // namespace tandem
