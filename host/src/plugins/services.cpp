// The host services handed to plugins (sdk/include/qforge/host.h).
#include "qforge_host/plugins/services.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"

struct qforge_status {
  int32_t code;
  std::string message;
};

namespace qforge::host {
namespace {

std::atomic<bool> g_cancel{false};
qforge_status g_out_of_memory{QFORGE_STATUS_OUT_OF_MEMORY, "out of memory (status allocation)"};

void host_log(const qforge_host*, int32_t level, const char* message) {
  if (level < QFORGE_LOG_TRACE) level = QFORGE_LOG_TRACE;
  if (level > QFORGE_LOG_ERROR) level = QFORGE_LOG_ERROR;
  log_line(static_cast<LogLevel>(level), message ? message : "");
}

// Never returns NULL: a static status stands in when allocation fails.
qforge_status* status_create(const qforge_host*, int32_t code, const char* message) {
  try {
    if (code == QFORGE_STATUS_OK) code = QFORGE_STATUS_INTERNAL;
    return new qforge_status{code, message ? message : ""};
  } catch (...) {
    return &g_out_of_memory;
  }
}

int32_t status_code(const qforge_host*, const qforge_status* s) {
  return s ? s->code : QFORGE_STATUS_OK;
}
const char* status_message(const qforge_host*, const qforge_status* s) {
  return s ? s->message.c_str() : "";
}
void status_destroy(const qforge_host*, qforge_status* s) {
  if (s != &g_out_of_memory) delete s;
}

void progress(const qforge_host*, const char* task, uint64_t done, uint64_t total) {
  if (total > 0)
    log(LogLevel::debug, "{}: {}/{}", task ? task : "", done, total);
  else
    log(LogLevel::debug, "{}: {}", task ? task : "", done);
}

qforge_bool is_cancelled(const qforge_host*) { return g_cancel.load() ? 1 : 0; }

void* host_alloc(const qforge_host*, uint64_t size, uint64_t alignment) {
  if (alignment < sizeof(void*)) alignment = sizeof(void*);
  if ((alignment & (alignment - 1)) != 0) return nullptr;
  void* p = nullptr;
  if (posix_memalign(&p, alignment, size ? size : 1) != 0) return nullptr;
  return p;
}
void host_free(const qforge_host*, void* p) { std::free(p); }

struct Extension {
  const char* id;
  uint32_t revision;
  const void* table;
};
std::atomic<Extension*> g_extensions[4];  // offered once at start-up, read from any thread

const void* get_extension(const qforge_host*, const char* id, uint32_t revision) {
  if (id == nullptr) return nullptr;
  for (auto& slot : g_extensions)
    if (const Extension* e = slot.load(); e && std::strcmp(e->id, id) == 0 && e->revision >= revision)
      return e->table;
  return nullptr;
}

}  // namespace

void offer_host_extension(const char* id, uint32_t revision, const void* table) {
  for (auto& slot : g_extensions) {
    Extension* e = slot.load();
    if (e && std::strcmp(e->id, id) == 0) return;  // already offered
    if (e == nullptr) {
      slot.store(new Extension{id, revision, table});
      return;
    }
  }
  throw std::logic_error("offer_host_extension: no free slot");
}

const qforge_host* services() {
  static const qforge_host host = {
      sizeof(qforge_host), QFORGE_ABI_MAJOR, QFORGE_ABI_MINOR, 0, "qforge", QFORGE_VERSION,
      nullptr, &host_log, &status_create, &status_code, &status_message, &status_destroy,
      &progress, &is_cancelled, &host_alloc, &host_free, &get_extension};
  return &host;
}

void throw_if_error(qforge_status* s, const std::string& what) {
  if (s == nullptr) return;
  int32_t code = s->code;
  std::string message = what.empty() ? s->message : what + ": " + s->message;
  status_destroy(services(), s);
  // Ctrl-C inside a plugin is the same stop as Ctrl-C between layers.
  if (code == QFORGE_STATUS_CANCELLED) throw Cancelled(message);
  throw PluginError(code, message);
}

namespace {
char g_activity[512];  // written only by the thread running the pipeline
std::atomic<bool> g_active{false};
std::atomic<int> g_record_fd{-1};
}  // namespace

PluginActivity::PluginActivity(const std::string& what) {
  const size_t n = std::min(what.size(), sizeof g_activity - 1);
  std::memcpy(g_activity, what.data(), n);
  g_activity[n] = '\0';
  g_active.store(true);
  if (const int fd = g_record_fd.load(); fd >= 0) {
    // Best effort: the record only helps the next run explain this one.
    [[maybe_unused]] ssize_t w = ::pwrite(fd, g_activity, n, 0);
    [[maybe_unused]] int t = ::ftruncate(fd, static_cast<off_t>(n));
  }
}

PluginActivity::~PluginActivity() {
  g_active.store(false);
  if (const int fd = g_record_fd.load(); fd >= 0) [[maybe_unused]] int t = ::ftruncate(fd, 0);
}

void record_plugin_activity_in(int fd) { g_record_fd.store(fd); }

const char* current_plugin_activity() { return g_active.load() ? g_activity : ""; }

void request_cancel() { g_cancel.store(true); }
bool cancel_requested() { return g_cancel.load(); }

}  // namespace qforge::host
