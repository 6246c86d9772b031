// Plugin discovery and loading (DESIGN.md rules 1, 2, 7, 9).
//
// Directories searched, in order: those given with add_directory() (the CLI's
// --plugin-dir), the ones in QFORGE_PLUGIN_PATH (colon-separated), and the
// default directory <exe dir>/../lib/qforge/plugins. Every regular file with
// the platform's shared-library suffix is a candidate. A candidate that can't
// be used is refused with a one-line reason and never affects the others.
#pragma once

#include <qforge/qforge.h>

#include <memory>
#include <string>
#include <vector>

namespace qforge::host {

struct Component {
  const qforge_component_desc* desc;  // owned by the plugin library (never unloaded)
  std::string library;                // the file it came from
  std::string plugin_name;            // qforge_plugin_entry.name
  std::string plugin_version;         // qforge_plugin_entry.version

  const qforge_quantizer* quantizer() const;               // NULL unless kind matches
  const qforge_inference_layer* inference_layer() const;   // NULL unless kind matches
  const qforge_postprocess* postprocess() const;           // NULL unless kind matches
#if QFORGE_ABI_MINOR >= 2
  const qforge_preprocess* preprocess() const;             // NULL unless kind matches
#endif
  bool has_feature(const char* tag) const;                 // a tag of desc->features
};

struct Refusal {
  std::string library;  // the file
  std::string reason;   // one line
};

const char* kind_name(int32_t kind);  // "quantizer", "inference-layer", "post-process", "pre-process"

class Registry {
 public:
  Registry();
  ~Registry();  // calls each plugin's deinit; libraries stay mapped until exit
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Directories to search (before QFORGE_PLUGIN_PATH and the default one).
  void add_directory(const std::string& dir);
  // Whether to search QFORGE_PLUGIN_PATH and the default directory (default: yes).
  void use_default_directories(bool yes);
  // Searches the directories and loads every candidate once. Idempotent.
  void load();
  // Loads one library file (also used by load()).
  void load_library(const std::string& path);

  const std::vector<Component>& components() const { return components_; }
  const std::vector<Refusal>& refusals() const { return refusals_; }
  std::vector<std::string> directories() const;

  const Component* find(const std::string& id) const;
  // The first inference layer that consumes `format_id`, or NULL.
  const Component* find_inference_layer(const std::string& format_id) const;

 private:
  struct Library;
  std::vector<std::string> extra_dirs_;
  bool defaults_ = true;
  bool loaded_ = false;
  std::vector<std::unique_ptr<Library>> libraries_;
  std::vector<Component> components_;
  std::vector<Refusal> refusals_;
};

}  // namespace qforge::host
