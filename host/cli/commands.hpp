// The `qforge` subcommands. Each takes the arguments after its name and the
// loaded registry, prints its result, and returns an exit code (errors are
// thrown: UsageError -> 2, anything else -> 1).
#pragma once

#include <c10/core/ScalarType.h>

#include <map>
#include <string>
#include <vector>

#include "qforge_host/plugins/registry.hpp"

namespace qforge::cli {

using Args = std::vector<std::string>;

int plugins_command(const Args& args, host::Registry& registry);
int quantize_layer_command(const Args& args, host::Registry& registry);
int tokenize_command(const Args& args, host::Registry& registry);
int eval_command(const Args& args, host::Registry& registry);
int generate_command(const Args& args, host::Registry& registry);
int quantize_command(const Args& args, host::Registry& registry);
int new_plugin_command(const Args& args, host::Registry& registry);

// Loads the plugins and logs one warning per refused library.
void load_plugins(host::Registry& registry);

// "float32" | "bfloat16" | "float16"; a UsageError names `option` otherwise.
at::ScalarType parse_dtype(const std::string& s, const char* option);
// A whole file; a UsageError when it cannot be opened.

// Parses repeated `--set name=value` into a map; a repeated name is an error.
std::map<std::string, std::string> parse_sets(const std::vector<std::string>& sets);

}  // namespace qforge::cli
