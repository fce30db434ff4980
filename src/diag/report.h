// Self-contained HTML reports (no scripts, no network, inline SVG): a plan comparison (tandem diff --html) and a
// magnitude trace (tandem trace --html).
// Per-layer absmax of both plans on a log scale, a layer x stage heat map of rel_l2 / tolerance, the diff's text
// report and a table of every compared tap of the step shown.
#pragma once
#include <string>
#include <vector>

#include "diag/trace.h"

namespace tandem {

struct ReportCell {
  std::string tap;  // "L3.attention", "embed", ...
  double rel_l2 = 0, absmax_a = 0, absmax_b = 0;
  bool bad = false;  // beyond the tolerance, or non-finite on side a only
};

struct DiffReport {
  std::string title, label_a, label_b, text;  // text: the diff's terminal report
  int n_layers = 0, step = 0;
  double tol = 0;
  std::vector<ReportCell> cells;  // the step's compared taps, in execution order
};

std::string diff_report_html(const DiffReport& r);

// tandem trace --html: per-layer absmax of the residual stream for every step and the largest scaled attention
// logit per layer on one log scale, a layer x stage heat map of absmax (log colour; non-finite taps dark red,
// the first one outlined), the trace's terminal table and every tap's statistics.
struct TraceReport {
  std::string title, text;  // text: the trace's terminal table
  int n_layers = 0;
  std::vector<TapStats> stats;
  std::vector<LogitMax> logit_max;
};
std::string trace_report_html(const TraceReport& r);

}  // namespace tandem
