/* Tiny shared libraries for the ELF reader's tests and fuzz seeds
 * (tests/plugins/elf_fuzz/CMakeLists.txt builds this file once per case).
 *   ENTRY_FUNCTION  qforge_plugin_entry_v1 is an exported function
 *   ENTRY_IFUNC     ... an exported STT_GNU_IFUNC
 *   ENTRY_DATA      ... an exported data object (not a function)
 *   ENTRY_UNDEFINED ... only referenced (an undefined dynamic symbol)
 *   ENTRY_HIDDEN    ... defined with hidden visibility (not exported)
 *   ENTRY_V2        only qforge_plugin_entry_v2 is exported
 * Built with -nostdlib, so nothing here may need the C library. */
#define EXPORT __attribute__((visibility("default")))

EXPORT int qforge_test_elf_other(void);
EXPORT int qforge_test_elf_other(void) { return 7; }

#if defined(ENTRY_FUNCTION)
EXPORT int qforge_plugin_entry_v1(void);
EXPORT int qforge_plugin_entry_v1(void) { return 1; }
#elif defined(ENTRY_IFUNC)
static int entry_impl(void) { return 1; }
static int (*resolve_entry(void))(void) { return entry_impl; }
EXPORT int qforge_plugin_entry_v1(void) __attribute__((ifunc("resolve_entry")));
#elif defined(ENTRY_DATA)
EXPORT int qforge_plugin_entry_v1[4] = {1, 2, 3, 4};
#elif defined(ENTRY_UNDEFINED)
extern int qforge_plugin_entry_v1(void);
EXPORT int qforge_test_elf_calls_entry(void);
EXPORT int qforge_test_elf_calls_entry(void) { return qforge_plugin_entry_v1(); }
#elif defined(ENTRY_HIDDEN)
__attribute__((visibility("hidden"))) int qforge_plugin_entry_v1(void);
__attribute__((visibility("hidden"))) int qforge_plugin_entry_v1(void) { return 1; }
EXPORT int qforge_test_elf_calls_entry(void);
EXPORT int qforge_test_elf_calls_entry(void) { return qforge_plugin_entry_v1(); }
#elif defined(ENTRY_V2)
EXPORT int qforge_plugin_entry_v2(void);
EXPORT int qforge_plugin_entry_v2(void) { return 2; }
#else
#error "define one ENTRY_* case"
#endif
