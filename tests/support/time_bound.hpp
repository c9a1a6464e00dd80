#pragma once
// Wall-clock bounds for the tests that catch a quadratic or unresponsive code
// path. A bound is written for a release build on a loaded 2-core machine;
// AddressSanitizer and UndefinedBehaviorSanitizer (-O1) make the same work
// 3-5x slower, and such a machine's speed varies about 2x within an hour, so a
// sanitized build gets 4x the time. The cases they guard against take minutes
// or never end, so even the scaled bound catches them.
#include <chrono>

namespace loftq_test {

#if defined(__SANITIZE_ADDRESS__)
#define LOFTQ_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LOFTQ_TEST_SANITIZED 1
#endif
#endif
#ifdef LOFTQ_TEST_SANITIZED
inline constexpr double kTimeScale = 4.0;
#else
inline constexpr double kTimeScale = 1.0;
#endif

// `seconds` for a release build, scaled for the build being tested.
inline constexpr double time_bound(double seconds) { return seconds * kTimeScale; }

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace loftq_test
