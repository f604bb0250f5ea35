#include "cli/run_args.h"

#include <algorithm>
#include <cstdio>
#include <span>
#include <string_view>

#include "base/duration.h"
#include "base/names.h"

namespace keel::cli {
namespace {

// One of keel run's own options. Every one takes a value.
struct RunOption {
  std::string_view name;
  std::string_view value_name;
  std::string_view help;
  // Stores `value` in `args`; returns what is wrong with it, or "".
  std::string (*apply)(RunArgs& args, const std::string& value);
};

constexpr RunOption kRunOptions[] = {
    {"--invoke", "NAME",
     "Call export NAME instead of _start (any name; --invoke '' is the empty one; "
     "a NAME starting with \" is a string literal as keel inspect prints it, e.g. '\"a\\00b\"')",
     [](RunArgs& args, const std::string& value) {
       auto name = ParseName(value);
       if (!name) return "--invoke " + value + " is not a well-formed string literal";
       args.invoke = std::move(*name);
       return std::string();
     }},
    {"--input", "FILE", "With --invoke: a byte call with FILE's bytes (- for stdin)",
     [](RunArgs& args, const std::string& value) {
       args.input = value;
       return std::string();
     }},
    {"--dir", "HOST[::GUEST]", "Preopen directory HOST as GUEST, read-write (repeatable)",
     [](RunArgs& args, const std::string& value) {
       args.dirs.push_back(value);
       return std::string();
     }},
    {"--dir-ro", "HOST[::GUEST]", "Preopen directory HOST as GUEST, read-only (repeatable)",
     [](RunArgs& args, const std::string& value) {
       args.dirs_ro.push_back(value);
       return std::string();
     }},
    {"--env", "K=V", "Set K=V in the guest's environment (repeatable)",
     [](RunArgs& args, const std::string& value) {
       args.env.push_back(value);
       return std::string();
     }},
    {"--timeout", "DURATION", "Deadline for the whole run, e.g. 250ms or 2s",
     [](RunArgs& args, const std::string& value) {
       auto d = ParseDuration(value);
       if (!d) return d.error().message;
       args.timeout = *d;
       return std::string();
     }},
    {"--engine", "NAME", "WebAssembly engine: spidermonkey (default) or wasmtime",
     [](RunArgs& args, const std::string& value) {
       auto kind = ParseEngineKind(value);
       if (!kind) return kind.error().message;
       args.engine = *kind;
       return std::string();
     }},
};

constexpr std::string_view kRule =
    "keel's options may come before or after MODULE. After MODULE, every word that is\n"
    "not one of keel's options goes to the guest, in order, even one that starts with\n"
    "'-' (`keel run prog.wasm x --flag` passes `x --flag`). `--` ends keel's options:\n"
    "every word after it goes to the guest, and a bare trailing `--` passes nothing.\n"
    "An option's value is the next word, whatever it is, or follows '=' (--dir=D).\n"
    "A guest argument spelled like one of keel's options must come after `--`.\n";

// The option `word` names (`--dir` or `--dir=VALUE`), or null.
const RunOption* FindOption(std::string_view word, bool* inline_value) {
  for (const RunOption& option : kRunOptions) {
    if (!word.starts_with(option.name)) continue;
    std::string_view rest = word.substr(option.name.size());
    if (rest.empty() || rest.front() == '=') {
      *inline_value = !rest.empty();
      return &option;
    }
  }
  return nullptr;
}

Error UsageError(std::string message) {
  return Error(ErrorCode::kInvalidArgument, std::move(message));
}

// Applies the option in words[*i] (advancing *i past its value).
Result<void> ApplyOption(const RunOption& option, bool inline_value,
                         std::span<const std::string> words, size_t* i, RunArgs& args) {
  const std::string& word = words[*i];
  std::string value;
  if (inline_value) {
    value = word.substr(option.name.size() + 1);
  } else if (*i + 1 < words.size()) {
    value = words[++*i];
  } else {
    return MakeError(UsageError(std::string(option.name) + " needs a value " +
                                std::string(option.value_name)));
  }
  std::string problem = option.apply(args, value);
  if (!problem.empty()) {
    return MakeError(UsageError(std::string(option.name) + " '" + value + "': " + problem));
  }
  return {};
}

}  // namespace

Result<RunCommandLine> ParseRunCommandLine(const std::vector<std::string>& words) {
  RunCommandLine line;
  RunArgs& args = line.args;
  bool have_module = false;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& word = words[i];
    if (word == "--") {
      auto rest = std::span(words).subspan(i + 1);
      if (!have_module && !rest.empty()) {
        args.module_path = rest.front();
        have_module = true;
        rest = rest.subspan(1);
      }
      args.values.insert(args.values.end(), rest.begin(), rest.end());
      break;
    }
    if (word == "-h" || word == "--help") {
      line.help = true;
      continue;
    }
    bool inline_value = false;
    if (const RunOption* option = FindOption(word, &inline_value)) {
      auto applied = ApplyOption(*option, inline_value, words, &i, args);
      if (!applied) return MakeError(applied.error());
      continue;
    }
    if (have_module) {
      args.values.push_back(word);
    } else if (word.size() > 1 && word.front() == '-') {
      return MakeError(UsageError("unknown option '" + word + "' before MODULE"));
    } else {
      args.module_path = word;
      have_module = true;
    }
  }
  if (!have_module && !line.help) return MakeError(UsageError("MODULE is required"));
  return line;
}

std::string RunUsage() {
  std::string text =
      "Usage: keel run [OPTIONS] MODULE [ARGS...]\n\n"
      "Runs a WASI program's _start with ARGS as its arguments, or calls one export\n"
      "(--invoke NAME) with ARGS as its numeric arguments or --input's bytes.\n\n"
      "Options:\n";
  for (const RunOption& option : kRunOptions) {
    std::string head = "  " + std::string(option.name) + " " + std::string(option.value_name);
    head.resize(std::max<size_t>(head.size() + 1, 26), ' ');
    text += head + std::string(option.help) + "\n";
  }
  text += "  -h, --help              Print this help and exit\n\n";
  text += kRule;
  return text;
}

int RunCommand(const std::vector<std::string>& words) {
  auto line = ParseRunCommandLine(words);
  if (!line) {
    std::fprintf(stderr, "keel run: %s\nRun 'keel run --help' for the rules.\n",
                 line.error().message.c_str());
    return kExitUsage;
  }
  if (line->help) {
    std::fputs(RunUsage().c_str(), stdout);
    return kExitOk;
  }
  return Run(line->args);
}

}  // namespace keel::cli
