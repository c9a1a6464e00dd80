#pragma once
// The option table (option_table.cpp): one row per option carries all there
// is to know about it. The parser (options.cpp), the help and docs/tool.md
// (help.cpp), the settings a report records and merge's reading of them back
// are all generated from the rows. Adding an option touches Args and one row.

#include "options.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace CLI {
class App;
class Formatter;
}  // namespace CLI

namespace loftq_cli {

enum Command : unsigned { kInit = 1, kModel = 2, kMerge = 4, kCalibrate = 8, kCore = kInit | kModel, kAll = 15 };

struct CommandDef {
  const char* name;
  unsigned bit;
  const char* usage;
  const char* description;
};
extern const CommandDef kCommands[4];
extern const char* const kExitStatus;

// A check on one raw value: "" when it is fine, else the complaint.
using Check = std::function<std::string(const std::string&)>;
using Apply = std::function<void(Args&, const std::string&)>;
// Writes the option's key(s) into a report's "settings".
using Record = std::function<void(const Args&, nlohmann::json&)>;
// merge: sets the option from a shard's "settings"; throws InputError.
using Read = std::function<void(const nlohmann::json&, Args&)>;
// Given the option, the usage error its combination with the others makes ("" if none).
using Conflicts = std::function<std::string(const Args&)>;

struct OptionDef {
  std::string flag;   // "--bits"
  std::string value;  // "N"; empty for a flag
  std::string help;   // ends with its default, "(default X)", read from Args{} (the library's defaults)
  unsigned commands;
  bool required;
  Check check;
  Apply apply;
  std::string key = {};     // the "settings" key of the reports, "" when not recorded
  Record record = nullptr;  // with a key
  Read read = nullptr;      // with a key that merge reads back
  Conflicts conflicts = nullptr;

  OptionDef recorded(std::string k, Record r, Read rd = nullptr) && {
    key = std::move(k);
    record = std::move(r);
    read = std::move(rd);
    return std::move(*this);
  }
  OptionDef excluding(Conflicts c) && {
    conflicts = std::move(c);
    return std::move(*this);
  }
};

const std::vector<OptionDef>& option_table();

std::vector<std::string> split_list(const std::string& v, bool keep_repeats = false);

// help.cpp: the formatter of every command's --help, the full help, and the
// full help as Markdown (docs/tool.md).
std::shared_ptr<CLI::Formatter> help_formatter();
std::string top_help(const CLI::App* app);
std::string markdown_help();

}  // namespace loftq_cli
