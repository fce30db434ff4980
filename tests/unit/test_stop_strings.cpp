// StopStrings (runtime/stop_strings.h): the stop-string matcher of the CLI's --stop and the server's "stop".
#include <gtest/gtest.h>

#include "runtime/stop_strings.h"

namespace tandem {
namespace {

TEST(StopStrings, HoldsBackOnlyWhatCouldStartAStopString) {
  StopStrings m({"END", "xyz"});
  EXPECT_EQ(m.push("hello E"), "hello ");
  EXPECT_EQ(m.push("N"), "");
  EXPECT_EQ(m.push("d"), "ENd");  // "ENd" is no stop: released
  EXPECT_EQ(m.push(" x"), " ");
  EXPECT_EQ(m.push("yz and more"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.which(), "xyz");
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");
  StopStrings n({"abc"});
  EXPECT_EQ(n.push("ab"), "");
  EXPECT_FALSE(n.stopped());
  EXPECT_EQ(n.flush(), "ab");
}

TEST(StopStrings, EarliestMatchWinsAndEmptyStringsAreIgnored) {
  StopStrings m({"", "world", "lo w"});
  EXPECT_EQ(m.push("hello world"), "hel");
  EXPECT_EQ(m.which(), "lo w");
  StopStrings none({""});
  EXPECT_EQ(none.push("text"), "text");
  EXPECT_FALSE(none.stopped());
  // A stop string split over many pieces, one byte each (multi-byte UTF-8 included).
  StopStrings u({"→end"});
  std::string shown;
  for (char c : std::string("a→en→end tail")) shown += u.push(std::string(1, c));
  EXPECT_TRUE(u.stopped());
  EXPECT_EQ(shown, "a→en");
}

}  // namespace
}  // namespace tandem
