// The CLI11 parser built from the option table (option_table.hpp), and the
// settings the reports record, from the same rows.

#include "options.hpp"

#include "option_table.hpp"

#include "errors.hpp"
#include "staged_output.hpp"

#include <loftq/version.hpp>

#include <CLI/CLI.hpp>

#include <map>
#include <memory>
#include <utility>

namespace loftq_cli {

const char* quantizer_name(loftq::Quantizer::Kind k) {
  return k == loftq::Quantizer::Kind::normal_float ? "nf" : "uniform";
}
const char* scale_name(bool search) { return search ? "search" : "absmax"; }
const char* start_name(loftq::Start s) { return s == loftq::Start::zero ? "zero" : "svd"; }

nlohmann::json settings_json(const Args& a) {
  nlohmann::json s = nlohmann::json::object();
  for (const OptionDef& d : option_table())
    if (d.record) d.record(a, s);
  return s;
}

Args args_from_settings(const nlohmann::json& j) {
  if (!j.is_object()) throw InputError{"shard settings: not an object"};
  Args a;
  a.command = "model";
  for (const OptionDef& d : option_table())
    if (d.read) d.read(j, a);
  return a;
}

loftq::Options library_options(const Args& a) {
  loftq::Options opt;
  opt.cancel = cancel_flag();
  opt.rank = a.rank;
  opt.iterations = a.iters;
  opt.svd.method = a.svd;
  opt.svd.seed = a.seed;
  opt.start = a.start;
  opt.scale_search = a.scale_search;
  opt.keep_best = a.keep_best;
  opt.threads = a.threads;
  return opt;
}

namespace {

// Builds the parser: a subcommand per command, each with the table's options
// that name it, plus help and version.
struct Parser {
  CLI::App app{"", "loftq"};
  std::map<std::string, std::vector<std::pair<const OptionDef*, CLI::Option*>>> attached;

  Parser() {
    const std::shared_ptr<CLI::Formatter> fmt = help_formatter();
    app.formatter(fmt);
    app.set_help_flag("-h,--help", "show this help");
    app.set_version_flag("--version", loftq::version());
    app.require_subcommand(1);
    for (const CommandDef& c : kCommands) {
      CLI::App* sub = app.add_subcommand(c.name, c.description);
      sub->formatter(fmt);
      for (const OptionDef& d : option_table()) {
        if (!(d.commands & c.bit)) continue;
        CLI::Option* o;
        if (d.value.empty()) {
          o = sub->add_flag(d.flag, d.help)->disable_flag_override();
        } else {
          o = sub->add_option(d.flag, CLI::callback_t{}, d.help)->type_size(1)->expected(1)->option_text(d.value);
          const std::string flag = d.flag;
          const Check check = d.check;
          // CLI11 takes a following option as the value ('--input --last');
          // the tool never did: that is a missing value.
          o->check(CLI::Validator(
              [check](std::string& v) -> std::string {
                if (v.size() >= 2 && v.compare(0, 2, "--") == 0) return "needs a value, got the option '" + v + "'";
                return check(v);
              },
              ""));
          if (d.required) o->required();
        }
        // Repeats are collected and refused after parsing, with one message
        // for options and flags alike.
        o->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
        attached[c.name].emplace_back(&d, o);
      }
      sub->set_help_flag("-h,--help", "show this help");
      sub->set_version_flag("--version", loftq::version(), "show the version");
    }
    app.add_subcommand("help", "show this help");
    app.add_subcommand("version", "show the version");
  }
};

}  // namespace

Parsed parse_args(const std::vector<std::string>& argv) {
  Parsed out;
  Parser p;
  if (argv.empty()) {
    out.action = Parsed::Action::usage_help;
    out.text = p.app.help();
    return out;
  }
  if (argv.size() == 1 && argv[0] == "--help-markdown") {
    out.action = Parsed::Action::help;
    out.text = markdown_help();
    return out;
  }
  // A first word that is no command and no option: say so, rather than
  // CLI11's "A subcommand is required".
  const std::string& first = argv[0];
  if (first.empty() || first[0] != '-') {
    bool known = first == "help" || first == "version";
    for (const CommandDef& c : kCommands) known = known || first == c.name;
    if (!known) throw UsageError{"unknown command '" + first + "'"};
  }
  // CLI11 reports "--rank=" as a missing value ("1 required missing"); as
  // "--rank ''" it is an empty value, checked like any other.
  std::vector<std::string> reversed;
  for (auto it = argv.rbegin(); it != argv.rend(); ++it) {
    if (it->size() > 3 && it->compare(0, 2, "--") == 0 && it->back() == '=' && it->find('=') == it->size() - 1) {
      reversed.emplace_back();
      reversed.push_back(it->substr(0, it->size() - 1));
    } else {
      reversed.push_back(*it);
    }
  }
  try {
    p.app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    out.action = Parsed::Action::help;
    out.text = p.app.help();
    return out;
  } catch (const CLI::CallForVersion&) {
    out.action = Parsed::Action::version;
    out.text = "loftq " + loftq::version() + "\n";
    return out;
  } catch (const CLI::ParseError& e) {
    throw UsageError{e.what()};
  }
  if (p.app.got_subcommand("help")) {
    out.action = Parsed::Action::help;
    out.text = top_help(&p.app);
    return out;
  }
  if (p.app.got_subcommand("version")) {
    out.action = Parsed::Action::version;
    out.text = "loftq " + loftq::version() + "\n";
    return out;
  }
  Args& a = out.args;
  for (const CommandDef& c : kCommands)
    if (p.app.got_subcommand(c.name)) a.command = c.name;
  for (const auto& [def, opt] : p.attached.at(a.command)) {
    if (opt->count() > 1) throw UsageError{"option " + def->flag + " given more than once"};
    if (opt->count() == 1) def->apply(a, def->value.empty() ? std::string() : opt->results().at(0));
  }
  // Conflicts are judged on the whole command line, once every value is applied.
  for (const auto& [def, opt] : p.attached.at(a.command))
    if (opt->count() == 1 && def->conflicts) {
      const std::string why = def->conflicts(a);
      if (!why.empty()) throw UsageError{why};
    }
  if (a.command == "model" && a.modules.empty()) a.modules = split_list(kDefaultTargets);
  return out;
}

}  // namespace loftq_cli
