#pragma once
// A scratch directory per test binary, removed at exit.
#include <filesystem>
#include <string>
#include <system_error>

#include <unistd.h>

namespace loftq_test {

// `tag` names the directory (loftq_test_<tag>_<pid>); the first call's tag
// holds for the process.
inline const std::string& scratch_dir(const std::string& tag) {
  struct Dir {
    std::string path;
    explicit Dir(const std::string& t) {
      path = (std::filesystem::temp_directory_path() /
              ("loftq_test_" + t + "_" + std::to_string(static_cast<long>(::getpid()))))
                 .string();
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir d(tag);
  return d.path;
}

}  // namespace loftq_test
