// Stop strings over streamed text, for the CLI (--stop) and the server ("stop"): push() takes decoded text and
// returns what may be shown now, holding back the longest tail that could still begin a stop string; once a stop
// string is complete the text before it is returned and the stop string and everything after are dropped
// (stopped(), which()). The earliest match wins; among stop strings matching at the same place, the first given.
// Empty stop strings are ignored (they would match before any text).
#pragma once
#include <string>
#include <vector>

namespace tandem {

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops);
  std::string push(const std::string& piece);
  // The held-back tail when generation ended without a stop string (nothing once one matched).
  std::string flush();
  bool stopped() const { return stopped_; }
  const std::string& which() const { return which_; }  // the stop string that matched

 private:
  std::vector<std::string> stops_;
  std::string pending_, which_;
  bool stopped_ = false;
};

}  // namespace tandem
