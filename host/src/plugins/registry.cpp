// Plugin discovery and loading; see qforge_host/plugins/registry.hpp.
#include "qforge_host/plugins/registry.hpp"

#include "qforge_host/plugins/elf_symbols.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <boost/dll/runtime_symbol_info.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <boost/dll/shared_library.hpp>
#include <boost/filesystem.hpp>
#include <cstdlib>
#include <cstring>
#include <set>

#include "qforge_host/base/log.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/services.hpp"

namespace fs = boost::filesystem;
namespace dll = boost::dll;

namespace qforge::host {

struct Registry::Library {
  std::string path;
  dll::shared_library lib;
  const qforge_plugin_entry* entry = nullptr;
  bool initialized = false;
};

namespace {

// Refusal reasons are one line: plugin-provided text may hold newlines.
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

bool nonempty(const char* s) { return s != nullptr && s[0] != '\0'; }

bool valid_id(const char* id) {
  if (!nonempty(id) || std::strlen(id) > 128) return false;
  bool dot = false;
  for (const char* c = id; *c; ++c) {
    if (*c == '.') dot = true;
    else if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-'))
      return false;
  }
  return dot && id[0] != '.' && id[std::strlen(id) - 1] != '.';
}

// A NULL-terminated string list with at least one entry (bounded walk).
bool valid_list(const char* const* list) {
  if (list == nullptr || list[0] == nullptr) return false;
  for (int k = 0; k < 256; ++k) {
    if (list[k] == nullptr) return true;
    if (list[k][0] == '\0') return false;
  }
  return false;
}

const char* kSuffix =
#if defined(_WIN32)
    ".dll";
#elif defined(__APPLE__)
    ".dylib";
#else
    ".so";
#endif

// The highest component kind these headers know.
#if QFORGE_ABI_MINOR >= 2
constexpr int32_t kLastKind = QFORGE_COMPONENT_PREPROCESS;
#else
constexpr int32_t kLastKind = QFORGE_COMPONENT_POSTPROCESS;
#endif

// Returns "" when the kind-specific function table is usable.
std::string check_vtable(const qforge_component_desc& d) {
  if (d.vtable == nullptr) return "has no function table (vtable is NULL)";
  uint32_t size = *static_cast<const uint32_t*>(d.vtable);
  switch (d.kind) {
    case QFORGE_COMPONENT_QUANTIZER: {
      auto* q = static_cast<const qforge_quantizer*>(d.vtable);
      if (size < sizeof(qforge_quantizer)) return "quantizer table is smaller than ABI v1's";
      if (!q->quantize) return "quantizer table has no quantize function";
      if (!valid_list(q->output_formats)) return "quantizer declares no output format";
      return {};
    }
    case QFORGE_COMPONENT_INFERENCE_LAYER: {
      auto* l = static_cast<const qforge_inference_layer*>(d.vtable);
      if (size < sizeof(qforge_inference_layer))
        return "inference-layer table is smaller than ABI v1's";
      if (!l->create || !l->destroy || !l->shape || !l->forward || !l->backward_input ||
          !l->dequantize)
        return "inference-layer table has a NULL function";
      if (!valid_list(l->formats)) return "inference layer declares no format";
      return {};
    }
    case QFORGE_COMPONENT_POSTPROCESS: {
      auto* p = static_cast<const qforge_postprocess*>(d.vtable);
      // ABI 1.0's table ends with `run` (1.1 appended run_block).
      if (size < offsetof(qforge_postprocess, run) + sizeof p->run)
        return "post-process table is smaller than ABI v1's";
      if (!p->run) return "post-process table has no run function";
      return {};
    }
#if QFORGE_ABI_MINOR >= 2
    case QFORGE_COMPONENT_PREPROCESS: {
      auto* p = static_cast<const qforge_preprocess*>(d.vtable);
      if (size < sizeof(qforge_preprocess)) return "pre-process table is smaller than ABI 1.2's";
      if (!p->run_block) return "pre-process table has no run_block function";
      if (d.min_host_minor < 2) return "is a pre-process (ABI 1.2) but declares min_host_minor < 2";
      return {};
    }
#endif
    default:
      return fmt::format("has unknown kind {}", d.kind);
  }
}

// Returns "" when the descriptor is well-formed.
std::string check_descriptor(const qforge_component_desc* d) {
  if (d == nullptr) return "descriptor is NULL";
  if (d->struct_size < sizeof(qforge_component_desc))
    return fmt::format("descriptor struct_size {} is smaller than ABI v1's {}", d->struct_size,
                       sizeof(qforge_component_desc));
  if (!nonempty(d->id)) return "descriptor has no id";
  if (!valid_id(d->id))
    return fmt::format("id '{}' is not a reverse-DNS id ([a-z0-9._-], with a dot)", d->id);
  if (d->kind < QFORGE_COMPONENT_QUANTIZER || d->kind > kLastKind)
    return fmt::format("'{}' has unknown kind {}", d->id, d->kind);
  if (d->min_host_minor > QFORGE_ABI_MINOR)
    return fmt::format("'{}' requires host ABI minor {} or newer (this host speaks {}.{})",
                       d->id, d->min_host_minor, QFORGE_ABI_MAJOR, QFORGE_ABI_MINOR);
  for (auto [field, value] : {std::pair{"name", d->name}, std::pair{"version", d->version},
                              std::pair{"vendor", d->vendor}, std::pair{"license", d->license}})
    if (!nonempty(value)) return fmt::format("'{}' has no {}", d->id, field);
  if (d->features != nullptr && !valid_list(d->features) && d->features[0] != nullptr)
    return fmt::format("'{}' has a malformed feature list", d->id);
  std::string schema = check_schema(d->params, d->param_count);
  if (!schema.empty()) return fmt::format("'{}': {}", d->id, schema);
  std::string vt = check_vtable(*d);
  if (!vt.empty()) return fmt::format("'{}' {}", d->id, vt);
  return {};
}

std::vector<std::string> split_path_list(const char* text) {
  std::vector<std::string> out;
  if (text == nullptr) return out;
  std::string s(text);
  size_t start = 0;
  while (start <= s.size()) {
    size_t colon = s.find(':', start);
    std::string part = s.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    if (!part.empty()) out.push_back(part);
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return out;
}

// How long a plugin's init may take: QFORGE_PLUGIN_INIT_TIMEOUT seconds,
// default 30 (a GPU plugin creating its context takes a few seconds).
std::chrono::milliseconds init_time_limit() {
  const char* text = std::getenv("QFORGE_PLUGIN_INIT_TIMEOUT");
  if (text != nullptr) {
    char* end = nullptr;
    const double seconds = std::strtod(text, &end);
    if (end != text && *end == '\0' && seconds > 0 && seconds < 86400)
      return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
    log(LogLevel::warn, "QFORGE_PLUGIN_INIT_TIMEOUT='{}' is not a number of seconds; using 30",
        text);
  }
  return std::chrono::seconds(30);
}

// Runs `init` on a thread of its own and waits at most `limit`. Returns its
// status, or nothing when it did not return in time: that thread is then
// left running (it may hold locks of the plugin's own; the library stays
// mapped and its deinit is never called) and the host carries on.
std::optional<qforge_status*> init_within(qforge_status* (*init)(const qforge_host*),
                                          std::chrono::milliseconds limit) {
  struct Call {
    std::mutex mutex;
    std::condition_variable done_cv;
    bool done = false;
    qforge_status* status = nullptr;
  };
  auto call = std::make_shared<Call>();
  std::thread([call, init] {
    qforge_status* s = init(services());
    std::lock_guard<std::mutex> lock(call->mutex);
    call->status = s;
    call->done = true;
    call->done_cv.notify_one();
  }).detach();
  std::unique_lock<std::mutex> lock(call->mutex);
  if (!call->done_cv.wait_for(lock, limit, [&] { return call->done; })) return std::nullopt;
  return call->status;
}

}  // namespace

const char* kind_name(int32_t kind) {
  switch (kind) {
    case QFORGE_COMPONENT_QUANTIZER: return "quantizer";
    case QFORGE_COMPONENT_INFERENCE_LAYER: return "inference-layer";
    case QFORGE_COMPONENT_POSTPROCESS: return "post-process";
#if QFORGE_ABI_MINOR >= 2
    case QFORGE_COMPONENT_PREPROCESS: return "pre-process";
#endif
    default: return "unknown";
  }
}

const qforge_quantizer* Component::quantizer() const {
  return desc->kind == QFORGE_COMPONENT_QUANTIZER
             ? static_cast<const qforge_quantizer*>(desc->vtable) : nullptr;
}
const qforge_inference_layer* Component::inference_layer() const {
  return desc->kind == QFORGE_COMPONENT_INFERENCE_LAYER
             ? static_cast<const qforge_inference_layer*>(desc->vtable) : nullptr;
}
const qforge_postprocess* Component::postprocess() const {
  return desc->kind == QFORGE_COMPONENT_POSTPROCESS
             ? static_cast<const qforge_postprocess*>(desc->vtable) : nullptr;
}

#if QFORGE_ABI_MINOR >= 2  // (tests/abi builds this file against the v1.0 headers too)
const qforge_preprocess* Component::preprocess() const {
  return desc->kind == QFORGE_COMPONENT_PREPROCESS
             ? static_cast<const qforge_preprocess*>(desc->vtable) : nullptr;
}
#endif

bool Component::has_feature(const char* tag) const {
  if (desc->features == nullptr) return false;
  for (const char* const* f = desc->features; *f != nullptr; ++f)
    if (std::strcmp(*f, tag) == 0) return true;
  return false;
}

Registry::Registry() = default;

Registry::~Registry() {
  for (auto it = libraries_.rbegin(); it != libraries_.rend(); ++it) {
    Library& l = **it;
    if (l.initialized && l.entry->deinit) l.entry->deinit();
    // Never unload (DESIGN.md rule 9): objects a plugin made, e.g. static
    // tensors or thread-locals, may outlive the registry. Keep the mapping.
    // A reachable heap vector: never destroyed, so never dlclose'd at exit.
    static auto* kept = new std::vector<dll::shared_library>();
    kept->push_back(std::move(l.lib));
  }
}

void Registry::add_directory(const std::string& dir) { extra_dirs_.push_back(dir); }
void Registry::use_default_directories(bool yes) { defaults_ = yes; }

std::vector<std::string> Registry::directories() const {
  std::vector<std::string> dirs = extra_dirs_;
  if (defaults_) {
    for (auto& d : split_path_list(std::getenv("QFORGE_PLUGIN_PATH"))) dirs.push_back(d);
    boost::system::error_code ec;
    fs::path exe = dll::program_location(ec);
    if (!ec)
      dirs.push_back((exe.parent_path() / ".." / "lib" / "qforge" / "plugins").lexically_normal().string());
  }
  return dirs;
}

void Registry::load() {
  if (loaded_) return;
  loaded_ = true;
  std::set<std::string> seen;
  for (const auto& dir : directories()) {
    boost::system::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      log(LogLevel::debug, "plugin directory {} does not exist", dir);
      continue;
    }
    std::vector<fs::path> files;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().extension() == kSuffix && fs::is_regular_file(it->path(), ec))
        files.push_back(it->path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::string canonical = fs::canonical(f, ec).string();
      if (ec || !seen.insert(canonical).second) continue;
      load_library(f.string());
    }
  }
}

void Registry::load_library(const std::string& path) {
  auto refuse = [&](const std::string& reason) {
    refusals_.push_back({path, one_line(reason)});
    log(LogLevel::debug, "plugin {} refused: {}", path, one_line(reason));
  };
  // 1. Look for the entry symbol in the file before any of its code runs
  //    (loading runs the library's static constructors): in .dynsym, as
  //    dlsym sees it (stripped libraries keep it), with every offset checked
  //    against the file (elf_symbols.hpp).
  const ElfSymbolCheck check =
      find_exported_function(path, QFORGE_ENTRY_SYMBOL_V1, "qforge_plugin_entry_v");
  switch (check.status) {
    case ElfSymbolStatus::function:
      break;
    case ElfSymbolStatus::not_function:
      return refuse(fmt::format("{} is exported but is not a function ({})",
                                QFORGE_ENTRY_SYMBOL_V1, check.reason));
    case ElfSymbolStatus::not_found:
      if (!check.same_prefix.empty())
        return refuse(fmt::format("exports {} but this host speaks ABI major {} ({})",
                                  check.same_prefix, QFORGE_ABI_MAJOR, QFORGE_ENTRY_SYMBOL_V1));
      return refuse(fmt::format("not a qforge plugin: no exported symbol {}",
                                QFORGE_ENTRY_SYMBOL_V1));
    case ElfSymbolStatus::invalid:
      return refuse(fmt::format("not a readable shared library: {}", check.reason));
  }
  // 2. Load with local symbol binding and resolve everything now.
  auto lib = std::make_unique<Library>();
  lib->path = path;
  try {
    lib->lib.load(fs::path(path), dll::load_mode::rtld_now | dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    return refuse(fmt::format("cannot be loaded: {}", e.what()));
  }
  auto entry_fn = lib->lib.get<const qforge_plugin_entry*()>(QFORGE_ENTRY_SYMBOL_V1);
  const qforge_plugin_entry* entry = entry_fn();
  Library& l = *lib;
  libraries_.push_back(std::move(lib));  // kept mapped from here on
  // 3. Negotiate the version and check the entry table.
  if (entry == nullptr) return refuse(fmt::format("{} returned NULL", QFORGE_ENTRY_SYMBOL_V1));
  // struct_size and abi_major are the first 8 bytes of every major's entry.
  if (entry->struct_size >= 8 && entry->abi_major != QFORGE_ABI_MAJOR)
    return refuse(fmt::format("built for ABI major {}, this host speaks major {}",
                              entry->abi_major, QFORGE_ABI_MAJOR));
  if (entry->struct_size < sizeof(qforge_plugin_entry))
    return refuse(fmt::format("entry struct_size {} is smaller than ABI v1's {}",
                              entry->struct_size, sizeof(qforge_plugin_entry)));
  if (!entry->component_count || !entry->get_component)
    return refuse("entry has no component_count or get_component function");
  l.entry = entry;
  std::string name = nonempty(entry->name) ? entry->name : fs::path(path).stem().string();
  std::string version = nonempty(entry->version) ? entry->version : "?";
  // 4. Initialise it.
  if (entry->init) {
    const auto limit = init_time_limit();
    std::optional<qforge_status*> status;
    {
      PluginActivity running(fmt::format("init of {}", path));
      status = init_within(entry->init, limit);
    }
    if (!status)
      return refuse(fmt::format("init did not return within {} s (QFORGE_PLUGIN_INIT_TIMEOUT); "
                                "the plugin is not used",
                                std::chrono::duration<double>(limit).count()));
    if (qforge_status* s = *status) {
      const qforge_host* h = services();
      std::string msg = h->status_message(h, s);
      h->status_destroy(h, s);
      return refuse(fmt::format("init failed: {}", msg));
    }
  }
  l.initialized = true;
  // 5. Its components, each checked on its own.
  uint32_t count = entry->component_count();
  if (count > 4096) return refuse(fmt::format("claims {} components", count));
  for (uint32_t k = 0; k < count; ++k) {
    const qforge_component_desc* d = entry->get_component(k);
    std::string problem = check_descriptor(d);
    if (!problem.empty()) {
      refuse(fmt::format("component {}: {}", k, problem));
      continue;
    }
    if (const Component* prior = find(d->id)) {
      refuse(fmt::format("component {}: duplicate id '{}': {}, earlier in the search order, "
                         "provides it and is used instead", k, d->id, prior->library));
      continue;
    }
    components_.push_back(Component{d, path, name, version});
    log(LogLevel::debug, "loaded {} {} from {}", kind_name(d->kind), d->id, path);
  }
}

const Component* Registry::find(const std::string& id) const {
  for (const auto& c : components_)
    if (id == c.desc->id) return &c;
  return nullptr;
}

const Component* Registry::find_inference_layer(const std::string& format_id) const {
  for (const auto& c : components_)
    if (auto* l = c.inference_layer())
      for (const char* const* f = l->formats; *f; ++f)
        if (format_id == *f) return &c;
  return nullptr;
}

}  // namespace qforge::host
